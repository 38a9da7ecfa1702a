"""seda_fast: SeDA (Semantic-Space-Intervened Diffusive Alignment) with fused Triton kernels."""
from .backends import fused_impls
from .config import SeDAConfig
from .model import SeDA
from .step_graph import StepGraph

__all__ = ["SeDAConfig", "SeDA", "StepGraph", "fused_impls"]
__version__ = "0.1.0"
