"""The unfused baselines' cost model (eager, CUDA graph of eager, torch.compile) and the cost-model
comparison that the fused backend's "auto" choice follows."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import make_model
from seda_fast import backends, presets, reference, schedule
from seda_fast.tools import cost_baselines, cost_model


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("tables", [False, True], ids=["eager", "tables-precomputed"])
def test_meta_recording_sees_the_ops_a_real_call_runs(tables):
    """The meta-device count = the aten ops of a real CPU call of the same config."""
    model = make_model(layers=3, learner_steps=3, translator_steps=2).eval()
    v = torch.randn(5, model.config.visual_dim)
    schedule._DEVICE.clear()  # the real call builds its schedule tables, as the (uncached) meta recording does
    with torch.no_grad():
        tabs = reference.inference_tables(model, v.dtype, v.device) if tables else None
        with _Count() as real:
            reference.infer(model, v, tables=tabs)
    ops = cost_baselines.aten_ops(model.config, 5, "float32", tables=tables)
    # a CPU call lifts one more Python-scalar constant per table build (``lift_fresh``, no kernel)
    # than the meta one: the kernels and their order are what must agree
    assert [o.name for o in ops if o.name != "lift_fresh"] == [n for n in real.names if n != "lift_fresh"]


def test_counts_by_construction():
    """With the tables precomputed the matmul FLOPs are exactly the chain's (cost_model), views cost
    nothing, a matmul kernel's bytes are its operands and output."""
    cfg = presets.config("small")
    ops = cost_baselines.aten_ops(cfg, 7, "bfloat16", tables=True)
    assert sum(o.flops for o in ops) == cost_model.inference_flops(cfg, 7)
    assert all(o.bytes == 0 for o in ops if o.view) and any(o.view for o in ops)
    mm = next(o for o in ops if o.name == "addmm" and o.out_bytes == 7 * cfg.dim * 2)
    assert mm.bytes >= mm.out_bytes + 7 * cfg.visual_dim * 2 + cfg.dim * cfg.visual_dim * 2


def test_predictions_and_their_bounds():
    cfg = presets.config("default")
    eager = cost_baselines.predict(cfg, 64, "eager")
    assert eager.bound == "host" and eager.time_s == pytest.approx(eager.counts["aten_ops"] * 5e-6)
    graph = cost_baselines.predict(cfg, 64, "cuda_graph")
    assert graph.counts["kernels"] < eager.counts["kernels"]  # the tables are precomputed
    compiled = cost_baselines.predict(cfg, 64, "torch_compile")
    assert compiled.counts["kernels"] < graph.counts["kernels"] and compiled.time_s < graph.time_s
    assert cost_baselines.predict(cfg, 16384, "eager").bound == "GPU"
    with pytest.raises(ValueError, match="impl"):
        cost_baselines.predict(cfg, 1, "jit")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_auto_runs_the_predicted_fastest_implementation(dtype):
    """``fused_impl="auto"`` runs backends.AUTO_IMPL: at every batch the cost model checks it is the
    fastest of the implementations auto may choose, or within 5 % of it (fp32 at B = 16384: the
    row-block kernels are predicted ~2.5 % faster, inside the model's own error)."""
    rows = cost_model.comparison(presets.config("default"), dtype=dtype)
    for b in (1, 64, 1024, 16384):
        times = {r["impl"]: r["time_s"] for r in rows if r["batch"] == b}
        best = min(times[i] for i in ("rowblock", "phases"))
        assert times[backends.AUTO_IMPL] <= 1.05 * best, (b, times)


def test_nested_recording_sees_what_a_fused_op_issues_around_its_launches():
    """``nested=True``: a fused custom op is recorded, then the torch ops its launcher issues (here
    the center sums' output allocations and CPU label check), tagged with the op's name; a cast that
    changes the dtype is a kernel, one that keeps it is a view."""
    from seda_fast.ops import center_update
    from seda_fast.ops.runtime import kernels
    z, labels = torch.randn(5, 6, dtype=torch.bfloat16), torch.tensor([0, 1, 0, 2, 1])
    with kernels().capture_launches(keep_args=False):
        flat = cost_baselines.record_aten_ops(lambda: center_update.class_sums(z, labels, 3))
        nested = cost_baselines.record_aten_ops(lambda: center_update.class_sums(z, labels, 3), nested=True)
    assert [o.name for o in flat] == ["class_sums"] and not flat[0].inside
    assert nested[0].name == "class_sums" and nested[0].namespace == "seda_fast"
    inner = [o.name for o in nested[1:] if not o.view]
    assert {"empty", "aminmax"} <= set(inner) and all(o.inside == "class_sums" for o in nested[1:])
    casts = cost_baselines.record_aten_ops(lambda: (z.to(torch.bfloat16), z.to(torch.float32)))
    assert [o.view for o in casts if o.name == "to" or o.name == "_to_copy"][-1] is False
