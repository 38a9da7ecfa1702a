"""Triton kernels of seda_fast, installed as ``seda_fast.kernels`` (setup.py ``package_dir``).

One module per fused operation, each with its ``@triton.jit`` kernel(s) and a launcher that takes
and returns plain tensors:

* :func:`semantic_sample` (``semantic_sampler.py``): projector + LayerNorm + K1-step Learner loop.
* :func:`translator_pfin` (``translator_pfin.py``): K2-step Translator loop + PFIN + head.

Every launcher launches through :func:`launch` (``_launch.py``), so :func:`count_launches` sees
every kernel launch of this package.
"""
from ._heuristics import LATENCY_MAX_BATCH, Blocks, pick_blocks
from ._launch import Launch, capture_launches, count_launches, kernel_name, launch
from .semantic_sampler import semantic_sample, semantic_sampler_kernel
from .translator_pfin import translator_pfin, translator_pfin_kernel

__all__ = ["semantic_sample", "semantic_sampler_kernel", "translator_pfin", "translator_pfin_kernel",
           "count_launches", "capture_launches", "Launch", "kernel_name", "launch", "pick_blocks", "Blocks",
           "LATENCY_MAX_BATCH"]
