"""seda_fast: SeDA (Semantic-Space-Intervened Diffusive Alignment) with fused Triton kernels."""
from .config import SeDAConfig
from .model import SeDA

__all__ = ["SeDAConfig", "SeDA"]
__version__ = "0.1.0"
