"""The accuracy study end to end on tiny synthetic features (no downloads, no encoders): sampling,
the budget rule, the JSON / table / plot it writes, and that the committed reference copy is only
written with --update-reference."""
import json

import pytest
import torch

pytest.importorskip("matplotlib", reason="the study's plot needs matplotlib (the 'bench' extra)")

from seda_fast.apps import demo, study  # noqa: E402
from seda_fast import outputs

TINY_CONFIG = dict(dim=8, hidden=16, layers=2, diffusion_steps=50, learner_steps=2, translator_steps=2,
                   center_momentum=0.9, center_temperature=1.0, lambda_sc=1.0, lambda_aux=1.0, lambda_cls=1.0,
                   lambda_al=1.0)
TINY_BUDGET = dict(batch_size=16, epochs=1, min_steps=6, max_steps=9)
FAST_OPTIMIZER = dict(lr=0.1, weight_decay=1e-4)  # learns the blobs in a few steps
C, DV, DT = 3, 12, 8


def _blobs(n_per_class, g, views=1):
    """Separable Gaussian classes: ``v [n * C * views, DV]``, labels, and each row's unit."""
    centers = torch.randn(C, DV, generator=g) * 3
    labels = torch.arange(C).repeat_interleave(n_per_class)
    v = centers[labels] + torch.randn(labels.numel(), DV, generator=g)
    units = torch.arange(labels.numel())
    if views > 1:
        v = v.repeat_interleave(views, 0) + 0.3 * torch.randn(labels.numel() * views, DV, generator=g)
        labels, units = labels.repeat_interleave(views), units.repeat_interleave(views)
    return v, labels, units, centers


def _datasets():
    g = torch.Generator().manual_seed(0)
    v, y, _, centers = _blobs(12, g)
    v_te = centers[torch.arange(C).repeat(10)] + torch.randn(30, DV, generator=g)
    y_te = torch.arange(C).repeat(10)
    per_class = study.StudyData(name="fmnist", title="blobs", train=(v, y), test=(v_te, y_te), num_classes=C,
                                class_text=torch.randn(C, DT, generator=g), sizes=(2, None))
    ev, ey, units, ecenters = _blobs(5, g, views=3)
    names = torch.randn(units.max() + 1, DT, generator=g)
    et = ecenters[torch.arange(C).repeat(4)] + torch.randn(12, DV, generator=g)
    views = study.StudyData(
        name="emoji-group", title="blob views", train=(ev, ey), test=(et, torch.arange(C).repeat(4)),
        num_classes=C, class_text=torch.randn(C, DT, generator=g), sizes=(1, 3), size_kind="views",
        sample_text=names[units], unit=units,
        random_sample=lambda s: torch.randn(units.max() + 1, DT, generator=torch.Generator().manual_seed(s))[units])
    return [per_class, views]


def test_subsample_is_seeded_nested_and_per_group():
    per_class, views = _datasets()
    a = study.subsample(per_class, 2, seed=0)
    assert torch.bincount(per_class.train[1][a], minlength=C).tolist() == [2] * C
    assert torch.equal(a, study.subsample(per_class, 2, seed=0))
    assert not torch.equal(a, study.subsample(per_class, 2, seed=1))
    five = study.subsample(per_class, 5, seed=0)
    assert set(a.tolist()) <= set(five.tolist())  # nested across sizes
    assert study.subsample(per_class, None, seed=3).numel() == per_class.train[1].numel()
    assert study.subsample(per_class, 1000, seed=0).numel() == per_class.train[1].numel()
    one = study.subsample(views, 1, seed=0)
    assert torch.bincount(views.unit[one]).tolist() == [1] * (int(views.unit.max()) + 1)
    assert set(one.tolist()) <= set(study.subsample(views, 2, seed=0).tolist())


def test_budget_rule():
    rule = dict(batch_size=256, epochs=10, min_steps=300, max_steps=1000)
    assert study.stage_budget(50, rule) == {"batch_size": 50, "epochs": 300, "steps": 300}  # full batch, min steps
    assert study.stage_budget(5000, rule) == {"batch_size": 256, "epochs": 15, "steps": 300}  # 20 steps an epoch
    assert study.stage_budget(60000, rule) == {"batch_size": 256, "epochs": 4, "steps": 940}  # capped, whole epochs
    assert study.stage_budget(30000, rule)["epochs"] == 8  # 118 steps an epoch: 944 <= max_steps


def test_study_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(outputs, "REFERENCE_DIR", tmp_path / "benchmarks" / "results")  # not the checkout's
    out = tmp_path / "out"
    lines = []
    results = study.run(_datasets(), mode="quick", seeds=2, out=out, budget=TINY_BUDGET, config=TINY_CONFIG,
                        optimizer=FAST_OPTIMIZER, log=lines.append)
    assert not outputs.REFERENCE_DIR.exists()  # no --update-reference: the reference is untouched
    on_disk = json.loads((out / "study.json").read_text())
    assert on_disk["complete"] and on_disk["seeds"] == [0, 1] and on_disk["budget"]["rule"] == study.BUDGET_RULE
    assert on_disk["datasets"].keys() == {"fmnist", "emoji-group"}
    fm, em = on_disk["datasets"]["fmnist"], on_disk["datasets"]["emoji-group"]
    assert study.RANDOM_SAMPLE not in fm["methods"] and em["methods"] == list(study.METHODS)
    assert [s["rows"] for s in fm["sizes"]] == [2 * C, 12 * C] and [s["label"] for s in fm["sizes"]][1] == "all"
    assert [s["rows"] for s in em["sizes"]] == [15, 45] and em["sizes"][0]["per_class"] == 5.0
    for ds in (fm, em):
        for s in ds["sizes"]:
            assert s["budget"]["steps"] >= TINY_BUDGET["min_steps"]
            assert set(s["results"]) == set(ds["methods"])
            for m, r in s["results"].items():
                accs = [p["accuracy"] for p in r["per_seed"]]
                assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
                assert r["accuracy_mean"] == pytest.approx(sum(accs) / 2)
            diff = s["paired_differences"]["SeDA - linear probe"]["mean"]
            seda, probe = s["results"]["SeDA"]["accuracy_mean"], s["results"]["linear probe"]["accuracy_mean"]
            assert diff == pytest.approx(seda - probe)
            v = s["verdict"]["SeDA vs linear probe"]
            assert v["beats"] == (v["difference"] > v["threshold"])
    assert "SeDA vs SeDA random per-sample vectors" in em["sizes"][0]["verdict"]
    # The separable blobs are learnt: the probe on all rows is well above chance (1/3).
    assert fm["sizes"][-1]["results"]["linear probe"]["accuracy_mean"] > 0.8
    table = (out / "study.md").read_text()
    assert "| SeDA without PFIN |" in table and "2/class" in table and "3 views (all)" in table
    png = (out / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    assert results["datasets"]["fmnist"]["sizes"][0]["results"] == fm["sizes"][0]["results"]
    assert any("seed 1" in line for line in lines)


def test_cli_writes_reference_only_when_asked_and_merges(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(outputs, "REFERENCE_DIR", tmp_path / "benchmarks" / "results")  # not the checkout's
    monkeypatch.setattr(study, "load_datasets", lambda mode, names, cache=None, progress=True, fmnist_pool=None:
                        [d for d in _datasets() if d.name in names])
    monkeypatch.setitem(study.MODES, "quick", {**study.MODES["quick"], "budget": TINY_BUDGET})
    monkeypatch.setattr(demo, "SEDA_CONFIG", TINY_CONFIG)
    threads = torch.get_num_threads()
    base = ["--quick", "--seeds", "1", "--threads", "1"]
    try:
        for part, args in (("a", ["fmnist", "--sizes", "all"]), ("b", ["emoji-group", "--sizes", "1"]),
                           ("a2", ["fmnist", "--sizes", "2"])):
            assert study.main(base + ["--datasets", *args, "--out", str(tmp_path / part)]) == 0
        assert (tmp_path / "a" / "study.json").is_file() and not (tmp_path / "benchmarks").exists()
        assert study.main(["--merge", *(str(tmp_path / p) for p in ("b", "a", "a2")), "--out", str(tmp_path / "c"),
                           "--update-reference"]) == 0
    finally:
        torch.set_num_threads(threads)
    ref = outputs.REFERENCE_DIR
    assert sorted(p.name for p in ref.iterdir()) == ["study_quick.json", "study_quick.md", "study_quick.png"]
    merged = json.loads((ref / "study_quick.json").read_text())
    assert merged["mode"] == "quick" and list(merged["datasets"]) == ["fmnist", "emoji-group"]
    assert [p["datasets"] for p in merged["parts"]] == [["emoji-group"], ["fmnist"], ["fmnist"]]
    assert [s["label"] for s in merged["datasets"]["fmnist"]["sizes"]] == ["2/class", "all"]  # sorted by size
    assert [s["label"] for s in merged["datasets"]["emoji-group"]["sizes"]] == ["1 view"]
    # The quick mode's other sizes were not run: listed, and the result is not complete.
    assert not merged["complete"] and "fmnist 5" in merged["missing"] and "emoji-group 1" not in merged["missing"]
    assert "Not measured: fmnist 5" in (ref / "study_quick.md").read_text()
    assert merged == json.loads((tmp_path / "c" / "study.json").read_text())
    with pytest.raises(ValueError, match="repeats fmnist sizes"):
        study.merge([tmp_path / "a", tmp_path / "a"], out=tmp_path / "d")
    with pytest.raises(SystemExit):
        study.main(["--sizes", "0"])
    # the command's denormal flushing ends with it, even on an error (it is process-global)
    assert torch.tensor([1e-40]).item() != 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="seeds"):
        study.run([], seeds=0)
    with pytest.raises(ValueError, match="mode"):
        study.run([], mode="huge")


def test_merge_names_the_pool_of_each_size():
    """Sizes of one dataset drawn from different training pools keep that visible after a merge."""
    entry = {"title": "Fashion-MNIST (10000 train pool / 10000 test)", "test": 10000, "train_pool": 10000,
             "sizes": [{"label": "5/class", "train_pool": 10000}, {"label": "500/class", "train_pool": 10000},
                       {"label": "all", "train_pool": 60000}]}
    study._note_pools(entry)
    assert entry["train_pool"] == [10000, 60000]
    assert entry["title"] == ("Fashion-MNIST (5/class, 500/class from the first 10000 train images; "
                              "all from the first 60000 train images / 10000 test)")
    same = {"title": "T (9 train pool / 3 test)", "test": 3, "train_pool": 9, "sizes": [{"label": "1", "train_pool": 9}]}
    study._note_pools(same)
    assert same["title"] == "T (9 train pool / 3 test)" and same["train_pool"] == 9
