"""Synchronisation between programs through counters in global memory (``@triton.jit`` helpers):
a grid-wide barrier for persistent (cooperative) launches, and the split-K reduction.

``grid_barrier(counter_ptr, target)``: every program of the grid arrives on one int32 counter in
global memory and waits until it reaches ``target``. The counter only grows, so phase ``p``
(0-based) of a grid of ``n`` programs waits for ``target = (p + 1) * n``; the host zeroes the
counter before the launch.

Ordering (sm_90a PTX, triton 3.6.0 and 3.7.1): the arriving ``atomic_add(..., sem="release")``
is executed by ONE thread of the program, and Triton puts no CTA barrier before it, so the other
warps' stores of the phase would not be ordered before the arrive. ``tl.debug_barrier()`` (a
``bar.sync``) in front of it closes that race. The poll is an acquire ``atomic_add(ptr, 0)``
(one thread's load, broadcast through shared memory between two ``bar.sync``), so every warp
leaves the loop after the acquire.

The grid must be co-resident, or the spin never ends: launch with
``launch_cooperative_grid=True`` (the launch then fails loudly when the grid cannot fit) and a
grid no larger than the device holds at once. Under the Triton interpreter programs run one
after another, so only a one-program grid passes the barrier there.

``split_k_reduce``: the ``SPLIT`` programs that compute slices of one output tile's K loop each
store their fp32 partial in a workspace slot and arrive on the tile's counter; the one that
arrives last (nobody waits, so it needs no co-residency and runs under the interpreter) sums the
``SPLIT`` partials in slice order 0, 1, ..., resets the counter to 0 for the next phase or call,
and alone runs the tile's epilogue. The order of the sum does not depend on which program came
last, so the result is the same bit for bit from run to run, without floating-point atomics.
Ordering: as for the barrier (``bar.sync``, then one thread's acq_rel atomic, its result
broadcast through ``bar.sync``), and the partials are read with ``.cg`` loads (from L2, never a
stale L1 line of an earlier phase's use of the slot). Seen in the sm_90a PTX of the phase kernel
(triton 3.6.0 and 3.7.1): ``bar.sync``; one thread's ``atom.global.gpu.acq_rel.add``;
``bar.sync``; ``ld.global.cg.v4.b32`` for the partials; one thread's
``atom.global.gpu.relaxed.exch`` for the reset. Not run on a GPU yet.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grid_barrier(counter_ptr, target):
    """Arrive on ``counter_ptr`` (release) and spin until it holds at least ``target`` (acquire)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")


@triton.jit
def split_k_reduce(acc, ws_ptr, cnt_ptr, slot, s, SPLIT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Split-K fixup of one output tile (module doc): ``acc [BM, BN]`` fp32 is this program's
    partial over K slice ``s``; ``ws_ptr`` fp32 ``[slots, SPLIT, BM, BN]``, ``cnt_ptr`` int32
    ``[slots]`` (zero between uses). Returns ``(sum of the SPLIT partials, True)`` in the program
    that arrives last and ``(acc, False)`` in the others; ``SPLIT == 1`` returns ``(acc, True)``."""
    if SPLIT == 1:
        last = tl.full((), 1, tl.int1)
    else:
        offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        base = ws_ptr + slot.to(tl.int64) * (SPLIT * BM * BN)
        tl.store(base + s * (BM * BN) + offs, acc)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + slot, 1, sem="acq_rel", scope="gpu")
        last = arrived == SPLIT - 1
        if last:
            acc = tl.load(base + offs, cache_modifier=".cg")
            for j in tl.static_range(1, SPLIT):
                acc += tl.load(base + j * (BM * BN) + offs, cache_modifier=".cg")
            tl.atomic_xchg(cnt_ptr + slot, 0, sem="relaxed", scope="gpu")
    return acc, last
