"""The CIFAR experiments (PAPER.md §3.1, Tables 3/7/10): model, TF-SAME pooling, init, configurations, runner."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

from dnlib import DivisiveNorm
from dnlib.experiments import records
from dnlib.experiments.cifar import (
    GraphTrainer,
    check_graph,
    estimate_seconds,
    gather,
    load_data,
    main,
    run,
    sweep,
)
from dnlib.experiments.cifar_configs import TABLE3_ROWS, TABLE7, TABLE10, get_config, list_configs
from dnlib.experiments.cifar_report import first_layer_responses, report, results_table, summarize, table10
from dnlib.models import CifarCNN
from dnlib.models.cnn import tf_same_pads, tf_same_pool2d

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
needs_cifar = pytest.mark.skipif(
    not ((MIRROR / "cifar10-jpeg" / "train").is_dir() or (MIRROR / "cifar-10-batches-py").is_dir()),
    reason=f"CIFAR-10 not in DNLIB_DATA={MIRROR}")


# ------------------------------------------------------------------------------------------------ model
def test_model_layers_and_shapes():
    m = CifarCNN(10)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in m.convs] == [
        (3, 32, (5, 5), (2, 2)), (32, 32, (5, 5), (2, 2)), (32, 64, (5, 5), (2, 2))]
    assert [p.kind for p in m.pools] == ["max", "avg", "avg"]
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (1024, 64, 10)
    x = torch.randn(2, 3, 32, 32)
    assert [tuple(m.features(x, k).shape) for k in (1, 2, 3)] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    assert m(x).shape == (2, 10) and CifarCNN(100)(x).shape == (2, 100)
    # conv -> norm -> ReLU -> pool, and the FC layers are linear (no nonlinearity between them)
    assert torch.equal(m.features(x, 1, pre_norm=True), m.convs[0](x))
    assert torch.equal(m.features(x, 2), m.pools[1](torch.relu(m.norms[1](m.convs[1](m.features(x, 1))))))
    assert torch.allclose(m(x), m.fc2(m.fc1(m.features(x).flatten(1))))


def test_model_norm_argument_and_sites():
    m = CifarCNN(10, ["bn", "ln", "dn"], norm_kwargs=dict(window=[None, None, 3], sigma=0.5, eps=0.0),
                 per_layer=dict(alpha=[0.0, 0.01, 0.02]))
    assert [type(n) for n in m.norms] == [DivisiveNorm] * 3
    assert [n.spec.sum_axes for n in m.norms][:2] == [frozenset({"batch", "space"}), frozenset({"channel", "space"})]
    assert dict(m.norms[2].spec.sum_window) == {"space": 3}
    assert [name for name, _ in m.sparse_sites()] == ["norms.1", "norms.2"]
    with pytest.raises(ValueError, match="per-layer"):
        CifarCNN(10, "dn", norm_kwargs=dict(window=[5, 3]))
    weights, others = m.decay_parameters()
    assert len(weights) == 5 and all(w.dim() > 1 for w in weights)
    assert len(weights) + len(others) == len(list(m.parameters()))


def test_a_tuple_valued_norm_kwarg_is_one_value_for_every_layer_and_per_layer_values_are_explicit():
    """norm_kwargs are make_norm's overrides of every layer, a tuple value whole (sn's fields, brn's relax: each
    was split across the three layers, 'fields: ... got 'in''); one value per layer goes in ``per_layer``. A window
    given as three integers (or None) stays one per layer: no one-layer window is a sequence of integers (the
    configurations' DN windows 5, 3, 3)."""
    from dnlib.experiments import analysis_configs
    for fields in (("in", "ln", "bn"), ["in", "ln", "bn"]):
        m = CifarCNN(10, "sn", norm_kwargs={"fields": fields})
        assert [n.fields for n in m.norms] == [("in", "ln", "bn")] * 3
    m = CifarCNN(10, "brn", norm_kwargs={"relax": (10, 400, 250)})
    assert [n.relax for n in m.norms] == [(10, 400, 250)] * 3
    m = CifarCNN(10, "sn", per_layer={"fields": [("in", "ln"), ("ln", "bn"), ("bn",)]})
    assert [n.fields for n in m.norms] == [("in", "ln"), ("ln", "bn"), ("bn",)]
    m = CifarCNN(10, "dn", norm_kwargs={"sigma": 0.5}, per_layer={"alpha": (0.0, 0.01, 0.02), "window": (5, 3, 3)})
    assert [n.alpha for n in m.norms] == [0.0, 0.01, 0.02] and [n.spec.sigma for n in m.norms] == [0.5] * 3
    for kw in ({"window": (5, 3, 3)}, {"window": [5, 3, 3]}, {"sum_window": (5, 3, 3), "sup_window": (5, 3, 3)}):
        m = CifarCNN(10, "dn", norm_kwargs=kw)
        assert [dict(n.spec.sum_window) for n in m.norms] == [{"space": w} for w in (5, 3, 3)], kw
    # the named configurations' DN layers: windows 5, 3, 3
    for cfg in (get_config("dn-star"), analysis_configs.get_config("batch-dn-star-b32", "smoke")):
        m = cfg.build_model()
        assert [dict(n.spec.sum_window) for n in m.norms] == [{"space": w} for w in (5, 3, 3)]
    with pytest.raises(ValueError, match=r"per_layer\['alpha'\]: needs 3 values \(one per conv layer\)"):
        CifarCNN(10, "dn", per_layer={"alpha": (0.0, 0.01)})
    with pytest.raises(ValueError, match=r"per_layer\['alpha'\]: needs 3 values"):
        CifarCNN(10, "dn", per_layer={"alpha": 0.01})
    with pytest.raises(ValueError, match=r"per_layer\['sigma'\]: also given in norm_kwargs"):
        CifarCNN(10, "dn", norm_kwargs={"sigma": 0.5}, per_layer={"sigma": (0.5, 0.5, 0.5)})
    with pytest.raises(ValueError, match="per_layer: expected a mapping"):
        CifarCNN(10, "dn", per_layer=[("alpha", (0, 0, 0))])
    with pytest.raises(ValueError, match=r"alpha: .* for one value per conv layer pass per_layer=\{'alpha': ...\}"):
        CifarCNN(10, "dn", norm_kwargs={"alpha": [0.0, 0.01, 0.02]})


def _naive_tf_same_pool(x, kind, k, s):
    """Loop reference: TF SAME windows over real inputs only (max of them / their mean)."""
    n, c, h, w = x.shape
    (t, _), (left, _) = tf_same_pads(h, k, s), tf_same_pads(w, k, s)
    ho, wo = -(-h // s), -(-w // s)
    out = torch.empty(n, c, ho, wo, dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * s - t, j * s - left
            win = x[:, :, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w)]
            out[:, :, i, j] = win.amax((2, 3)) if kind == "max" else win.mean((2, 3))
    return out


@pytest.mark.parametrize("size,k,s", [(32, 3, 2), (16, 3, 2), (8, 3, 2), (33, 3, 2), (7, 3, 2), (8, 4, 2), (5, 3, 1)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_tf_same_pooling_matches_naive_reference(size, k, s, kind):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    got = tf_same_pool2d(x, kind, k, s)
    assert got.shape[-2:] == (-(-size // s),) * 2
    torch.testing.assert_close(got, _naive_tf_same_pool(x, kind, k, s))
    torch.testing.assert_close(tf_same_pool2d(x.to(memory_format=torch.channels_last), kind, k, s), got)


def test_tf_same_pads_are_asymmetric_as_tensorflow():
    assert tf_same_pads(32, 3, 2) == (0, 1) and tf_same_pads(16, 3, 2) == (0, 1) and tf_same_pads(8, 3, 2) == (0, 1)
    assert tf_same_pads(33, 3, 2) == (1, 1) and tf_same_pads(8, 4, 2) == (1, 1)
    x = torch.ones(1, 1, 32, 32)
    x[..., -1, -1] = 4.0  # the last window holds 2x2 real inputs: TF divides by 4, not 9
    assert tf_same_pool2d(x, "avg")[0, 0, -1, -1].item() == pytest.approx((3 + 4) / 4)


def test_init_scales():
    torch.manual_seed(0)
    m = CifarCNN(10, widths=(32, 32, 64))
    layers = list(m.convs) + [m.fc1, m.fc2]
    trunc = 0.8796  # std of a standard normal truncated at +-2
    for layer, std in zip(layers, (1e-4, 1e-2, 1e-2, 1e-1, 1e-1)):
        w = layer.weight.detach()
        assert w.abs().max() <= 2 * std
        assert w.std().item() == pytest.approx(trunc * std, rel=0.15)
        assert torch.count_nonzero(layer.bias) == 0


# ---------------------------------------------------------------------------------------------- configs
# PAPER.md §2.3, copied independently of dnlib.experiments.cifar_configs: name -> (norm, affine, sigma10, alpha10,
# sigma100, alpha100)
SEC23 = {
    "base": ("none", False, None, 0, None, 0), "base-wd-drop": ("none", False, None, 0, None, 0),
    "base-l1": ("none", False, None, 0.01, None, 0.01),
    "bn": ("bn", True, 0.01, 0, 0.01, 0), "bn-l1": ("bn", True, 0.01, 0.005, 0.01, 0.01),
    "bn-s": ("bn", True, 1.0, 0, 0.25, 0), "bn-star": ("bn", True, 1.0, 0.005, 0.25, 0.01),
    "ln": ("ln", True, 0.01, 0, 0.01, 0), "ln-l1": ("ln", True, 0.01, 0.005, 0.01, 0.005),
    "ln-s": ("ln", False, 0.5, 0, 0.5, 0), "ln-star": ("ln", False, 0.5, 0.005, 0.5, 0.005),
    "dn": ("dn", False, 0.5, 0, 0.5, 0), "dn-star": ("dn", False, 0.5, 0.005, 0.5, 0.001),
}
AXES = {"none": frozenset(), "bn": frozenset({"batch", "space"}), "ln": frozenset({"channel", "space"}),
        "dn": frozenset({"channel", "space"})}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("name", list(SEC23))
def test_configs_match_section_2_3(name, dataset):
    norm, affine, s10, a10, s100, a100 = SEC23[name]
    sigma, alpha = (s10, a10) if dataset == "cifar10" else (s100, a100)
    cfg = get_config(name, dataset)
    m = cfg.build_model()
    assert m.fc2.out_features == (10 if dataset == "cifar10" else 100)
    for _k, (n, window) in enumerate(zip(m.norms, (5, 3, 3))):
        assert n.spec.sum_axes == n.spec.sup_axes == AXES[norm]
        assert n.alpha == alpha and n.affine == affine
        if sigma is not None:
            assert n.spec.sigma == sigma and n.spec.eps == 0.0  # eps = sigma^2, nothing else
        if norm == "dn":
            assert dict(n.spec.sum_window) == dict(n.spec.sup_window) == {"space": window}
            assert n.spec.border == "reference"
        else:
            assert not n.spec.windowed
        assert n.track_running_stats == (norm == "bn") and (n.momentum == 0.1 or norm != "bn")
    baseline = name.startswith("base")
    assert (cfg.milestones, cfg.steps) == (((5000, 30000), 50000) if baseline else ((30000, 50000), 80000))
    assert (cfg.lr, cfg.momentum, cfg.batch_size, cfg.gamma) == (1e-3, 0.9, 100, 0.1)
    assert (cfg.weight_decay, m.dropout) == ((0.1, 0.5) if name == "base-wd-drop" else (0.0, 0.0))
    assert cfg.paper_accuracy == TABLE7[name][0 if dataset == "cifar10" else 1]


def test_paper_tables():
    assert list_configs() == list(SEC23) and len(TABLE7) == 13
    assert TABLE7["dn-star"] == (0.8122, 0.5066) and TABLE7["base-wd-drop"] == (0.7795, 0.4179)
    assert set(TABLE3_ROWS) <= set(TABLE7) and len(TABLE3_ROWS) == 7
    assert TABLE10["ln"] == (0.7199, 1.7784) and len(TABLE10) == 9
    smoke = get_config("base").scaled(500)
    assert (smoke.steps, smoke.milestones) == (500, (50, 300))
    assert get_config("dn").scaled(800).milestones == (300, 500)
    with pytest.raises(ValueError, match="unknown CIFAR configuration"):
        get_config("bn-star-typo")


def test_estimate_seconds():
    ips = {n: 100_000.0 for n in list_configs()}
    # 3 baseline rows x 50K + 10 rows x 80K steps of 100 images
    assert estimate_seconds(ips) == pytest.approx((3 * 50_000 + 10 * 80_000) * 100 / 100_000)
    assert estimate_seconds(ips, speedup=2.0) == pytest.approx(estimate_seconds(ips) / 2)


def _write_run(d: Path, name: str, steps: int, seconds: float, impl: str):
    cfg = get_config(name).replace(impl=impl)
    d.mkdir(parents=True)
    rec = records.make_record("cifar", {**cfg.as_dict(), "setup": {"data": "CIFAR-10", "mode": "cuda-graph"}}, 0,
                              steps_planned=cfg.steps, steps_done=steps, stopped="completed",
                              headline={"final_acc": 0.5, "images_per_s": steps * 100 / seconds},
                              paper={"final_acc": cfg.paper_accuracy})
    records.write_record(d, rec)


def test_report_uses_the_faster_impl_and_the_measured_concurrency_gain(tmp_path):
    """report(): a GPU trip folder written here (bench of both impls, a 2-run sweep) gives the single-run
    figures, the concurrency gain against the impl each run used, and Table 7 at the faster impl per config."""
    names = list_configs()
    auto = {n: 100_000.0 for n in names}
    comp = {"dn-star": 150_000.0, "bn-star": 50_000.0}
    (tmp_path / "bench.json").write_text(json.dumps(
        [{"config": n, "images_per_s": v, "device": "NVIDIA H100"} for n, v in auto.items()]))
    (tmp_path / "bench_compile.json").write_text(json.dumps(
        [{"config": n, "images_per_s": v, "device": "NVIDIA H100"} for n, v in comp.items()]))
    _write_run(tmp_path / "sweep" / "cifar10-base-s0", "base", 50_000, 60.0, "compile")
    _write_run(tmp_path / "sweep" / "cifar10-dn-star-s0", "dn-star", 80_000, 70.0, "compile")
    # sequentially: base 50K*100/100K = 50 s (no compiled figure: its normalizer is the identity, so the
    # auto figure counts), DN* 80K*100/150K = 53.3 s of training; concurrently their training took 60 and 70 s,
    # inside a sweep of 80 s wall (start-up, decode, capture and evaluations besides)
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"wall_seconds": 80.0, "jobs": 2}))
    rep = report(tmp_path)
    assert rep["device"] == "NVIDIA H100"
    assert rep["best_images_per_s"]["dn-star"] == 150_000.0 and rep["best_images_per_s"]["bn-star"] == 100_000.0
    assert [r["impl"] for r in rep["runs"]] == ["compile", "compile"]
    # training against training (before: the sequential training seconds over the sweep's wall time, 80 s, which
    # holds what the numerator leaves out); the wall-time ratio is kept as the lower bound it is
    sequential = 50.0 + 80_000 * 100 / 150_000
    gain = sequential / 70.0
    con = rep["concurrent"]
    assert con["gain_vs_sequential"] == pytest.approx(gain)
    assert con["sequential_training_seconds"] == pytest.approx(sequential)
    assert con["concurrent_training_seconds"] == pytest.approx(70.0)
    assert con["gain_vs_sequential_wall_bound"] == pytest.approx(sequential / 80.0)
    assert "training seconds only, on both sides" in con["gain_compares"]
    # the pick between the two bench files says they were not measured interleaved, and that no load was recorded
    files = rep["bench_files"]
    assert files["picked"]["dn-star"] == {"file": "bench_compile.json", "compile_over_auto": pytest.approx(1.5)}
    assert files["picked"]["bn-star"]["file"] == "bench.json" and set(files["picked"]) == {"dn-star", "bn-star"}
    assert files["bench.json"]["rows"] == len(names) and files["bench_compile.json"]["load_average"] is None
    assert "file_modified" not in files["bench.json"]       # a file's time is its copy's (a clone's), not the bench's
    assert "not interleaved" in files["note"] and "no load average recorded" in files["note"]
    best = {**auto, "dn-star": 150_000.0}
    assert rep["table7_estimate_seconds"]["sequential"] == pytest.approx(estimate_seconds(best))
    assert rep["table7_estimate_seconds"]["concurrent_2"] == pytest.approx(estimate_seconds(best) / gain)


# ---------------------------------------------------------------------------------------- runs (real data)
@pytest.fixture(scope="module")
def data():
    return load_data("cifar10", subset=(2000, 1000), device="cpu", download=False)


@pytest.mark.slow
@needs_cifar
def test_data_is_resident_nhwc_and_channels_last(data):
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (2000, 32, 32, 3)
    assert data.x_eval.shape == (1000, 32, 32, 3) and data.eval_split == "test"
    x = data.images(torch.arange(5))
    assert x.shape == (5, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert abs(x.mean().item()) < 20 and x.abs().max() > 100  # raw 0-255 minus the mean image, no /255
    assert "CIFAR-10" in data.description


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize("name", ["bn-star", "base-wd-drop"])
def test_graph_step_equals_eager_step(data, name):
    r = check_graph(name, data, steps=3, batch_size=20)
    assert r["ok"], r
    assert r["param_moved"] > 0 and r["param_diff"] <= 1e-2 * r["param_moved"]


@pytest.mark.slow
@needs_cifar
def test_graph_check_catches_a_wrong_learning_rate(data, monkeypatch):
    original = GraphTrainer._sync_lr

    def wrong(self):
        original(self)
        for t in self._lr_tensors:
            t.fill_(t.item() * 1.5)
    monkeypatch.setattr(GraphTrainer, "_sync_lr", wrong)
    assert not check_graph("dn", data, steps=3, batch_size=20)["ok"]


@pytest.mark.slow
@needs_cifar
def test_resume_equals_uninterrupted(data, tmp_path):
    kw = dict(steps=6, eval_every=2, data=data, batch_size=20)
    for name, mode in (("bn-star", "graph"), ("base-wd-drop", "eager")):
        full = run(name, mode=mode, resume=tmp_path / f"{name}-a", **kw)
        part = run(name, mode=mode, resume=tmp_path / f"{name}-b", stop_after=4, **kw)
        assert part.record["steps_done"] == 4 and part.stopped == "stop_after at step 4"
        resumed = run(name, mode=mode, resume=tmp_path / f"{name}-b", **kw)
        assert resumed.record["steps_done"] == 6 and resumed.stopped == "completed"
        strip = lambda h: [{k: v for k, v in r.items() if k != "time"} for r in h]  # noqa: E731
        assert strip(resumed.history) == strip(full.history)
        a, b = full.model.state_dict(), resumed.model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        saved = records.read_record(tmp_path / f"{name}-b")
        assert saved["headline"]["final_acc"] == full.headline["final_acc"] is not None
        assert saved["config"]["setup"]["mode"] == ("graph-step (eager)" if mode == "graph" else "eager")


# The smoke run: 300 steps of 25 images (7,500 images, under 4 passes over the 2,000-image subset) at 4x the
# paper's learning rate; measured here (torch 2.13 CPU, seed 0): BN* 0.352, DN* 0.399 on 1,000 test images.
SMOKE_STEPS, SMOKE_BATCH, SMOKE_LR, SMOKE_MIN_ACC = 300, 25, 4e-3, 0.30


@needs_cifar
@pytest.mark.slow
def test_smoke_training_beats_chance(data):
    """A short run on a stratified 2,000-image subset: far above the 10% of chance."""
    results = [run(name, steps=SMOKE_STEPS, data=data, eval_every=SMOKE_STEPS, batch_size=SMOKE_BATCH, lr=SMOKE_LR)
               for name in ("bn-star", "dn-star")]
    for r in results:
        assert r.headline["final_acc"] > SMOKE_MIN_ACC, r
        assert r.record["config"]["setup"]["mode"] == "eager" and r.record["device"]["type"] == "cpu"
    table = results_table(results)
    assert "DN*" in table and "0.8122" in table and "CIFAR-10" in table
    assert [row["name"] for row in summarize(results)] == ["bn-star", "dn-star"]
    t10 = table10(results, data, n_images=50)
    assert t10.count("\n") == 3 and "0.2031" in t10
    assert first_layer_responses(results[0].model, data, 10).shape == (10, 32, 32, 32)


@pytest.mark.slow
@needs_cifar
def test_a_run_on_given_data_records_the_subset_it_was_loaded_with(data, tmp_path):
    """Notebook 03 passes ``data=`` (loaded with a subset) and no ``subset``: the record said ``subset: null`` and
    its table "all the data". The data carries its subset; a different ``subset`` beside it is refused by name."""
    from dnlib.experiments.pooling import defining, run_as
    r = run("base", steps=1, data=data, eval_every=1, batch_size=20, out=tmp_path / "a")
    assert r.record["config"]["setup"]["subset"] == [2000, 1000]
    assert "subset 2000/1000" in run_as(defining(r.record))
    with pytest.raises(ValueError, match=r"subset=\(300, 100\).*loaded with subset=\(2000, 1000\)"):
        run("base", steps=1, data=data, subset=(300, 100), eval_every=1, batch_size=20, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@needs_cifar
def test_sweep_gathers_one_table(tmp_path):
    args = ["--steps", "4", "--subset", "300,100", "--eval-every", "2", "--device", "cpu", "--batch-size", "20"]
    rows = sweep(["base", "dn-star"], [0], out=tmp_path, jobs=2, verbose=False, status_every=1e9, run_args=args)
    assert [(r["name"], r["steps_done"], r["stopped"]) for r in rows] == [("base", 4, "completed"),
                                                                         ("dn-star", 4, "completed")]
    assert [Path(r["run"]).name for r in rows] == ["cifar10-base-s0", "cifar10-dn-star-s0"]
    assert json.loads((tmp_path / "runs.json").read_text()) == json.loads(json.dumps(rows))
    assert (tmp_path / "sweep.json").exists() and "dn-star" in (tmp_path / "runs.md").read_text()
    assert not (tmp_path / "table.md").exists()       # (report's file: a report then a rerun replaced each other's)
    assert gather(tmp_path) == rows
    assert all(math.isfinite(r["final_acc"]) and r["images_per_s"] > 0 for r in rows)
    assert "DN*" in results_table([r["run"] for r in rows])
    # a rerun keeps the finished runs (nothing retrained: the records are untouched)
    before = [(Path(r["run"]) / "record.json").stat().st_mtime_ns for r in rows]
    again = sweep(["base", "dn-star"], [0], out=tmp_path, jobs=2, verbose=False, run_args=args)
    assert again == rows and [(Path(r["run"]) / "record.json").stat().st_mtime_ns for r in rows] == before
    assert json.loads((tmp_path / "sweep.json").read_text())["skipped"] == ["cifar10-base-s0", "cifar10-dn-star-s0"]


@pytest.mark.slow
@needs_cifar
def test_cli_bench_and_check(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "base", "--steps", "2", "--warmup", "1", "--subset", "300,100", "--device", "cpu",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())[0]["images_per_s"] > 0
    assert main(["check-graph", "dn-star", "--steps", "1", "--subset", "300,100", "--device", "cpu"]) == 0
