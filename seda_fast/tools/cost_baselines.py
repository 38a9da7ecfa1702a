"""Predicted time of one inference call without the fused kernels: eager, a CUDA graph of eager, and
``torch.compile``, at the ceilings of :class:`seda_fast.tools.cost_model.Ceilings`.

Counts, not totals: :func:`aten_ops` runs the reference (:func:`seda_fast.reference.infer`) on the
meta device under a dispatch mode and records every aten op with its shapes, so any batch and
config costs nothing to count. An op whose first output aliases an input (a view: ``t``,
``select``, ``unsqueeze``...) launches no kernel; every other op is one kernel that reads its
tensor inputs and writes its outputs once; ``mm``/``addmm`` do ``2 M N K`` FLOPs.

* ``eager`` (the time-embedding tables recomputed each call, as :func:`reference.infer` does without
  ``tables=``): the host issues every aten op at ``aten_op_s`` and the GPU runs every kernel at
  ``max(FLOPs / peak, bytes / copy bandwidth)``; the two overlap, so the call takes the longer.
  Activation bytes are counted as HBM traffic: at small B they would sit in L2, which makes the
  GPU term an upper one there, but at small B the host term is the larger anyway.
* ``cuda_graph`` (tables precomputed, as the benchmark's provider does): the same kernels replayed,
  plus one ``graph_boundary_s`` per kernel; no host term.
* ``torch_compile``: Inductor keeps each matmul a kernel and fuses the pointwise work between two
  matmuls into one kernel, modelled as: per matmul, its own operands and output, plus one kernel
  that reads and writes its ``[B, N]`` output once more (the fused epilogue chain); CUDA-graph
  boundaries per kernel (``reduce-overhead``/``max-autotune`` replay a graph). An approximation:
  a fused epilogue inside the matmul template would save that extra pass.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import SeDAConfig
from .cost_model import H200, Ceilings, Prediction, _DTYPE_BYTES

IMPLS = ("eager", "cuda_graph", "torch_compile")
_MATMULS = ("mm", "addmm")


@dataclass(frozen=True)
class AtenOp:
    name: str
    view: bool
    bytes: int      # tensor inputs read + outputs written, once each
    flops: float    # 2 M N K for a matmul, else 0
    out_bytes: int


def aten_ops(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", tables: bool = False) -> list[AtenOp]:
    """Every aten op of one :func:`seda_fast.reference.infer` call (``tables``: with the weight-only
    tables precomputed), recorded on the meta device."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from .. import reference
    from ..model import SeDA

    def nbytes(x) -> int:
        return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0

    ops: list[AtenOp] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, (tuple, list)) else (out,)
            returns = func._schema.returns
            view = bool(returns) and returns[0].alias_info is not None
            name = func.overloadpacket.__name__
            flat = list(args) + list((kwargs or {}).values())
            read = sum(nbytes(a) for a in flat) + sum(nbytes(t) for a in flat if isinstance(a, (list, tuple))
                                                      for t in a)
            written = sum(nbytes(o) for o in outs)
            flops = 0.0
            if name in _MATMULS:
                a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
                flops = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
            ops.append(AtenOp(name, view, 0 if view else read + written, flops, written))
            return out

    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = SeDA(cfg, backend="eager").to(torch_dtype).eval()
        visual = torch.empty(batch, cfg.visual_dim, dtype=torch_dtype)
    with torch.no_grad():
        tabs = reference.inference_tables(model, torch_dtype, visual.device) if tables else None
        with Record():
            reference.infer(model, visual, tables=tabs)
    return ops


def _kernel_s(flops: float, nbytes: float, peak: float, ceilings: Ceilings) -> float:
    return max(flops / peak, nbytes / ceilings.copy_bytes_per_s)


def predict(cfg: SeDAConfig, batch: int, impl: str = "eager", dtype: str = "bfloat16",
            ceilings: Ceilings = H200) -> Prediction:
    """Predicted time of one call of ``impl`` (:data:`IMPLS`), its bound and the counts behind it."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPE_BYTES)}, got {dtype!r}")
    peak = ceilings.bf16_flops if dtype != "float32" else ceilings.fp32_flops
    ops = aten_ops(cfg, batch, dtype, tables=impl != "eager")
    kernels = [o for o in ops if not o.view]
    if impl == "torch_compile":
        matmuls = [o for o in kernels if o.name in _MATMULS]
        gpu = sum(_kernel_s(o.flops, o.bytes + 2 * o.out_bytes, peak, ceilings) for o in matmuls)
        n_kernels = 2 * len(matmuls)
        terms = {"GPU": gpu, "sync": n_kernels * ceilings.graph_boundary_s}
    else:
        gpu = sum(_kernel_s(o.flops, o.bytes, peak, ceilings) for o in kernels)
        n_kernels = len(kernels)
        if impl == "eager":
            terms = {"GPU": gpu, "host": len(ops) * ceilings.aten_op_s}
        else:
            terms = {"GPU": gpu, "sync": n_kernels * ceilings.graph_boundary_s}
    if impl == "eager":
        bound = max(terms, key=terms.get)
        time_s = terms[bound]
    else:
        bound = "GPU" if terms["GPU"] >= terms["sync"] else "sync"
        time_s = terms["GPU"] + terms["sync"]
    counts = {"aten_ops": len(ops), "kernels": n_kernels, "flops": sum(o.flops for o in kernels),
              "bytes": sum(o.bytes for o in kernels)}
    return Prediction(impl, batch, time_s, bound, terms, counts)
