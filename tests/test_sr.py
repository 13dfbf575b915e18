"""Super-resolution (PAPER.md §3.4, Tables 5/6): SRCNN model, configs, patch sampling, evaluation, entry points.

Uses the real SR sets under ``$DNLIB_DATA`` (skipped when they are absent).
"""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dnlib.experiments.sr_configs import PAPER_TABLE5, PAPER_TABLE6, SR_CONFIGS, get_config, paper_numbers
from dnlib.models.srcnn import SRCNN
from dnlib.norms.norm import DivisiveNorm
from dnlib.norms.sparse import sparse_penalty


def _have_sr():
    try:
        from dnlib.data import load_sr
        load_sr("Set5")
        return True
    except Exception:  # noqa: BLE001
        return False


needs_data = pytest.mark.skipif(not _have_sr(), reason="SR data sets not found under the data root")


# ----------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("norm", ["none", "bn", "dn*", "dn*-code", "dn-ms"])
def test_valid_convolutions_shrink_by_8_per_side(norm):
    net = get_config("paper").build_model(norm)
    assert net.shave == 8
    assert net(torch.rand(2, 1, 33, 33)).shape == (2, 1, 17, 17)
    net.eval()
    assert net(torch.rand(1, 1, 50, 41)).shape == (1, 1, 34, 25)


def test_architecture_and_paper_init():
    torch.manual_seed(0)
    net = SRCNN()
    shapes = [tuple(c.weight.shape) for c in (net.conv1, net.conv2, net.conv3)]
    assert shapes == [(64, 1, 9, 9), (32, 64, 5, 5), (1, 32, 5, 5)]
    for c in (net.conv1, net.conv2, net.conv3):
        assert c.padding == (0, 0)
        assert torch.all(c.bias == 0)
        assert c.weight.abs().max() <= 2e-3 + 1e-9           # truncated at 2 std
    assert abs(net.conv2.weight.std().item() - 1e-3 * 0.88) < 1e-4  # std of a +-2 sigma truncated normal
    assert isinstance(net.norm1, nn.Identity) and isinstance(net.norm2, nn.Identity)
    he = SRCNN(init="he")
    assert abs(he.conv2.weight.std().item() - math.sqrt(2 / 1600)) < 3e-3


def test_dn_star_sites_follow_the_paper_and_the_code_option_follows_the_code():
    net = get_config("paper").build_model("dn*")
    for m in (net.norm1, net.norm2):
        assert isinstance(m, DivisiveNorm)
        s = m.spec
        assert dict(s.sum_window) == {"space": 5} and dict(s.sup_window) == {"space": 7}
        assert s.sum_axes == s.sup_axes == {"channel", "space"}
        assert s.sigma == 1.0 and s.border == "valid" and m.alpha == 0.1 and not m.affine
    code = get_config("paper").build_model("dn-star-code")
    assert code.norm1.spec.border == "reference" and code.norm1.alpha == 0.0
    x = torch.rand(4, 1, 33, 33)
    net.train()
    net(x)
    assert sparse_penalty(net).item() > 0          # the L1 term is applied (unlike the authors' code)
    code(x)
    assert sparse_penalty(code).item() == 0
    bn = get_config("paper").build_model("bn").norm1
    assert isinstance(bn, DivisiveNorm) and bn.track_running_stats and bn.affine
    with pytest.raises(ValueError, match="norm: unknown SR normalizer 'no-such-norm'"):
        get_config("paper").build_model("no-such-norm")
    with pytest.raises(ValueError, match=r"norm: unknown normalizer 'dn\*'.*dnlib.experiments.sr_configs"):
        SRCNN("dn*")                               # the model takes presets; the SR rows are configs


# --------------------------------------------------------------------------------------------- configs
def test_configs_name_what_they_are():
    paper = get_config("paper")
    assert paper.kind == "reference"
    assert (paper.optimizer, paper.lr, paper.momentum, paper.batch_size) == ("sgd", 1e-4, 0.9, 100)
    assert paper.per_image and paper.init == "paper" and paper.channels == (64, 32) and paper.milestones == ()
    fast = get_config("fast")
    assert fast.kind == "fast" and fast.optimizer == "adam" and fast.batch_size == 128
    assert fast.milestone_steps(1000) == (700, 900)
    assert get_config("smoke").kind == "smoke"
    assert get_config("fast", scale=4, train_set="291").scale == 4
    for cfg in SR_CONFIGS.values():
        assert cfg.description
    with pytest.raises(ValueError):
        get_config("nope")
    with pytest.raises(ValueError):
        get_config("fast", train_set="ImageNet")


def test_paper_numbers():
    assert paper_numbers("Set14", 3)["DN*"] == (29.34, 0.8219)
    assert paper_numbers("BSD200", 4)["BN"] == (21.53, 0.6741)
    assert paper_numbers("Set5", 3) == {}
    assert set(PAPER_TABLE5) == set(PAPER_TABLE6) == {"Bicubic", "A+", "SRCNN", "BN", "DN*"}


# ----------------------------------------------------------------------------------------------- data
def test_patch_sampler_targets_are_the_centre_and_resume_exactly():
    from dnlib.data import SRCNNPatches
    PatchSampler = SRCNNPatches.from_pairs
    # every pixel value is unique: image k holds k + (row * W + col) / 1e4
    inputs = [(k + np.arange(h * w).reshape(h, w) / 1e4).astype(np.float32) for k, (h, w) in
              enumerate([(40, 50), (60, 35)])]
    labels = [a + 1.0 for a in inputs]                     # label = input + 1 everywhere
    s = PatchSampler(inputs, labels, 8, per_image=True, seed=3)
    x, y = next(s)
    assert x.shape == (8, 1, 33, 33) and y.shape == (8, 1, 17, 17)
    torch.testing.assert_close(y, x[:, :, 8:-8, 8:-8] + 1.0)
    for p in x[:, 0].double().numpy():                     # each patch is a 33 x 33 window of its image
        k = int(p[0, 0])
        idx = int(round((p[0, 0] - k) * 1e4))
        r, c = divmod(idx, inputs[k].shape[1])
        np.testing.assert_allclose(p, inputs[k][r:r + 33, c:c + 33], atol=1e-6)
    assert len({int(v) for v in x[:, 0, 0, 0]}) == 1       # per_image: one image per batch
    small = PatchSampler(inputs, labels, 8, seed=3, block=2)           # resume across block boundaries
    for _ in range(2):
        state = small.state_dict()
        a, b = next(small), next(small)
        small.load_state_dict(state)
        torch.testing.assert_close((a, b), (next(small), next(small)))
    x, _ = next(PatchSampler(inputs, labels, 64, per_image=False, seed=0))
    assert {int(v) for v in x[:, 0, 0, 0]} == {0, 1}       # mixed: patches from both images


@needs_data
def test_training_pairs_are_cached_srcnn_pairs():
    from dnlib.experiments.sr import training_pairs
    inputs, labels = training_pairs("T91", 3)
    assert len(inputs) == len(labels) == 91
    assert all(a.shape == b.shape and a.shape[0] % 3 == 0 and a.shape[1] % 3 == 0 for a, b in zip(inputs, labels))
    assert training_pairs("T91", 3)[0] is inputs


# ----------------------------------------------------------------------------------------- evaluation
class _Oracle(nn.Module):
    """Returns the HR luma / 255 (+ offset grey levels), shaved by 8: the ideal SRCNN output."""

    def __init__(self, items, offset=0.0):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.shave = 8
        self.hr = {it["up"].shape: it["hr"] for it in items}
        self.offset = offset

    def forward(self, x):
        hr = torch.as_tensor(self.hr[tuple(x.shape[-2:])], dtype=torch.float64)
        return ((hr[8:-8, 8:-8] + self.offset) / 255.0)[None, None].float() + 0 * self.w


@needs_data
def test_evaluation_pipeline_psnr_identical_is_inf_and_offset_is_closed_form():
    from dnlib.experiments.sr import evaluate_sr, test_pairs
    from dnlib.training.metrics import psnr
    items = test_pairs("Set5", 3)
    assert psnr(items[0]["hr"], items[0]["hr"], border=8) == math.inf
    assert evaluate_sr(_Oracle(items), "Set5", 3)["psnr"] > 120   # only float32 rounding of the output is left
    r = evaluate_sr(_Oracle(items, offset=2.0), "Set5", 3)
    # a constant error of 2 grey levels (the HR Y lies in [16, 235], so clipping never acts)
    assert r["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 4), abs=1e-3)
    assert r["shift"] == pytest.approx(2.0, abs=1e-3)
    assert all(row["name"] for row in r["per_image"]) and len(r["per_image"]) == 5


@needs_data
def test_evaluation_pipeline_ssim_matches_skimage_on_the_cropped_region():
    skm = pytest.importorskip("skimage.metrics")
    from dnlib.experiments.sr import evaluate_sr, test_pairs
    items = test_pairs("Set5", 3)

    class Noisy(_Oracle):
        def forward(self, x):
            g = torch.Generator().manual_seed(x.shape[-1])
            out = super().forward(x)
            return out + 0.03 * torch.randn(out.shape, generator=g)

    r = evaluate_sr(Noisy(items), "Set5", 3)
    ref = []
    for it in items:
        x = torch.from_numpy(it["up"])
        g = torch.Generator().manual_seed(x.shape[-1])
        pred = (torch.as_tensor(it["hr"][8:-8, 8:-8], dtype=torch.float64) / 255.0).float()
        pred = ((pred + 0.03 * torch.randn(pred.shape, generator=g)).double() * 255).clamp(0, 255).numpy()
        ref.append(skm.structural_similarity(pred, it["hr"][8:-8, 8:-8].astype(np.float64), data_range=255,
                                             gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    assert r["ssim"] == pytest.approx(float(np.mean(ref)), abs=1e-6)


@pytest.mark.slow
@needs_data
def test_bicubic_row_reproduces_table5_and_the_data_baseline():
    from dnlib.data import load_sr, sr_test_pair
    from dnlib.experiments.sr import evaluate_bicubic
    from dnlib.training.metrics import psnr, ssim
    r = evaluate_bicubic("Set14", 3)
    assert r["psnr"] == pytest.approx(PAPER_TABLE5["Bicubic"][3][0], abs=0.01)
    ps, ss = [], []                                   # written out: uint8(up * 255) against HR, 8-px border
    for img in load_sr("Set5").images:
        up, hr = sr_test_pair(img, 3)
        up8 = np.clip(np.round(up.astype(np.float64) * 255), 0, 255)
        ps.append(psnr(up8, hr, border=8))
        ss.append(ssim(up8, hr, border=8))
    r5 = evaluate_bicubic("Set5", 3)
    assert (r5["psnr"], r5["ssim"]) == pytest.approx((np.mean(ps), np.mean(ss)), abs=1e-9)


# ------------------------------------------------------------------------------------------- training
@pytest.mark.slow
@needs_data
def test_cpu_smoke_training_beats_bicubic_on_set5_x3():
    from dnlib.experiments import sr
    from dnlib.experiments.sr import evaluate_bicubic, evaluate_sr
    run = sr.run("none", "smoke", eval_sets=(), progress=False)
    assert run.steps == 300 and run.config.kind == "smoke"
    ours = evaluate_sr(run.model, "Set5", 3)["psnr"]
    bic = evaluate_bicubic("Set5", 3)["psnr"]
    print(f"smoke: SRCNN {ours:.2f} dB vs bicubic {bic:.2f} dB on Set5 x3 after {run.steps} steps")
    assert ours > bic + 0.1, (ours, bic)


@pytest.mark.slow
@needs_data
def test_time_limit_stops_at_a_chunk_boundary_by_the_runners_rule():
    """The runner's one rule, by chunks (no wall time asserted): the first chunk always runs; before the next,
    seconds spent + the previous chunk's seconds > the limit stops it. A limit no chunk fits stops after one."""
    from dnlib.experiments import sr
    run = sr.run("dn*", get_config("smoke", batch_size=4, channels=(4, 4)), steps=10 ** 6, eval_every=5,
                 eval_sets=(), time_limit=1e-9, device="cpu")
    assert run.steps == 5 and run.stopped == "time limit at step 5"
    assert run.record["steps_planned"] == 10 ** 6 and run.config.milestone_steps() == (800_000,)
    assert all(v is None for k, v in run.headline.items() if k != "train_seconds")   # not completed: no scores


@pytest.mark.slow
@needs_data
def test_run_with_norm_records_and_the_report_reads_them(tmp_path, compiled_path, monkeypatch):
    """(impl="auto" with its compiled CPU path on, the evaluation's too (``INFERENCE_REPAY`` 0; a smoke run's
    evaluation alone does not compile): DN* compiles for the full-size evaluation images, whose shapes differ.)"""
    from dnlib.experiments import records
    from dnlib.experiments.sr import main
    from dnlib.norms import windowed
    monkeypatch.setattr(windowed, "INFERENCE_REPAY", 0)
    calls = []
    real = windowed.compiled_norm
    monkeypatch.setattr(windowed, "compiled_norm", lambda *a, **k: calls.append(tuple(a[0].shape)) or real(*a, **k))
    broken = dict(windowed._broken)
    out = tmp_path / "gpu"
    # a data root holding only T91 and Set5: Set14, absent there, is named in the record, not fatal
    from dnlib.data import data_root
    root = tmp_path / "root"
    (root / "sr").mkdir(parents=True)
    for name in ("T91", "Set5"):
        (root / "sr" / name).symlink_to(next(p for p in (data_root() / "sr" / name, data_root() / name) if p.is_dir()))
    args = ["--steps", "4", "--sets", "Set5", "Set14", "--curve-sets", "--out", str(out),
            "--root", str(root), "--device", "cpu"]
    assert main(["run", "smoke", "--norm", "dn-star"] + args) == 0     # a schedule and --norm: the row renames it
    assert len(set(calls)) >= 5 and windowed._broken == broken         # the five Set5 images at least, compiled
    assert main(["run", "smoke-bn"] + args) == 0
    recs = {records.read_record(d)["name"]: records.read_record(d) for d in records.find_runs([out])}
    assert set(recs) == {"smoke-dn*", "smoke-bn"}
    rec = recs["smoke-dn*"]
    assert rec["steps_done"] == 4 and rec["stopped"] == "completed" and rec["config"]["norm"] == "dn*"
    assert rec["config"]["setup"]["sets"] == ["Set5"] and "Set14" in rec["config"]["setup"]["missing_sets"]
    assert rec["headline"]["set5_ssim"] is not None and rec["headline"]["set14_psnr"] is None
    assert rec["paper"]["set14_psnr"] == 29.34 and rec["config"]["setup"]["card"] == "cpu"
    assert main(["report", str(out), "--sets", "Set5", "Set14"]) == 0
    rep = json.loads((out / "sr_results.json").read_text())
    assert set(rep["table"]["Set5"]) == {"Bicubic", "DN*", "BN"}
    assert rep["table"]["Set5"]["DN*"]["psnr"] == rec["headline"]["set5_psnr"]
    assert rep["table"]["Set14"]["Bicubic"]["paper_psnr"] == 27.54
    assert rep["table"]["Set14"]["DN*"]["scored"] == "checkpoint"   # not scored in training: its checkpoint now
    assert rep["table"]["Set14"]["DN*"]["paper_psnr"] == 29.34
    assert rep["runs"]["DN*"]["steps"] == 4


def test_configuration_names_are_schedule_and_row():
    from dnlib.experiments.sr import RECIPE
    assert len(RECIPE.configs()) == 15 and "fast-dn*-code" in RECIPE.configs()
    cfg = RECIPE.config("fast-dn-star", steps=1000)
    assert (cfg.name, cfg.norm, cfg.kind, cfg.steps) == ("fast-dn*", "dn*", "fast", 1000)
    assert cfg.milestone_steps(cfg.steps) == (700, 900)     # --steps scales the schedule
    assert RECIPE.config("fast", norm="bn").name == "fast-bn" == RECIPE.config(cfg, norm="bn").name
    assert RECIPE.from_dict(json.loads(json.dumps(RECIPE.config_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="config: unknown SR configuration 'slow-bn'"):
        RECIPE.config("slow-bn")
    with pytest.raises(ValueError, match="norm: unknown SR normalizer 'bogus'"):
        RECIPE.config("fast-bogus")
    with pytest.raises(ValueError, match="widths"):
        RECIPE.config("fast-bn", widths=3)


# -------------------------------------------------------------------------------------------- figures
@pytest.mark.slow
@needs_data
def test_tables_crops_and_widget(monkeypatch):
    import matplotlib
    matplotlib.use("agg")
    from dnlib.experiments.sr import bicubic_grey, test_pairs
    from dnlib.experiments.sr_report import compare_crops, crop_explorer, results_table
    from dnlib.training.metrics import psnr
    torch.manual_seed(0)
    net = get_config("paper", channels=(4, 4)).build_model("dn*")
    table = results_table({"DN*": net}, sets=("Set5",), scale=3)
    assert [r["model"] for r in table.rows] == ["Bicubic", "DN*"]
    assert "| Set5 | Bicubic |" in table
    fig, scores = compare_crops({"DN*": net}, "Set5", "butterfly_GT", 3, top=0, left=500, size=64)
    it = [i for i in test_pairs("Set5", 3) if i["name"] == "butterfly_GT"][0]
    sl = (slice(8, 72), slice(it["hr"].shape[1] - 72, it["hr"].shape[1] - 8))  # clamped into the 8-px frame
    assert scores["Bicubic"] == pytest.approx(psnr(bicubic_grey(it["up"])[sl], it["hr"][sl], border=0))
    w = crop_explorer({"DN*": net}, sets=("Set5",), scale=3)
    first = dict(w.result)
    assert set(first) == {"Bicubic", "DN*"}
    w.children[2].value = 0.1                          # move the "top" slider: recomputed synchronously
    assert w.result != first


# ------------------------------------------- issue 12 item 4: the "code" SR normalizers equal the authors' ops
def _naive_code_box(t, k, divisor):
    """The authors' box filter (PAPER.md §1.2): sum over a k x k window of a (N, H, W) map, TF SAME zero padding
    (zeros counted), divided by ``divisor``; written out position by position."""
    N, Hh, W = t.shape
    out = torch.zeros_like(t)
    r = k // 2
    for n in range(N):
        for i in range(Hh):
            for j in range(W):
                out[n, i, j] = sum(t[n, a, b] for a in range(i - r, i + r + 1) for b in range(j - r, j + r + 1)
                                   if 0 <= a < Hh and 0 <= b < W) / divisor
    return out


def _sr_input(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, c, 7, 8, generator=g, dtype=torch.float64) * 2 + 3   # an offset: borders matter


def test_dn_ms_is_the_codes_dnms():
    """dnms (get_dnms_act): x minus the 5x5 box mean of the channel mean, zero padded, divided by 25; no
    division, no L1 (the SR model never adds it)."""
    net = get_config("paper").build_model("dn-ms").double()
    for norm, c in ((net.norm1, 64), (net.norm2, 32)):
        x = _sr_input(c)
        ref = x - _naive_code_box(x.mean(1), 5, 25)[:, None]
        assert (norm(x) - ref).abs().max().item() < 1e-12
        assert norm.alpha == 0


def test_dn_star_code_is_the_codes_dn_star():
    """dn-star (div_norm_2d with eps = sigma^2 = 1, nothing else): 5x5 box mean of the channel mean, v = x - mu,
    7x7 box sum of the channel mean of v^2 divided by 5x5 = 25 (the code's divisor bug), y = v / sqrt(s + 1)."""
    net = get_config("paper").build_model("dn*-code").double()
    for norm, c in ((net.norm1, 64), (net.norm2, 32)):
        x = _sr_input(c, 1)
        v = x - _naive_code_box(x.mean(1), 5, 25)[:, None]
        s = _naive_code_box((v * v).mean(1), 7, 25)[:, None]
        ref = v / torch.sqrt(s + 1.0)
        assert (norm(x) - ref).abs().max().item() < 1e-12
        assert norm.alpha == 0 and not norm.affine


@pytest.mark.slow
@needs_data
def test_the_psnr_curves_notebook_06_asks_for_are_the_ones_a_run_logs(tmp_path, capsys):
    """06_results drew its SR band from ``curve_bands(runs, "set5/psnr")``, but runs log ``Set5/psnr``: the figure
    said "no runs" for every SR run. Each PSNR metric 06 asks for finds a run that logged curves."""
    import re
    from pathlib import Path

    from dnlib.experiments.aggregate import curve_bands
    from dnlib.experiments.sr import main
    out = tmp_path / "runs"
    assert main(["run", "smoke-bn", "--steps", "2", "--sets", "Set5", "--curve-sets", "Set5", "--eval-every", "1",
                 "--batch-size", "8", "--device", "cpu", "--out", str(out)]) == 0
    source = (Path(__file__).resolve().parents[1] / "notebooks" / "06_results.ipynb").read_text()
    metrics = [m for m in re.findall(r'curve_bands\(\w+, \\"([^"\\]+)\\"', source) if "psnr" in m]
    assert metrics, "06 draws no PSNR curve"
    for metric in metrics:
        bands = curve_bands([out], metric)
        assert list(bands) == ["smoke-bn"] and bands["smoke-bn"]["n"] == 1, (metric, bands)


@needs_data
def test_cached_pairs_belong_to_the_data_root_in_use(tmp_path, monkeypatch):
    """The per-process caches of test and training pairs are keyed by the data root they were read from: a process
    whose DNLIB_DATA changes reads the new root (before: ``root=None`` was the key, so Set5 of the old root came
    back from a root without it)."""
    from dnlib.data import DatasetNotFoundError
    from dnlib.experiments import sr
    assert len(sr.test_pairs("Set5")) == 5
    monkeypatch.setenv("DNLIB_DATA", str(tmp_path))
    with pytest.raises(DatasetNotFoundError):
        sr.test_pairs("Set5")
