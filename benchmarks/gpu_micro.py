"""Ceilings and sync microbenchmarks of the device, for the cost model and the GPU run.

Each function measures one figure and returns a dict (``value``, ``unit`` and what it was measured
on). On a CPU host (``dry=True``: the GPU run's dry run) they run at toy sizes, Triton kernels in
the interpreter, so the code cannot rot; those figures are never device claims.

* :func:`gemm_bf16` - dense matmul TFLOP/s (bf16 on CUDA; random operands, never zeros);
* :func:`copy_bandwidth` - device-to-device copy, bytes read + written per second;
* :func:`l2_bandwidth` - a Triton kernel re-reading a working set a quarter of the L2 size with
  L1-bypassing loads (``.cg``), bytes per second summed over the grid;
* :func:`l2_latency` - one dependent load's round trip (a pointer chase through a working set that
  stays in the L2), the cost model's ``l2_latency_s`` (the center EMA's walk is a chain of them);
* :func:`launch_cost` - wall time per launch of an empty Triton kernel from Python;
* :func:`launch_cost_wide` - the same for a kernel with as many arguments as a phase kernel (the
  Python launcher's cost grows with them): the cost model's ``launch_s``;
* :func:`aten_op_cost` / :func:`view_op_cost` - host time per eager aten op issued from Python: a
  small element-wise op (the cost model's ``aten_op_s``) and a view (``t``, which launches nothing:
  ``view_op_s``);
* :func:`label_check_cost` - the label range check a training step runs through the model (a
  reduction and its read-back): the cost model's ``label_check_s``;
* :func:`graph_boundary` - cost of one kernel boundary inside a CUDA graph (100 tiny kernels
  against 1);
* :func:`barrier_round_trip` - one grid barrier (:func:`seda_fast.kernels._barrier.grid_barrier`)
  in a cooperative launch with one program per SM;
* :func:`pdl` - whether programmatic dependent launch (``launch_pdl=True`` + ``gdc_wait``) runs and
  gives the right answer, and the per-kernel time of a dependent chain with and without it;
* :func:`pdl_graph_boundary` - the kernel boundary inside a CUDA graph with and without it.
"""
from __future__ import annotations

import time

import torch
import triton
import triton.language as tl

from seda_fast.kernels._barrier import grid_barrier


def _events_ms(fn, warmup: int, iters: int, cuda: bool) -> float:
    """Median ms of ``fn()`` over ``iters`` synchronised calls."""
    from seda_fast.tools import bench
    return bench.summarize(bench.device_times(fn, warmup, iters, cuda))["median_ms"]


def gemm_bf16(device: torch.device, dry: bool) -> dict:
    cuda = device.type == "cuda"
    n = 256 if dry else 8192
    dtype = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    ms = _events_ms(lambda: a @ b, 3, 5 if dry else 20, cuda)
    return {"value": 2 * n**3 / (ms * 1e-3) / 1e12, "unit": "TFLOP/s", "shape": f"{n}x{n}x{n}",
            "dtype": str(dtype).replace("torch.", ""), "median_ms": ms}


def copy_bandwidth(device: torch.device, dry: bool) -> dict:
    cuda = device.type == "cuda"
    nbytes = (16 if dry else 2048) * 2**20
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = _events_ms(lambda: dst.copy_(src), 3, 5 if dry else 20, cuda)
    return {"value": 2 * nbytes / (ms * 1e-3) / 1e12, "unit": "TB/s (read + write)",
            "bytes_per_copy": nbytes, "median_ms": ms}


@triton.jit
def _l2_read_kernel(x_ptr, out_ptr, n_chunks, REPS: tl.constexpr, CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    offs = tl.arange(0, CHUNK)
    acc = tl.zeros((CHUNK,), tl.float32)
    for r in range(REPS):  # a different chunk each round, so no load can be hoisted out of the loop
        chunk = (pid + r * nprog) % n_chunks
        acc += tl.load(x_ptr + chunk.to(tl.int64) * CHUNK + offs, cache_modifier=".cg")
    tl.store(out_ptr + pid * CHUNK + offs, acc)


def l2_bandwidth(device: torch.device, dry: bool) -> dict:
    cuda = device.type == "cuda"
    chunk = 4096
    if cuda:
        props = torch.cuda.get_device_properties(device)
        working = max(chunk * 4, props.L2_cache_size // 4)
        programs, reps = props.multi_processor_count * 8, 256
    else:
        working, programs, reps = chunk * 4 * 4, 2, 2
    n_chunks = working // (chunk * 4)
    x = torch.randn(n_chunks * chunk, device=device)
    out = torch.empty(programs * chunk, device=device)

    def run():
        _l2_read_kernel[(programs,)](x, out, n_chunks, REPS=reps, CHUNK=chunk, num_warps=8)
    ms = _events_ms(run, 2, 3 if dry else 20, cuda)
    read = programs * reps * chunk * 4
    return {"value": read / (ms * 1e-3) / 1e12, "unit": "TB/s (L2 -> SM reads)", "working_set_bytes": working,
            "bytes_read": read, "programs": programs, "median_ms": ms}


@triton.jit
def _chase_kernel(next_ptr, out_ptr, steps):
    i = tl.load(next_ptr)
    for _ in range(steps):  # each load's address is the previous load's value
        i = tl.load(next_ptr + i, cache_modifier=".cg")
    tl.store(out_ptr, i)


def l2_latency(device: torch.device, dry: bool) -> dict:
    """One program chasing a random cycle through 1 MiB of int32 indices (in the L2, past the L1 by
    ``.cg``): microseconds per step, the run with 1 step subtracted."""
    cuda = device.type == "cuda"
    n = 4096 if dry else 2**18
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=gen)
    nxt = torch.empty(n, dtype=torch.int32)
    nxt[order] = order.roll(-1).to(torch.int32)  # one cycle through every slot
    nxt = nxt.to(device)
    out = torch.empty(1, dtype=torch.int32, device=device)
    steps = 50 if dry else 20000

    def run(k):
        return lambda: _chase_kernel[(1,)](nxt, out, k, num_warps=1)
    long, short = _events_ms(run(steps), 2, 3 if dry else 10, cuda), _events_ms(run(1), 2, 3 if dry else 10, cuda)
    return {"value": max(long - short, 1e-9) / (steps - 1) * 1e3, "unit": "us per dependent L2 load",
            "working_set_bytes": n * 4, "steps": steps}


@triton.jit
def _empty_kernel(x_ptr):
    pass


def _host_us(fn, n: int, cuda: bool) -> float:
    """Wall microseconds per call of ``fn`` over ``n`` calls issued back to back (host-bound when the
    work is tiny), after a warm-up call and with the device idle at the start."""
    fn()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def launch_cost(device: torch.device, dry: bool) -> dict:
    x = torch.zeros(1, device=device)
    n = 20 if dry else 2000
    return {"value": _host_us(lambda: _empty_kernel[(1,)](x), n, device.type == "cuda"),
            "unit": "us per launch (Python, empty Triton kernel)", "launches": n}


@triton.jit
def _wide_kernel(p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14, p15,
                 i0, i1, i2, i3, i4, i5, i6, i7, f0, f1,
                 C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, C3: tl.constexpr,
                 C4: tl.constexpr, C5: tl.constexpr, C6: tl.constexpr, C7: tl.constexpr):
    pass


def launch_cost_wide(device: torch.device, dry: bool) -> dict:
    """An empty kernel with 16 tensors, 8 ints, 2 floats and 8 constexprs, about a phase kernel's
    argument list."""
    cuda = device.type == "cuda"
    ptrs = [torch.zeros(4, device=device) for _ in range(16)]
    ints = [3 + i for i in range(8)]  # not 1 and not multiples of 16: no specialisation to constants
    consts = dict(C0=16, C1=32, C2=64, C3=1, C4=2, C5=True, C6=False, C7=4)

    def fn():
        _wide_kernel[(1,)](*ptrs, *ints, 0.5, 1.5, **consts)
    n = 20 if dry else 2000
    return {"value": _host_us(fn, n, cuda), "unit": "us per launch (Python, 26 arguments + 8 constexprs)",
            "launches": n}


def _host_op_cost(device: torch.device, dry: bool, op, what: str) -> dict:
    """``op(x)`` on a ``[256, 512]`` tensor (bf16 on CUDA), issued ``n`` times."""
    cuda = device.type == "cuda"
    x = torch.randn(256, 512, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    n = 20 if dry else 5000
    return {"value": _host_us(lambda: op(x), n, cuda), "unit": f"us per eager {what} (host)", "ops": n}


def aten_op_cost(device: torch.device, dry: bool) -> dict:
    return _host_op_cost(device, dry, lambda x: x + 1, "element-wise op")


def view_op_cost(device: torch.device, dry: bool) -> dict:
    return _host_op_cost(device, dry, lambda x: x.t(), "view (t)")


def label_check_cost(device: torch.device, dry: bool) -> dict:
    """The range check a training step runs on its labels (``[256]`` int64, 10 classes): a reduction
    and its two scalar reads, the device idle (in a step the first read also waits for the previous
    step's tail)."""
    from seda_fast import validation
    labels = torch.arange(256, device=device) % 10
    n = 20 if dry else 2000
    return {"value": _host_us(lambda: validation.check_labels(labels, 256, 10), n, device.type == "cuda"),
            "unit": "us per label range check (reduction + read-backs)", "checks": n}


def graph_boundary(device: torch.device, dry: bool) -> dict:
    if device.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    from seda_fast.tools import bench
    x = torch.zeros(1, device=device)

    def chain(k):
        def fn():
            for _ in range(k):
                x.add_(1.0)
        return bench.cuda_graph(fn)
    long, short = chain(100), chain(1)
    t_long, t_short = _events_ms(long, 5, 50, True), _events_ms(short, 5, 50, True)
    return {"value": (t_long - t_short) / 99 * 1e3, "unit": "us per kernel boundary in a CUDA graph",
            "graph_100_ms": t_long, "graph_1_ms": t_short}


@triton.jit
def _barrier_loop_kernel(counter_ptr, ROUNDS: tl.constexpr):
    nprog = tl.num_programs(0)
    for r in range(ROUNDS):
        grid_barrier(counter_ptr, (r + 1) * nprog)


def barrier_round_trip(device: torch.device, dry: bool) -> dict:
    cuda = device.type == "cuda"
    programs = torch.cuda.get_device_properties(device).multi_processor_count if cuda else 1
    rounds = 4 if dry else 1000
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    extra = {"launch_cooperative_grid": True} if cuda else {}

    def run(n_rounds):
        counter.zero_()
        _barrier_loop_kernel[(programs,)](counter, ROUNDS=n_rounds, num_warps=4, **extra)
    run(rounds)
    if cuda:
        torch.cuda.synchronize()
    ok = int(counter.item()) == programs * rounds
    t_many = _events_ms(lambda: run(rounds), 2, 3 if dry else 10, cuda)
    t_one = _events_ms(lambda: run(1), 2, 3 if dry else 10, cuda)
    return {"value": (t_many - t_one) / (rounds - 1) * 1e3, "unit": "us per grid barrier",
            "programs": programs, "rounds": rounds, "counter_ok": ok}


@triton.jit
def _pdl_step_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr, USE_GDC: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    if USE_GDC:
        tl.extra.cuda.gdc_wait()  # the previous kernel's writes are visible after this
    x = tl.load(src_ptr + offs, mask=mask)
    if USE_GDC:
        tl.extra.cuda.gdc_launch_dependents()
    tl.store(dst_ptr + offs, x + 1.0, mask=mask)


def pdl(device: torch.device, dry: bool) -> dict:
    if device.type != "cuda":
        return {"skipped": "programmatic dependent launch needs a CUDA device (sm_90)"}
    n, block, steps = 1 << 16, 1024, 50
    bufs = [torch.zeros(n, device=device), torch.zeros(n, device=device)]

    def chain(use_pdl):
        def fn():
            for k in range(steps):
                _pdl_step_kernel[(n // block,)](bufs[k % 2], bufs[(k + 1) % 2], n, BLOCK=block, USE_GDC=use_pdl,
                                                launch_pdl=use_pdl)
        return fn
    out = {"unit": "us per dependent kernel (50-kernel chain, Python launches)"}
    try:
        bufs[0].zero_()
        chain(True)()
        torch.cuda.synchronize()
        expect = float(steps)  # each step adds 1 to the previous buffer
        out["works"] = bool(torch.all(bufs[steps % 2] == expect).item())
        out["with_pdl_us"] = _events_ms(chain(True), 2, 10, True) * 1e3 / steps
    except Exception as exc:  # an unsupported driver/runtime: record why
        out["works"] = False
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["without_pdl_us"] = _events_ms(chain(False), 2, 10, True) * 1e3 / steps
    out["value"] = out.get("with_pdl_us")
    return out


def pdl_graph_boundary(device: torch.device, dry: bool) -> dict:
    """One kernel boundary inside a CUDA graph when every kernel is a programmatic dependent launch
    (the fused ``"phases"`` inference on Hopper): a 100-kernel chain of ``_pdl_step_kernel``
    against a 1-kernel one, captured with and without ``launch_pdl``."""
    if device.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    from seda_fast.tools import bench
    n, block = 1 << 12, 1024
    bufs = [torch.zeros(n, device=device), torch.zeros(n, device=device)]

    def chain(k, use_pdl):
        def fn():
            for i in range(k):
                _pdl_step_kernel[(n // block,)](bufs[i % 2], bufs[(i + 1) % 2], n, BLOCK=block, USE_GDC=use_pdl,
                                                launch_pdl=use_pdl)
        return bench.cuda_graph(fn)
    out = {"unit": "us per kernel boundary in a CUDA graph, programmatic dependent launch"}
    for use_pdl, key in ((False, "without_pdl_us"), (True, "with_pdl_us")):
        try:
            t_long = _events_ms(chain(100, use_pdl), 5, 50, True)
            t_short = _events_ms(chain(1, use_pdl), 5, 50, True)
            out[key] = (t_long - t_short) / 99 * 1e3
        except Exception as exc:  # capture of programmatic launches unsupported here: record why
            out[f"error_{key}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["value"] = out.get("with_pdl_us")
    return out


def compile_check(arch: int = 90) -> list[dict]:
    """Compile the Triton microbenchmark kernels for ``sm_{arch}a`` without a GPU (as the compile
    report does for the library's kernels): registers, spills and the instructions each must
    contain (the barrier's acquire/release atomics and ``bar.sync``, PDL's ``griddepcontrol``,
    the L2 kernel's ``.cg`` loads). Must run without ``TRITON_INTERPRET``."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from seda_fast.tools.compile_report import _tools
    cases = [
        (_barrier_loop_kernel, {"counter_ptr": "*i32", "ROUNDS": "constexpr"}, {"ROUNDS": 1000},
         dict(num_warps=4, launch_cooperative_grid=True), ("atom.global.gpu.release.add", "ld.global.gpu.acquire", "bar.sync")),
        (_pdl_step_kernel, {"src_ptr": "*fp32", "dst_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr",
                            "USE_GDC": "constexpr"}, {"BLOCK": 1024, "USE_GDC": True},
         dict(num_warps=4, launch_pdl=True), ("griddepcontrol.wait", "griddepcontrol.launch_dependents")),
        (_l2_read_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "n_chunks": "i32", "REPS": "constexpr",
                           "CHUNK": "constexpr"}, {"REPS": 256, "CHUNK": 4096}, dict(num_warps=8), ("ld.global.cg",)),
        (_empty_kernel, {"x_ptr": "*fp32"}, {}, dict(num_warps=1), ()),
    ]
    rows = []
    for fn, signature, constexprs, options, needles in cases:
        compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                                  options=options)
        ptx = compiled.asm["ptx"]
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            usage = subprocess.run([str(_tools()), "-res-usage", str(cubin)], capture_output=True, text=True,
                                   check=True).stdout
        fields = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|LOCAL)\:(\d+)", usage)}
        rows.append({"kernel": fn.__name__, "registers": fields.get("REG"), "local_bytes": fields.get("LOCAL", 0),
                     "stack_bytes": fields.get("STACK", 0),
                     "missing": [n for n in needles if n not in ptx]})
    return rows


CEILINGS = {  # name -> function; the order the GPU run measures them in
    "gemm_bf16": gemm_bf16,
    "copy_bandwidth": copy_bandwidth,
    "l2_bandwidth": l2_bandwidth,
    "l2_latency": l2_latency,
    "launch_cost": launch_cost,
    "launch_cost_wide": launch_cost_wide,
    "aten_op_cost": aten_op_cost,
    "view_op_cost": view_op_cost,
    "label_check_cost": label_check_cost,
    "graph_boundary": graph_boundary,
}
SYNC = {"barrier_round_trip": barrier_round_trip, "pdl": pdl, "pdl_graph_boundary": pdl_graph_boundary}  # may hang or fail: a child process of their own
