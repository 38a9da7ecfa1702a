"""CUDA-graph replay of the training phase launchers' recurring launches (``kernels/_graphs.py``).

On CPU there is no CUDA graph, so a stand-in capture records the launches with their arguments
(the tensors themselves, as a CUDA graph holds their addresses) and its replay launches those
again: the same contract as a graph. The phase kernel runs in Triton's interpreter. Checked:
the cache's first-sighting / capture / replay walk, that a replay equals a plain run, that
changed contents are read at replay, and that a changed buffer changes the key (a replay would
write the old buffer: the new one would keep its NaNs). The real capture runs in the GPU test.
"""
import pytest
import torch

from helpers import recording_capture
from seda_fast.ops.runtime import kernels, launch_options, phase_graphs, phase_launch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
K = kernels()
DP = K.denoise_phases_module
UP = K.unroll_phases_module
G = K.graphs_module


def test_cache_walks_plain_capture_replay():
    made = []
    cache = G.LaunchGraphs(max_graphs=2, max_seen=3, capture_fn=recording_capture)
    run = lambda key: cache.run(key, made.append, DEVICE)  # noqa: E731
    assert [run("a"), run("a"), run("a"), run("b")] == ["plain", "captured", "replayed", "plain"]
    assert made == [False] * 3  # the capture ran launch_all once (recording); the replay did not call it
    assert (cache.plain, cache.captures, cache.replays) == (2, 1, 1)
    for key in "cdef":  # first sightings are bounded: "b" and "c" are forgotten
        run(key)
    assert list(cache.seen) == ["d", "e", "f"]
    assert [run("e"), run("f"), run("b")] == ["captured", "captured", "plain"]
    assert list(cache.graphs) == ["e", "f"]  # two graphs at most: "a", least recently used, dropped
    cache.clear()
    assert not cache.graphs and not cache.seen and cache.captures == 0


def test_cache_that_does_not_replay_stops_capturing():
    cache = G.LaunchGraphs(capture_fn=lambda fn, device, pdl: (type("Null", (), {"replay": lambda s: None})(), pdl))
    for i in range(G.LaunchGraphs.STALL_AFTER):  # each key seen twice, never again: a capture each
        assert [cache.run(i, lambda pdl: None, DEVICE) for _ in range(2)] == ["plain", "captured"]
    assert cache.stalled
    assert [cache.run("x", lambda pdl: None, DEVICE) for _ in range(2)] == ["plain", "plain"]
    assert cache.run(0, lambda pdl: None, DEVICE) == "replayed"  # graphs already held still replay


def test_failed_capture_launches_plainly_and_stops_capturing():
    def broken(fn, device, pdl):
        raise RuntimeError("operation not permitted when stream is capturing")
    made = []
    cache = G.LaunchGraphs(capture_fn=broken)
    with pytest.warns(RuntimeWarning, match="capture"):
        assert [cache.run("k", made.append, DEVICE) for _ in range(2)] == ["plain", "plain"]
    assert len(made) == 2 and cache.stalled and "not permitted" in cache.failure
    assert [cache.run("k", made.append, DEVICE) for _ in range(2)] == ["plain", "plain"] and len(made) == 4


def _denoise_buffers(B, d, H, L, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    nh = L - 1
    weights = (r(H, d) / d ** 0.5, r(nh, H, H) / H ** 0.5, r(nh, H), r(d, H) / H ** 0.5, r(d))
    x_t, cond = r(B, d), r(B, H)
    flat = torch.empty(DP.saved_numel(B, d, H, L), device=DEVICE)
    acts = dict(DP._views(flat, DP._act_shapes(B, d, H, nh)), a=torch.empty(B, H, device=DEVICE),
                x0=torch.empty(B, d, device=DEVICE))
    return x_t, cond, weights, acts


def _forward(x_t, cond, weights, acts, graph):
    nh = weights[1].shape[0]
    fwd, _, table = UP.schedule_table(DP.build_schedule, (nh + 1,), x_t.device)
    call = DP._call(x_t, cond, weights, nh, acts, None, 1, None, None, False, graph)
    call.run(table, fwd, 0)
    return call


def test_replay_is_a_plain_run_and_keys_follow_the_buffers(monkeypatch):
    B, d, H, L = 7, 6, 10, 2
    cache = G.LaunchGraphs(capture_fn=recording_capture)
    monkeypatch.setattr(G, "GRAPHS", cache)
    x_t, cond, weights, acts = _denoise_buffers(B, d, H, L, seed=3)
    ref = {k: torch.full_like(v, float("nan")) for k, v in acts.items()}
    _forward(x_t, cond, weights, ref, graph=False)
    assert cache.plain == 0 and all(torch.isfinite(v).all() for v in ref.values())
    for want in ("plain", "captured", "replayed", "replayed"):
        for v in acts.values():
            v.fill_(float("nan"))
        before = (cache.plain, cache.captures, cache.replays)
        _forward(x_t, cond, weights, acts, graph=True)
        after = (cache.plain, cache.captures, cache.replays)
        assert [b - a for a, b in zip(before, after)] == {"plain": [1, 0, 0], "captured": [0, 1, 0],
                                                           "replayed": [0, 0, 1]}[want]
        for k in ref:
            assert torch.equal(acts[k], ref[k]), (want, k)
    # the same buffers with new contents: a replay reads them as a plain run would
    x_t.copy_(torch.randn_like(x_t))
    ref2 = {k: torch.full_like(v, float("nan")) for k, v in acts.items()}
    _forward(x_t, cond, weights, ref2, graph=False)
    _forward(x_t, cond, weights, acts, graph=True)
    assert cache.replays == 3 and all(torch.equal(acts[k], ref2[k]) for k in ref2)
    assert not torch.equal(ref2["x0"], ref["x0"])
    # one buffer moved: a new key, so a plain run that writes the new buffer
    acts = dict(acts, a=torch.full_like(acts["a"], float("nan")))
    plain_before = cache.plain
    _forward(x_t, cond, weights, acts, graph=True)
    assert cache.plain == plain_before + 1 and torch.equal(acts["a"], ref2["a"])


def test_key_holds_every_argument():
    """Two calls over the same buffers have one key; any tensor argument moved, or a different row
    range or tile, gives another."""
    B, d, H, L = 5, 6, 10, 2
    x_t, cond, weights, acts = _denoise_buffers(B, d, H, L, seed=4)
    fwd, _, table = UP.schedule_table(DP.build_schedule, (L,), x_t.device)
    key = lambda call, rows=fwd, first=0: call.graph_key(table, rows, first)  # noqa: E731
    args = dict(x_t=x_t, cond=cond, weights=weights, nh=L - 1, acts=acts, grads=None, splits=1, tiles=None, wide=None,
                pdl=False, graph=True)
    call = lambda **kw: DP._call(**{**args, **kw})  # noqa: E731
    base = key(call())
    assert key(call()) == base
    assert key(call(), fwd[1:], 1) != base
    assert key(call(cond=cond.clone())) != base
    assert key(call(acts=dict(acts, x0=acts["x0"].clone()))) != base
    assert key(call(tiles=UP.PhaseTiles(32, 32, 32, 4, 2))) != base
    assert key(call(weights=(weights[0].double(),) + weights[1:])) != base  # address may repeat; dtype differs


def test_phase_graphs_reports_the_cache(monkeypatch):
    cache = G.LaunchGraphs(capture_fn=recording_capture)
    monkeypatch.setattr(G, "GRAPHS", cache)
    for _ in range(3):
        cache.run("k", lambda pdl: None, DEVICE)
    assert phase_graphs(clear=True) == dict(plain=1, captures=1, replays=1, graphs=1, failure=None)
    assert phase_graphs() == dict(plain=0, captures=0, replays=0, graphs=0, failure=None)


def test_phase_launch_options():
    """The op layer asks for graphs unless ``launch_options`` turns them off (the launchers use them
    where ``_graphs.usable``: on CUDA); programmatic launch only where the GPU has it."""
    x = torch.zeros(1, device=DEVICE)
    assert phase_launch(x)["graph"] is True
    assert G.usable(torch.device("cuda")) and G.usable(x.device) == (DEVICE.type == "cuda")
    with launch_options(graph=False, pdl=False):
        assert phase_launch(x) == dict(pdl=False, graph=False)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs need a GPU")
def test_training_launchers_replay_bitwise_on_cuda():  # pragma: no cover - GPU only
    """The diffusion term's forward and backward through the real graph cache: five calls with fresh
    inputs (the allocator settles, then plain, captured, replayed), each bitwise equal to the same
    call launched plainly, and at least one of them a replay."""
    G.GRAPHS.clear()
    B, d, H, L = 33, 24, 40, 2
    x_t, cond, weights, _ = _denoise_buffers(B, d, H, L, seed=5)
    target = torch.randn(B, d, device=DEVICE)
    for _ in range(5):
        x_t.normal_()
        outs = {}
        for graph in (False, True):
            x0, a, acts, loss, gx0 = DP.denoise_phases_forward(x_t, cond, *weights, target=target, graph=graph)
            grads = DP.denoise_phases_backward(gx0, x_t, acts, a, cond, *weights, graph=graph, flat=True)
            outs[graph] = (x0, a, acts, loss, gx0, grads)
        for plain, replayed in zip(outs[False], outs[True]):
            assert torch.equal(plain, replayed)
    assert G.GRAPHS.captures >= 1 and G.GRAPHS.replays >= 1, phase_graphs()
