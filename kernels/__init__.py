"""Triton kernels of seda_fast, installed as ``seda_fast.kernels`` (setup.py ``package_dir``).

One module per fused operation, each with its ``@triton.jit`` kernel(s) and a launcher that takes
and returns plain tensors:

* :func:`semantic_sample` (``semantic_sampler.py``): projector + LayerNorm + K1-step Learner loop.
* :func:`translator_pfin` (``translator_pfin.py``): K2-step Translator loop + PFIN + head.
* :func:`center_loss_forward` / :func:`center_loss_backward` (``center_loss.py``): the stage-1
  center constraint's cross-entropy and its gradient, streamed over class tiles;
  :func:`center_loss_train` forms both in one launch.
* :func:`center_ema` (``center_update.py``): the center EMA as a deterministic per-class
  scatter-mean, in place in one launch; :func:`class_sums` / :func:`ema_update` split it in two for
  a distributed caller (sums and counts, all-reduced, then the in-place update).
* :func:`denoiser_x0_loss_forward` / :func:`denoiser_x0_loss_backward` (``denoiser_x0_loss.py``): the
  random-t diffusion term of both stages, forward noising + denoiser + per-row x0 loss in one
  launch, and its backward.
* :func:`translator_unroll_forward` / :func:`translator_unroll_backward` (``translator_unroll.py``):
  the stage-2 training unroll (K2-step Translator loop + PFIN), forward saving only the per-step
  ``x_k``/``m_k`` and a backward that walks the loop in reverse, recomputing each step.
* :func:`unroll_phases_forward` / :func:`unroll_phases_backward` (``unroll_phases.py``): the same
  unroll as phase GEMMs over all rows (one launch per phase), saving or recomputing activations.
* :func:`denoise_phases_forward` / :func:`denoise_phases_backward` (``denoise_phases.py``): the
  random-t diffusion term's denoiser as phases, on the unroll's phase kernel (stage 2's term).
* :func:`infer_phases` (``infer_phases.py``): the whole inference chain as a phase schedule, one
  launch per phase or one persistent launch with grid barriers.

Every launcher launches through :func:`launch` (``_launch.py``), so :func:`count_launches` sees
every kernel launch of this package.
"""
from ._heuristics import LATENCY_MAX_BATCH, Blocks, pick_blocks
from ._launch import Launch, capture_launches, count_launches, kernel_name, launch
from .semantic_sampler import semantic_sample, semantic_sampler_kernel
from .translator_pfin import translator_pfin, translator_pfin_kernel
from .center_loss import (center_loss_backward, center_loss_bwd_kernel, center_loss_forward, center_loss_fwd_kernel,
                          center_loss_train, center_loss_train_kernel)
from .center_update import (center_ema, center_ema_kernel, class_sums, class_sums_kernel, ema_update,
                            ema_update_kernel)
from ._denoiser import denoiser_wgrad_kernel
from .denoiser_x0_loss import (denoiser_x0_loss_backward, denoiser_x0_loss_bwd_kernel, denoiser_x0_loss_forward,
                               denoiser_x0_loss_fwd_kernel)
from .translator_unroll import (translator_unroll_backward, translator_unroll_bwd_step_kernel,
                                translator_unroll_forward, translator_unroll_fwd_kernel)

__all__ = ["semantic_sample", "semantic_sampler_kernel", "translator_pfin", "translator_pfin_kernel",
           "count_launches", "capture_launches", "Launch", "kernel_name", "launch", "pick_blocks", "Blocks",
           "LATENCY_MAX_BATCH", "center_loss_forward", "center_loss_backward", "center_loss_fwd_kernel",
           "center_loss_bwd_kernel", "center_loss_train", "center_loss_train_kernel", "center_ema", "center_ema_kernel", "class_sums", "class_sums_kernel", "ema_update", "ema_update_kernel",
           "denoiser_wgrad_kernel", "translator_unroll_forward", "translator_unroll_backward",
           "translator_unroll_fwd_kernel", "translator_unroll_bwd_step_kernel", "denoiser_x0_loss_forward",
           "denoiser_x0_loss_backward", "denoiser_x0_loss_fwd_kernel", "denoiser_x0_loss_bwd_kernel"]

# Phase schedules: one GEMM over all rows per phase (inference, and the stage-2 training unroll).
from . import infer_phases as infer_phases_module  # noqa: E402
from . import unroll_phases as unroll_phases_module  # noqa: E402
from .infer_phases import infer_persistent_kernel, infer_phase_kernel, infer_phases  # noqa: E402
from .unroll_phases import unroll_phase_kernel, unroll_phases_backward, unroll_phases_forward  # noqa: E402
from . import denoise_phases as denoise_phases_module  # noqa: E402
from .denoise_phases import denoise_phases_backward, denoise_phases_forward  # noqa: E402
from . import _graphs as graphs_module  # noqa: E402  (the training phase ranges' CUDA graphs)

__all__ += ["infer_phases", "infer_phase_kernel", "infer_persistent_kernel", "infer_phases_module",
            "unroll_phases_module", "unroll_phase_kernel", "unroll_phases_forward", "unroll_phases_backward",
            "denoise_phases_module", "denoise_phases_forward", "denoise_phases_backward", "graphs_module"]
