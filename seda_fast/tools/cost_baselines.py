"""Predicted time of one inference call without the fused kernels: eager, a CUDA graph of eager, and
``torch.compile``, at the ceilings of :class:`seda_fast.tools.cost_model.Ceilings`.

Counts, not totals: :func:`aten_ops` runs the reference (:func:`seda_fast.reference.infer`) on the
meta device under a dispatch mode (:func:`record_aten_ops`) and records every aten op with its shapes, so any batch and
config costs nothing to count. An op whose first output aliases an input (a view: ``t``,
``select``, ``unsqueeze``...) launches no kernel; every other op is one kernel that reads its
tensor inputs and writes its outputs once; ``mm``/``addmm`` do ``2 M N K`` FLOPs.

* ``eager`` (the time-embedding tables recomputed each call, as :func:`reference.infer` does without
  ``tables=``): the host issues every aten op at ``aten_op_s`` (a view at ``view_op_s``) and the
  GPU runs every kernel at ``max(FLOPs / peak, bytes / copy bandwidth)``; the two overlap, so the
  call takes the longer.
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

import weakref
from dataclasses import dataclass

from ..config import SeDAConfig
from .cost_model import H200, Ceilings, Prediction, _DTYPE_BYTES

IMPLS = ("eager", "cuda_graph", "torch_compile")
_MATMULS = ("mm", "addmm")
# ops whose schema may alias their input but that copy when they change it (a dtype, a layout): a
# view only when they return the input itself
_MAYBE_COPY = ("to", "contiguous", "reshape", "type_as")


@dataclass(frozen=True)
class AtenOp:
    name: str
    view: bool
    bytes: int      # tensor inputs read + outputs written, once each
    flops: float    # 2 M N K for a matmul, else 0
    out_bytes: int
    mnk: tuple = ()     # a matmul's (M, N, K): ``[M, K] @ [K, N]``
    depth: int = 0      # matmuls on the longest chain of matmuls that leads to this op, itself included
    namespace: str = "aten"  # the op's library: "seda_fast" for the fused custom ops (their launches are counted apart)
    inside: str = ""    # with ``nested``: the fused custom op whose implementation issued this op


def record_aten_ops(fn, nested: bool = False) -> list[AtenOp]:
    """Every aten op ``fn()`` dispatches (run it on meta tensors: any size costs nothing), in order,
    autograd's backward included when ``fn`` calls it. ``depth`` follows the data: an op's inputs'
    largest depth, plus one for a matmul (in-place ops and views carry it to their tensor).
    ``nested``: a fused custom op (``seda_fast::*``) is recorded and then its implementation runs
    under the recorder too, so the torch ops its launcher issues around its Triton launches
    (allocations, dtype casts, partial sums...) are recorded after it, with ``inside`` its name
    (needs real tensors: the implementation runs; capture the launches to skip the kernels)."""
    import torch
    from torch._library.custom_ops import _maybe_get_opdef
    from torch.utils._python_dispatch import TorchDispatchMode

    def nbytes(x) -> int:
        return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0

    def tensors(xs):
        for a in xs:
            if isinstance(a, torch.Tensor):
                yield a
            elif isinstance(a, (list, tuple)):
                yield from (t for t in a if isinstance(t, torch.Tensor))

    ops: list[AtenOp] = []
    depth: dict[int, int] = {}  # id(tensor) -> depth, dropped when the tensor dies (its id may be reused)

    def remember(t, level: int) -> None:
        if id(t) not in depth:
            weakref.finalize(t, depth.pop, id(t), None)  # holding t itself would change what torch dispatches
        depth[id(t)] = max(level, depth[id(t)] if id(t) in depth else 0)

    inside: list[str] = []  # the fused custom ops being run, innermost last

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            opdef = _maybe_get_opdef(func._schema.name) if nested and func.namespace == "seda_fast" else None
            if opdef is None:
                out = func(*args, **(kwargs or {}))
            else:  # its own entry first, then what its implementation issues
                at = len(ops)
                ops.append(None)
                inside.append(func.overloadpacket.__name__)
                try:
                    with self:
                        out = opdef._init_fn(*args, **(kwargs or {}))
                finally:
                    inside.pop()
            outs = out if isinstance(out, (tuple, list)) else (out,)
            returns = func._schema.returns
            name = func.overloadpacket.__name__
            alias = returns[0].alias_info if returns else None
            view = alias is not None and not alias.is_write  # an in-place op (``copy_``, ``zero_``) writes
            if view and name in _MAYBE_COPY:
                view = any(out is a for a in args)
            flat = list(args) + list((kwargs or {}).values())
            inputs = list(tensors(flat))
            read = sum(nbytes(t) for t in inputs)
            written = sum(nbytes(o) for o in outs)
            flops, mnk = 0.0, ()
            if name in _MATMULS:
                a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
                mnk = (a.shape[0], b.shape[1], a.shape[1])
                flops = 2.0 * mnk[0] * mnk[1] * mnk[2]
            level = max((depth.get(id(t), 0) for t in inputs), default=0) + (1 if mnk else 0)
            for t in list(tensors(outs)) + (inputs if func._schema.is_mutable else []):
                remember(t, level)
            op = AtenOp(name, view, 0 if view else read + written, flops, written, mnk, level, func.namespace,
                        inside[-1] if inside else "")
            if opdef is None:
                ops.append(op)
            else:
                ops[at] = op
            return out

    with Record():
        fn()
    return ops


def aten_ops(cfg: SeDAConfig, batch: int, dtype: str = "bfloat16", tables: bool = False) -> list[AtenOp]:
    """Every aten op of one :func:`seda_fast.reference.infer` call (``tables``: with the weight-only
    tables precomputed), recorded on the meta device."""
    import torch

    from .. import reference
    from ..model import SeDA

    torch_dtype = getattr(torch, dtype)
    with torch.device("meta"):
        model = SeDA(cfg, backend="eager").to(torch_dtype).eval()
        visual = torch.empty(batch, cfg.visual_dim, dtype=torch_dtype)
    with torch.no_grad():
        tabs = reference.inference_tables(model, torch_dtype, visual.device) if tables else None
        return record_aten_ops(lambda: reference.infer(model, visual, tables=tabs))


def _kernel_s(flops: float, nbytes: float, peak: float, ceilings: Ceilings) -> float:
    return max(flops / peak, nbytes / ceilings.copy_bytes_per_s)


def predict(cfg: SeDAConfig, batch: int, impl: str = "eager", dtype: str = "bfloat16",
            ceilings: Ceilings = H200) -> Prediction:
    """Predicted time of one call of ``impl`` (:data:`IMPLS`), its bound and the counts behind it."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPE_BYTES)}, got {dtype!r}")
    return predict_ops(aten_ops(cfg, batch, dtype, tables=impl != "eager"), batch, impl, dtype, ceilings)


def host_s(n_ops: int, n_views: int, ceilings: Ceilings = H200) -> float:
    """Host time of issuing ``n_ops`` aten ops of which ``n_views`` are views (``t``, ``view``,
    ``detach``...: no launch): ``view_op_s`` each, ``aten_op_s`` for the rest."""
    return (n_ops - n_views) * ceilings.aten_op_s + n_views * ceilings.view_op_s


def predict_ops(ops: list[AtenOp], batch: int, impl: str = "eager", dtype: str = "bfloat16",
                ceilings: Ceilings = H200) -> Prediction:
    """:func:`predict` for any recorded op list (an inference call, a training step)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    peak = ceilings.bf16_flops if dtype != "float32" else ceilings.fp32_flops
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
            terms = {"GPU": gpu, "host": host_s(len(ops), sum(o.view for o in ops), ceilings)}
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
