"""Shared test helpers: small odd-sized configs and fresh random inputs."""
from types import SimpleNamespace

import torch

import seda_fast as sf
from seda_fast.tools import compile_report
from seda_fast import presets, reference, schedule
from seda_fast.step_graph import optimized_params


def small_config(**overrides) -> sf.SeDAConfig:
    """Odd sizes (none a multiple of 16) so masking paths are exercised."""
    return presets.config("small", **overrides)


def make_model(seed: int = 0, dtype=torch.float32, **overrides) -> sf.SeDA:
    torch.manual_seed(seed)
    return sf.SeDA(small_config(**overrides)).to(dtype)


def make_batch(cfg: sf.SeDAConfig, batch: int, seed: int = 1, dtype=torch.float32):
    """``(visual [B, Dv], labels [B], class_text [C, Dt])``, fresh random values."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, cfg.visual_dim, generator=g).to(dtype)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    text = torch.randn(cfg.num_classes, cfg.text_dim, generator=g).to(dtype)
    return visual, labels, text


def assert_flash_rule(name: str, out, ref_lowp, ref32, atol: float) -> None:
    """flash-attention's rule for fp16/bf16 kernels: max |kernel - fp32 ref| <= 2 x max |torch
    same-dtype - fp32 ref| + atol (CONVENTIONS.md)."""
    err_kernel = (out.float() - ref32.float()).abs().max().item()
    err_torch = (ref_lowp.float() - ref32.float()).abs().max().item()
    assert err_kernel <= 2 * err_torch + atol, f"{name}: kernel {err_kernel:.3e} vs torch {err_torch:.3e}"


def compile_rows_in_subprocess(test_file, out, *args) -> list:
    """Run ``python TEST_FILE OUT [ARGS...]`` without the Triton interpreter (which cannot compile) and return
    the compile-report rows it writes to ``out`` (each test file's ``__main__`` compiles its kernels
    for sm_90a with :func:`seda_fast.tools.compile_report.compile_unique`)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, TRITON_INTERPRET="0",
               PYTHONPATH=os.pathsep.join([str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(test_file), str(out), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)  # a hang's guard: the longest took 215 s in CI
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(Path(out).read_text())


def assert_sm90_clean(rows, kernels, fields=()) -> None:
    """Compile-report rows of a test file: exactly ``kernels`` compiled, each within the register
    file, with no spills or local memory and shared memory within the sm_90 limit; prints the rows
    (``fields`` added to the common columns) for the log."""
    assert {r["kernel"] for r in rows} == set(kernels), sorted({r["kernel"] for r in rows})
    for r in rows:
        assert 0 < r["registers"] <= 255, r
        assert r["spill_stores"] == r["spill_loads"] == r["local_bytes"] == 0, r
        assert r["shared_bytes"] <= compile_report.SM90_SMEM_LIMIT, r
    for r in rows:
        print({k: r.get(k) for k in ("kernel", "dtype", "batch", *fields, "BM", "BN", "BK", "registers",
                                     "spill_stores", "shared_bytes", "wgmma", "mma_sync")})


def rel(out, ref) -> float:
    """Relative error ``||out - ref|| / ||ref||`` in fp64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def assert_matches_reference(names, out, ref, ref64, args, layers: int, tol: float = 1e-5) -> None:
    """Kernel outputs/gradients ``out`` against the fp32 and fp64 reference autograd (``ref``,
    ``ref64``), name by name; a gradient whose ``args`` entry is given must have that argument's
    dtype and shape. With ``layers == 1`` the empty residual stack's gradients must be empty (the
    reference never reads it, so it has none)."""
    for name, o, r, r64, arg in zip(names, out, ref, ref64, args):
        if arg is not None:
            assert o.dtype == arg.dtype and o.shape == arg.shape, name
        if layers == 1 and name in ("grad w_hidden", "grad b_hidden"):
            assert o.numel() == 0 and r is None
            continue
        assert rel(o, r) < tol, f"{name}: relative error {rel(o, r):.2e} vs fp32 reference"
        assert rel(o, r64) < tol, f"{name}: relative error {rel(o, r64):.2e} vs fp64 reference"


def assert_compiled_step_matches(step, args) -> None:
    """``torch.compile(step, backend="aot_eager", fullgraph=True)`` traces the custom ops with no
    graph break and gives eager's loss and the gradients of every argument, bitwise."""
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    a1 = [t.clone().requires_grad_() for t in args]
    a2 = [t.clone().requires_grad_() for t in args]
    l1, l2 = compiled(*a1), step(*a2)
    l1.backward()
    l2.backward()
    assert torch.equal(l1, l2) and all(torch.equal(x.grad, y.grad) for x, y in zip(a1, a2))


def assert_directional_derivatives(loss, args, grads, names, generator, eps: float = 1e-2) -> None:
    """Each gradient against central differences of ``loss(args) -> float`` (run under no_grad)
    along a random direction ``u``: ``<grad_i, u> ~= (loss(.., a_i + eps u, ..) - loss(.., a_i -
    eps u, ..)) / (2 eps)`` within ``1e-2 |numerical| + 1e-4`` (the method's own error in fp32 with
    eps = 1e-2 on outputs of size ~1, with margin; a 5% error in one gradient fails)."""
    for i, (name, grad) in enumerate(zip(names, grads)):
        u = torch.randn(args[i].shape, generator=generator).to(args[i].device, args[i].dtype)
        with torch.no_grad():
            plus = loss(args[:i] + [args[i] + eps * u] + args[i + 1:])
            minus = loss(args[:i] + [args[i] - eps * u] + args[i + 1:])
        numerical = (plus - minus) / (2 * eps)
        analytical = (grad.double() * u.double()).sum().item()
        assert abs(numerical - analytical) <= 1e-2 * abs(numerical) + 1e-4, (name, numerical, analytical)


_ID_KEYS = {"batch": "B", "B": "B", "layers": "L", "L": "L", "steps": "K", "K": "K", "T": "T", "d": "d",
            "H": "H", "C": "C", "classes": "C", "tau": "tau"}


def case_ids(names: str, rows) -> list[str]:
    """Readable ids for ``@pytest.mark.parametrize(names, rows, ids=case_ids(names, rows))``:
    ``("batch,layers,steps", [(33, 3, 4)])`` -> ``["B33-L3-K4"]``; dtypes by name, strings and
    bools as themselves (``noise`` / ``no-noise``)."""
    keys = [n.strip() for n in names.split(",")]
    ids = []
    for row in rows:
        parts = []
        for key, value in zip(keys, row):
            if isinstance(value, bool):
                parts.append(key if value else f"no-{key}")
            elif isinstance(value, torch.dtype):
                parts.append(str(value).replace("torch.", ""))
            elif key in _ID_KEYS:
                parts.append(f"{_ID_KEYS[key]}{value}")
            else:
                parts.append(str(value))
        ids.append("-".join(parts))
    return ids


# --------------------------------------------------------------------------- the stage-2 training unroll
# (shared by the row-block and the phase implementation's tests)

UNROLL_NAMES = ["m", "grad x_start", "grad m_start", "grad cond", "grad e_table", "grad w_x", "grad w_hidden",
                "grad b_hidden", "grad w_out", "grad b_out", "grad w_pm", "grad w_pu", "grad b_p", "grad w_pd",
                "grad b_pd", "grad w_gm", "grad w_gu", "grad b_g"]
_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unroll_problem(B, d, H, L, steps, seed=0, dtype=torch.float32):
    """``(inputs, ddim, weights, upstream)``: ``x_start, m_start, cond, e_table``; the DDIM table of
    T = 1000; the 13 weights (scaled like nn.Linear's init, biases non-zero); ``dL/dm``. Fresh per seed."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g)
    weights = [r(H, d, scale=d ** -0.5), r(L - 1, H, H, scale=H ** -0.5), r(L - 1, H, scale=0.3),
               r(d, H, scale=H ** -0.5), r(d, scale=0.3),
               r(H, d, scale=d ** -0.5), r(H, d, scale=d ** -0.5), r(H, scale=0.3), r(d, H, scale=H ** -0.5),
               r(d, scale=0.3), r(d, d, scale=d ** -0.5), r(d, d, scale=d ** -0.5), r(d, scale=0.3)]
    inputs = [r(B, d), r(B, d), r(B, H), r(steps, H)]
    upstream = r(B, d)
    cast = lambda ts: [t.to(_DEVICE, dtype).contiguous() for t in ts]  # noqa: E731
    ddim = schedule.ddim_coefficients(1000, steps).to(_DEVICE, torch.float32)
    return cast(inputs), ddim, cast(weights), upstream.to(_DEVICE, dtype)


def eager_unroll(x, m, cond, e_table, ddim, w_x, w_hidden, b_hidden, w_out, b_out, w_pm, w_pu, b_p, w_pd, b_pd,
                  w_gm, w_gu, b_g):
    """``reference.translator_pfin_sample``'s loop from ``x``, ``m`` on namespaces holding these tensors."""
    lin = lambda w, b=None: SimpleNamespace(weight=w, bias=b)  # noqa: E731
    den = SimpleNamespace(in_x=lin(w_x), out=lin(w_out, b_out),
                          hidden=[lin(w_hidden[i], b_hidden[i]) for i in range(w_hidden.shape[0])])
    pfin = SimpleNamespace(p_m=lin(w_pm), p_u=lin(w_pu, b_p), down=lin(w_pd, b_pd), g_m=lin(w_gm),
                           g_u=lin(w_gu, b_g))
    for k in range(e_table.shape[0], 0, -1):
        x0_hat, _ = reference.denoise(den, x, e_table[k - 1], cond)
        m = reference.pfin_step(pfin, m, x0_hat, e_table[k - 1])
        x = reference._ddim_update(x, x0_hat, ddim[k - 1])
    return m


def run_unroll(fn, inputs, ddim, weights, upstream, dtype=None):
    """``m`` and the gradients of the 4 inputs and 13 weights for ``<m, upstream>``."""
    args = [t.detach().to(dtype or t.dtype).clone().requires_grad_() for t in inputs + weights]
    m = fn(*args[:4], ddim, *args[4:])
    (m * upstream.to(m.dtype)).sum().backward()
    return [m.detach()] + [t.grad for t in args]


def assert_unroll_entry_matches_sampler(unroll) -> None:
    """``unroll(den, pfin, x_start, m_start, cond, e_table, ddim)`` (a module-level unroll op) from a
    model's own start state = the reference sampler (``reference.translator_pfin_sample`` with
    explicit noise), module parameter gradients included."""
    models = [make_model(seed=2, layers=2, translator_steps=3) for _ in range(2)]
    cfg = models[0].config
    g = torch.Generator().manual_seed(9)
    s, z, xi = (torch.randn(9, cfg.dim, generator=g) for _ in range(3))
    grads = []
    for i, model in enumerate(models):
        model.set_stage(2)
        if i == 0:
            den = model.translator
            ddim, e_table = reference.sampling_tables(den, cfg.diffusion_steps, cfg.translator_steps, cfg.dim,
                                                      s.dtype, s.device)
            m = unroll(den, model.pfin, reference._start(cfg.diffusion_steps, s, xi), z,
                       reference.condition_term(den, s), e_table, ddim)
        else:
            _, m = reference.translator_pfin_sample(model, s, z, xi)
        (m * torch.linspace(-1, 1, cfg.dim)).sum().backward()
        grads.append([m.detach()] + [p.grad for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) == 1 + 9 + 2 + 8  # m, translator (L = 2), PFIN
    for i, (o, r) in enumerate(zip(*grads)):
        assert o.shape == r.shape and rel(o, r) < 1e-5, (i, rel(o, r))


class RecordedLaunches:
    """A stand-in CUDA graph for the CPU: the launches a capture recorded, with their tensors (a
    graph holds their addresses), launched again on replay."""

    def __init__(self, launches):
        self.launches = launches

    def replay(self):
        for launch in self.launches:
            launch.kernel[launch.grid](*launch.args, **launch.meta)


def recording_capture(launch_all, device, pdl, who=""):
    """A stand-in for ``kernels._graphs.capture`` (same signature and result): records the launches
    ``launch_all(pdl)`` makes instead of capturing them."""
    from seda_fast.ops.runtime import kernels
    with kernels().capture_launches() as launches:
        launch_all(pdl)
    return RecordedLaunches(launches), pdl


def infer_phases_placeholders(cfg: sf.SeDAConfig, batch: int, dtype=torch.float32):
    """``(visual, weights, tables)`` for ``kernels.infer_phases`` at ``cfg``'s sizes, uninitialised:
    only for ``capture_launches()`` (grids, tiles, compile checks), where nothing runs."""
    d, H, C, Dv, L = cfg.dim, cfg.hidden, cfg.num_classes, cfg.visual_dim, cfg.layers
    e = lambda *shape: torch.empty(*shape, dtype=dtype)  # noqa: E731
    weights = {"visual_proj.linear.weight": e(d, Dv), "visual_proj.linear.bias": e(d),
               "visual_proj.norm.weight": e(d), "visual_proj.norm.bias": e(d), "pfin.p_m.weight": e(H, d),
               "pfin.p_u.weight": e(H, d), "pfin.p_u.bias": e(H), "pfin.down.weight": e(d, H),
               "pfin.down.bias": e(d), "pfin.g_m.weight": e(d, d), "pfin.g_u.weight": e(d, d),
               "pfin.g_u.bias": e(d), "head.weight": e(C, d), "head.bias": e(C)}
    tables = {}
    for st, steps in (("learner", cfg.learner_steps), ("translator", cfg.translator_steps)):
        weights |= {f"{st}.in_x.weight": e(H, d), f"{st}.in_c.weight": e(H, d), f"{st}.in_c.bias": e(H),
                    f"{st}.out.weight": e(d, H), f"{st}.out.bias": e(d)}
        tables[st] = {"e": torch.empty(steps, H), "ddim": torch.empty(steps, 2), "wh": e(L - 1, H, H), "bh": e(L - 1, H),
                      "wxo": e(H, H), "bxo": e(H), "wcx": e(H, d)}  # wxo, bxo, wcx, ...: the folded steps' weights
    tables["translator"] |= {"wpo": e(H, H), "bpo": e(H), "wgo": e(d, H), "bgo": e(d), "wxi": e(H, d)}
    return e(batch, Dv), weights, tables


# aten ops that copy a value to the host (and so synchronize, and cannot be captured)
HOST_READS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
              "masked_select", "is_nonzero", "equal"}


def standin_capture(model, opt):
    """A stand-in for ``seda_fast.step_graph.cuda_capture`` that runs anywhere: the capture runs the
    step once for its static outputs and puts the parameters, buffers, optimizer state and random
    state back (a real capture executes nothing); a replay runs the step and copies its loss, parts
    and gradients into the static tensors."""
    params = optimized_params(opt)

    def capture(run, generators):
        state = [t.clone() for t in step_state_tensors(model, opt)]
        saved = [g.get_state() for g in generators]
        device = params[0].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            outputs = run()
        for g, st in zip(generators, saved):
            g.set_state(st)
        grads = [p.grad for p in params]
        for t, saved in zip(step_state_tensors(model, opt), state):
            t.copy_(saved)

        def replay():
            loss, parts = run()
            outputs[0].copy_(loss)
            for k, v in parts.items():
                outputs[1][k].copy_(v)
            for p, g in zip(params, grads):
                if g is not None:
                    g.copy_(p.grad)
        return outputs, replay
    return capture


def step_state_tensors(model, opt):
    """What a training step changes in place: parameters, buffers (the centers), optimizer state."""
    tensors = [p.data for p in model.parameters()] + [b for b in model.buffers()]
    return tensors + [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
