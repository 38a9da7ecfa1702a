"""sm_90a (Hopper: H100, H200) compile report of every shipped fused-kernel config, without a GPU.

``python -m seda_fast compile-report [--quick] [--json PATH]`` runs the real fused inference call
(and, for the training entries, one fused stage-1 and one stage-2 training step, loss and
backward, bf16 under autocast as users train) on CPU tensors with the launches *captured, not run*
(:func:`seda_fast.kernels.capture_launches`),
so each kernel is compiled with exactly the arguments, specialisations (``native_specialize_impl``,
as the runtime does), block sizes and warps the launcher picks; ``LOWP``/``PREC`` are set as the
launcher sets them on CUDA. Each launch is compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", 90, 32))`` and its cubin read with Triton's bundled ``cuobjdump``:
registers per thread, local memory and spill instructions (``STL``/``LDL`` in the SASS, which is
disassembled only for a kernel with a local frame: without one nothing can spill), shared memory
(Triton's dynamic allocation plus static), and whether the PTX uses ``wgmma``.

Shipped configs (:data:`SHIPPED`): inference on the default model (d=512, H=1024, L=2; Dv=1280 as
EfficientNet-lite0 features, C=10) in bf16/fp16 at one batch per regime of the block heuristic
(64, 16384) and in fp32, and the small test model (d=48, H=80, L=3); training steps on the default
model (K1 = K2 = 10) in bf16 at B = 256 and 4096 and in fp32. The interpreter cannot compile, so
under ``TRITON_INTERPRET=1`` :func:`collect` re-runs this module in a subprocess without it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SM90_SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KiB)

from ..ops.runtime import interpreter_enabled, kernels  # noqa: E402
from ..presets import DEFAULT as DEFAULT_MODEL, SMALL as SMALL_MODEL  # noqa: E402

# (name, model kwargs, dtype, batch, step): every block config kernels/_heuristics.pick_blocks ships
# (fp16/bf16 latency and throughput, fp32) on the default model, and the small test model, for the
# row-block inference ("inference"); the training step's kernels at the two training batches (256,
# 4096) and in fp32; the phase-schedule inference ("inference-phases") at both bf16 regimes and fp32
# (tests/ops/test_infer_phases.py compiles every tile it ships, the persistent kernel included).
SHIPPED = [
    ("default", DEFAULT_MODEL, "bfloat16", 64, "inference"),
    ("default", DEFAULT_MODEL, "bfloat16", 16384, "inference"),
    ("default", DEFAULT_MODEL, "float16", 64, "inference"),
    ("default", DEFAULT_MODEL, "float16", 16384, "inference"),
    ("default", DEFAULT_MODEL, "float32", 64, "inference"),
    ("small", SMALL_MODEL, "bfloat16", 33, "inference"),
    ("small", SMALL_MODEL, "bfloat16", 1024, "inference"),
    ("small", SMALL_MODEL, "float32", 33, "inference"),
    ("default", DEFAULT_MODEL, "bfloat16", 256, "training"),
    ("default", DEFAULT_MODEL, "bfloat16", 4096, "training"),
    ("default", DEFAULT_MODEL, "float32", 256, "training"),
    ("default", DEFAULT_MODEL, "bfloat16", 64, "inference-phases"),
    ("default", DEFAULT_MODEL, "bfloat16", 16384, "inference-phases"),
    ("default", DEFAULT_MODEL, "float32", 64, "inference-phases"),
]
# A quick subset (`--quick`): the default model's inference block configs in bf16 and fp32, the small
# model's, one bf16 training step.
QUICK = [SHIPPED[0], SHIPPED[1], SHIPPED[4], SHIPPED[5], SHIPPED[8]]


def _tools():
    import triton
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return bin_dir / "cuobjdump"


class _Fp32CpuMatmuls(TorchDispatchMode):
    """CPU matmuls of bf16/fp16 tensors computed in fp32 and rounded to their dtype: a CPU without
    bf16 units runs them about 50x slower (a bf16 training capture at B = 4096 took a minute). A
    capture's values feed only launches that are recorded, not run; shapes, dtypes and strides are
    what they would be."""
    OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        low = [a.dtype for a in args if isinstance(a, torch.Tensor) and a.dtype in (torch.bfloat16, torch.float16)
               and a.device.type == "cpu"]
        if func not in self.OPS or not low:
            return func(*args, **kwargs)
        up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
        return func(*up, **kwargs).to(low[0])


# a "training" entry's steps: (stage, SeDA.fused_impl, SeDA.activation_memory)
TRAINING_STEPS = ((1, "auto", None), (2, "phases", "save"), (2, "phases", "recompute"), (2, "rowblock", None))


def capture(model_kwargs: dict, dtype: str, batch: int, step: str = "inference"):
    """The launches one fused inference call (or one stage-1 training step and a stage-2 step with
    each unroll and policy, :data:`TRAINING_STEPS`: loss and backward; fp32 parameters, low
    precision through autocast) makes for this config (captured, not run)."""
    from .. import reference
    from ..backends import TRITON
    from ..config import SeDAConfig
    from ..model import SeDA
    torch.manual_seed(0)
    k = kernels()
    if step in ("inference", "inference-phases"):
        model = SeDA(SeDAConfig(**model_kwargs)).to(getattr(torch, dtype)).eval()
        model.fused_impl = "rowblock" if step == "inference" else "phases"
        visual = torch.empty(batch, model.config.visual_dim, dtype=getattr(torch, dtype))
        with torch.no_grad(), k.capture_launches() as launches:
            TRITON.infer(model, visual, None)
        return launches
    model = SeDA(SeDAConfig(**model_kwargs)).train()
    cfg = model.config
    visual, text = torch.randn(batch, cfg.visual_dim), torch.randn(cfg.num_classes, cfg.text_dim)
    labels = torch.arange(batch) % cfg.num_classes
    amp = torch.autocast("cpu", dtype=getattr(torch, dtype), enabled=dtype != "float32")
    with k.capture_launches() as launches, _Fp32CpuMatmuls():  # stage 1, then stage 2 with every unroll and policy
        for stage, fused_impl, policy in TRAINING_STEPS:
            model.set_stage(stage)
            model.fused_impl, model.activation_memory = fused_impl, policy
            with amp:  # the launchers directly: the module's backend check wants CUDA or the interpreter
                loss = reference.learner_loss(model, visual, labels, pieces=TRITON.pieces)[0] if stage == 1 else \
                    reference.translator_loss(model, visual, labels, text, True, pieces=TRITON.pieces)[0]
            loss.backward()
    return launches


def compile_launch(launch, dtype: str, arch: int = 90) -> dict:
    """Compile one captured launch for ``sm_{arch}a``; returns its resource usage."""
    import triton
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.compiler import ASTSource

    k = kernels()
    fn = launch.kernel
    meta = dict(launch.meta)
    options = {key: meta.pop(key) for key in ("num_warps", "num_stages", "maxnreg", "launch_pdl",
                                              "launch_cooperative_grid") if key in meta}
    num_warps, num_stages = options.get("num_warps", 4), options.get("num_stages", 3)  # triton's defaults
    if "LOWP" in meta:  # kernels with tl.dot: the dot mode the launcher would pick on CUDA
        meta["LOWP"], meta["PREC"] = k._heuristics.dot_mode(getattr(torch, dtype), torch.device("cuda"))
    if "PDL" in meta:  # kernels with programmatic dependent launch: on, as on Hopper
        meta["PDL"], options["launch_pdl"] = True, True
    signature, constexprs, attrs = {}, dict(meta), {}
    for i, (name, arg) in enumerate(zip(fn.arg_names, launch.args)):
        ty, key = native_specialize_impl(BaseBackend, arg, False, True, True)
        if ty == "constexpr":
            constexprs[name] = key
        elif key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
        signature[name] = ty
    for name in meta:
        signature[name] = "constexpr"
    src = ASTSource(fn, signature, constexprs, attrs)
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=options)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([str(_tools()), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
        fields = {key: int(val) for key, val in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
        # a spilled register lives in the thread's local frame (STACK; LOCAL for local arrays): with
        # no frame there is nothing an STL/LDL could address, and disassembling (about 1 s a kernel,
        # whatever its size) is skipped
        frame = fields.get("STACK", 0) + fields.get("LOCAL", 0)
        sass = subprocess.run([str(_tools()), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout if frame else ""
    ptx = compiled.asm["ptx"]
    shared = int(getattr(compiled.metadata, "shared", 0)) + fields.get("SHARED", 0)
    return {
        "kernel": fn.__name__, "grid": list(launch.grid), "num_warps": num_warps, "num_stages": num_stages,
        "maxnreg": options.get("maxnreg"),
        **dict.fromkeys(("BM", "BN", "BK", "LOWP", "PREC")), **meta,  # every constexpr (None where absent)
        "registers": fields.get("REG"), "stack_bytes": fields.get("STACK", 0), "local_bytes": fields.get("LOCAL", 0),
        "spill_stores": len(re.findall(r"\bSTL(\.\w+)*\b", sass)),
        "spill_loads": len(re.findall(r"\bLDL(\.\w+)*\b", sass)),
        "shared_bytes": shared, "wgmma": "wgmma" in ptx, "mma_sync": "mma.sync" in ptx,
        "griddepcontrol": "griddepcontrol.wait" in ptx, "tma_loads": "cp.async.bulk.tensor" in ptx,
        "compile_seconds": round(seconds, 2),
    }


def compile_unique(launches, dtype: str, seen: set, **labels) -> list[dict]:
    """:func:`compile_launch` rows, labelled with ``dtype`` and ``labels`` (``batch=...``), for the
    launches whose (kernel, dtype, meta) is not in ``seen`` (updated), so a config shared by
    several shapes or launches is compiled once."""
    rows = []
    for launch in launches:
        key = (launch.kernel.__name__, dtype, tuple(sorted(launch.meta.items())))
        if key not in seen:
            seen.add(key)
            rows.append({"dtype": dtype, **labels, **compile_launch(launch, dtype)})
    return rows


def collect(entries=None) -> list[dict]:
    """Compile report rows for ``entries`` (default :data:`SHIPPED`); each row has the config
    (``config``, ``dtype``, ``batch``) and :func:`compile_launch`'s fields. Under the interpreter
    this runs in a subprocess with ``TRITON_INTERPRET=0``."""
    entries = SHIPPED if entries is None else entries
    if interpreter_enabled():
        return _collect_subprocess(entries)
    rows = []
    for name, model_kwargs, dtype, batch, step in entries:
        # a training step launches the same kernel config many times: compile it once
        rows += compile_unique(capture(model_kwargs, dtype, batch, step), dtype, set(), config=name, batch=batch,
                               step=step)
    return rows


def _collect_subprocess(entries) -> list[dict]:
    index = [SHIPPED.index(e) for e in entries]
    env = dict(os.environ, TRITON_INTERPRET="0")
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "seda_fast.tools.compile_report", "--entries",
                        ",".join(map(str, index)), "--json", str(out), "--quiet"], env=env, check=True)
        return json.loads(out.read_text())


def problems(rows) -> list[str]:
    """What fails the bar: any spill/local memory, or shared memory over the sm_90 limit."""
    bad = []
    for r in rows:
        tag = f"{r['kernel']} {r.get('step', 'inference')} {r['config']} {r['dtype']} B={r['batch']}"
        if r["spill_stores"] or r["spill_loads"] or r["local_bytes"]:
            bad.append(f"{tag}: spills (STL {r['spill_stores']}, LDL {r['spill_loads']}, local {r['local_bytes']} B)")
        if r["shared_bytes"] > SM90_SMEM_LIMIT:
            bad.append(f"{tag}: {r['shared_bytes']} B shared memory > {SM90_SMEM_LIMIT}")
    return bad


def format_table(rows) -> str:
    head = ("kernel", "step", "config", "dtype", "B", "grid", "BMxBNxBK", "warps", "stages", "regs",
            "spill(st/ld)", "smem B", "wgmma", "compile s")
    lines = [head]
    for r in rows:
        lines.append((r["kernel"], r.get("step", "inference"), r["config"], r["dtype"], str(r["batch"]),
                      "x".join(map(str, r["grid"])),
                      "x".join(str(r[key]) for key in ("BM", "BN", "BK") if r.get(key) is not None), str(r["num_warps"]), str(r["num_stages"]),
                      str(r["registers"]), f"{r['spill_stores']}/{r['spill_loads']}", str(r["shared_bytes"]),
                      "yes" if r["wgmma"] else "no", f"{r['compile_seconds']:.1f}"))
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seda_fast compile-report", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a subset: default-model inference in bf16 (B = 64 and 16384) and fp32, the small "
                             "model's, and the bf16 training step at B = 256")
    parser.add_argument("--entries", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="no table")
    args = parser.parse_args(argv)
    if args.entries:
        entries = [SHIPPED[int(i)] for i in args.entries.split(",")]
    else:
        entries = QUICK if args.quick else SHIPPED
    rows = collect(entries)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.quiet:
        print(format_table(rows))
        bad = problems(rows)
        print("OK: no spills, shared memory within the sm_90 limit" if not bad else "\n".join(bad))
    return 1 if problems(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
