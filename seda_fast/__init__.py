"""seda_fast: SeDA (Semantic-Space-Intervened Diffusive Alignment) with fused Triton kernels."""
from .backends import fused_impls
from .config import SeDAConfig
from .model import SeDA

__all__ = ["SeDAConfig", "SeDA", "fused_impls"]
__version__ = "0.1.0"
