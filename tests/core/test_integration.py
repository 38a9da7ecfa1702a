"""Drop-in behaviour on the eager backend: torch.compile, autocast, DDP (gloo, 2 processes)."""
import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from seda_fast import reference

from helpers import make_batch, make_model


# torch 2.11's Inductor, even with fallback_random=True, swaps the order of two consecutive
# torch.randn draws in a compiled graph (pytorch/pytorch#181136, fixed by 2.13): the stage-2 loss
# draws eps then xi, so compiled and eager get each other's noise there. Stage 1 draws one randn.
RANDN_ORDER_KEPT = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 13)


def _compile_setup():
    torch._dynamo.reset()
    model = make_model(learner_steps=2, translator_steps=2)
    v, y, text = make_batch(model.config, 9)
    model.train()
    model.learner_loss(v, y)  # centers initialised, then frozen for the comparison
    model.eval()
    return model, torch.compile(model, fullgraph=True), v, y, text


def _assert_compiled_loss_matches(model, compiled, stage, v, y, text):
    model.set_stage(stage)
    torch.manual_seed(3)
    expect = model(v, y, text)
    torch.manual_seed(3)
    got = compiled(v, y, text)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    for batch in (5, 4):  # new batch sizes: dynamo recompiles with a dynamic batch
        torch.manual_seed(4)
        expect = model(v[:batch], y[:batch], text)
        torch.manual_seed(4)
        torch.testing.assert_close(compiled(v[:batch], y[:batch], text), expect, rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_matches_eager():
    """Inference and the stage-1 loss trace with fullgraph=True (no graph break) and give the eager
    numbers. Under torch.compile the draws come from torch's global RNG (pass generator=None);
    fallback_random makes inductor use the same RNG as eager so the losses can be compared."""
    import torch._inductor.config as inductor_config

    model, compiled, v, y, text = _compile_setup()
    with inductor_config.patch(fallback_random=True):
        with torch.no_grad():
            torch.testing.assert_close(compiled(v), model(v), rtol=1e-5, atol=1e-6)
        _assert_compiled_loss_matches(model, compiled, 1, v, y, text)


@pytest.mark.xfail(not RANDN_ORDER_KEPT, strict=True,
                   reason="pytorch/pytorch#181136: this torch's Inductor swaps two consecutive randn draws")
def test_torch_compile_fullgraph_stage2_matches_eager():
    """The stage-2 loss traces with fullgraph=True and gives the eager number (same draws)."""
    import torch._inductor.config as inductor_config

    model, compiled, v, y, text = _compile_setup()
    with inductor_config.patch(fallback_random=True):
        _assert_compiled_loss_matches(model, compiled, 2, v, y, text)


def test_autocast_bf16_keeps_documented_dtypes():
    model = make_model()
    v, y, text = make_batch(model.config, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            logits = model(v)
        loss1 = model(v, y)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    assert loss1.dtype == torch.float32 and torch.isfinite(loss1)
    loss1.backward()
    model.set_stage(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss2 = model(v, y, text)
    loss2.backward()
    assert loss2.dtype == torch.float32 and torch.isfinite(loss2)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        if p.grad is not None:
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    assert model.centers.dtype == torch.float32


BATCH, LR = 12, 0.1


def _one_step(model, v, y, text, losses):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    loss = losses()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _ddp_worker(rank, world, init_file, out_dir, stage, backend):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    model = make_model(seed=0).set_stage(stage)
    model.backend = backend  # "triton": the fused training ops (the interpreter: TRITON_INTERPRET is inherited)
    v, y, text = make_batch(model.config, BATCH, seed=1)
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    ddp = DDP(model)
    gen = torch.Generator().manual_seed(100 + rank)
    _one_step(model, v, y, text, lambda: ddp(v[part], y[part], text, generator=gen))
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    # Leave without running destructors: tearing down DDP's Reducer and the gloo group at frame
    # exit deadlocked here (~ProcessGroupGloo waits on a gloo thread that waits for the GIL),
    # seen on torch 2.13 CPU in about 1 run in 6. The results are already on disk.
    os._exit(0)


@pytest.mark.parametrize("backend", ["eager", "triton"])
@pytest.mark.parametrize("stage", [1, 2])
def test_ddp_two_ranks_match_one_process(tmp_path, stage, backend):
    """Two gloo ranks on half batches end with the same centers and parameters as one process
    that updates the centers on the whole batch and steps on the mean of the two half-batch
    losses (each half drawing its t/eps/xi from the same generator as the matching rank). With
    ``backend="triton"`` the ranks train with the fused ops (the centers' sums and counts are
    all-reduced between the two center launches); the expectation is the eager reference."""
    world = 2
    ctx = mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path), stage, backend), nprocs=world,
                   join=False)
    deadline = time.monotonic() + 240  # never hang CI: a stuck rank fails the test instead
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("DDP workers did not finish within 240 s")

    model = make_model(seed=0).set_stage(stage)
    v, y, text = make_batch(model.config, BATCH, seed=1)
    parts = [slice(r * BATCH // world, (r + 1) * BATCH // world) for r in range(world)]
    gens = [torch.Generator().manual_seed(100 + r) for r in range(world)]
    if stage == 1:
        with torch.no_grad():
            reference.update_centers(model, reference.project(model.visual_proj, v), y)
        half = lambda r: reference.learner_loss(model, v[parts[r]], y[parts[r]], gens[r], update=False)[0]
    else:
        half = lambda r: reference.translator_loss(model, v[parts[r]], y[parts[r]], text, True, gens[r])[0]
    _one_step(model, v, y, text, lambda: sum(half(r) for r in range(world)) / world)

    expect = model.state_dict()
    for r in range(world):
        got = torch.load(tmp_path / f"rank{r}.pt")
        for key, value in expect.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=f"rank {r}: {key}")
    if stage == 1:
        assert expect["centers_initialized"][y].all()
