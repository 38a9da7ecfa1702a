"""A grid-wide barrier for persistent (cooperative) launches, as a ``@triton.jit`` helper.

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
