"""The activation explorer driven headless: set a control, read the result, check it against the math."""
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dnlib import widgets


@pytest.fixture(scope="module")
def images():
    x, desc = widgets.explorer_images(6, "skimage", seed=0)  # always available: no data root needed
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8 and "scikit-image" in desc
    return x


@pytest.fixture
def ex(images):
    return widgets.activation_explorer(images, preset="bn", sigma=0.0, live_plots=False)


def _field_means(z):
    """E_A[z] for three presets, written independently of dnlib."""
    local = F.avg_pool2d(z.mean(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=False)
    return {"bn": z.mean((0, 2, 3), keepdim=True), "ln": z.mean((1, 2, 3), keepdim=True), "dn": local}


def test_controls_are_addressable_and_update_the_result(ex):
    assert set(ex.controls) == {"preset", "sigma", "space_window", "channel_window", "window_field", "alpha"}
    ex.controls["sigma"].value = 1.0  # as a user moving the slider: the observer recomputes synchronously
    assert ex.result["sigma"] == 1.0 and "sigma=1" in ex.result["spec"]
    r = ex.set(preset="ln", sigma=0.25)
    assert r is ex.result and r["preset"] == "ln" and ex.controls["preset"].value == "ln"
    with pytest.raises(KeyError):
        ex.set(gamma=1)


@pytest.mark.parametrize("preset, dims", [("bn", (0, 2, 3)), ("ln", (1, 2, 3)), ("in", (2, 3))])
def test_global_field_at_sigma_zero_has_unit_mean_square(ex, preset, dims):
    r = ex.set(preset=preset, sigma=0.0)
    assert r["field_mean_square"] == pytest.approx(1.0, abs=1e-3)
    per_field = ex.y.double().pow(2).mean(dims)
    torch.testing.assert_close(per_field, torch.ones_like(per_field), atol=2e-3, rtol=0)


@pytest.mark.parametrize("preset", ["bn", "ln", "dn"])
def test_larger_sigma_shrinks_towards_centred_input_over_sigma(ex, preset):
    v = ex.z - _field_means(ex.z)[preset]
    mean_squares, errors, lin = [], [], []
    for sigma in (0.0, 0.5, 1.0, 2.0):
        r = ex.set(preset=preset, sigma=sigma)
        mean_squares.append(r["mean_square"])
        lin.append(r["linearity"])
        if sigma > 0:
            errors.append(((ex.y * sigma - v).norm() / v.norm()).item())
    assert mean_squares == sorted(mean_squares, reverse=True)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.2
    assert lin == sorted(lin) and lin[-1] > 0.95  # the response becomes linear in z - E_A z
    far = ex.compute(preset, sigma=50.0)  # beyond the slider: y -> v / sigma
    assert ((ex.y * 50 - v).norm() / v.norm()).item() < 1e-3 and far["linearity"] > 0.999


def test_sparsity_does_not_depend_on_sigma(ex):
    rows = ex.sweep("sigma", [0.0, 0.5, 2.0])
    assert len({r["sparsity"] for r in rows}) == 1  # division keeps signs; only the summation field matters
    assert [r["sigma"] for r in rows] == [0.0, 0.5, 2.0]
    assert ex.result["sigma"] == 0.0 and ex.controls["sigma"].value == 0.0  # the sweep left the explorer as it was


@pytest.mark.parametrize("preset", ["bn", "ln", "dn"])
def test_alpha_reports_the_l1_penalty(ex, preset):
    alpha = 0.01
    r = ex.set(preset=preset, sigma=0.5, alpha=alpha)
    expected = alpha * (ex.z - _field_means(ex.z)[preset]).abs().mean().item()
    assert r["l1_penalty"] == pytest.approx(expected, rel=1e-5)
    assert ex.set(alpha=2 * alpha)["l1_penalty"] == pytest.approx(2 * expected, rel=1e-5)
    assert ex.set(alpha=0.0)["l1_penalty"] == 0.0


def test_baseline_penalty_is_on_raw_activations(ex):
    r = ex.set(preset="none", alpha=0.01)
    assert r["l1_penalty"] == pytest.approx(0.01 * ex.z.abs().mean().item(), rel=1e-5)


def test_preset_brings_its_windows_and_window_controls_apply(ex):
    ex.set(preset="lrn")
    assert ex.values["channel_window"] == 5 and ex.values["window_field"] == "sup" and ex.values["space_window"] == 0
    ex.set(preset="dn")
    assert ex.values["space_window"] == 3 and ex.values["window_field"] == "both"
    ex.set(space_window=5, window_field="sup")
    assert dict(ex.spec.sup_window) == {"space": 5} and ex.spec.sum_window == ()
    ex.set(window_field="sum")
    assert dict(ex.spec.sum_window) == {"space": 5} and ex.spec.sup_window == ()
    r = ex.set(preset="in", channel_window=5)
    assert any("channel window ignored" in n for n in r["notes"])
    r = ex.set(preset="bn", space_window=3)  # a local BN: batch x 3 x 3 window
    assert dict(ex.spec.sum_window) == {"space": 3} and not r["notes"]


def test_readout_shows_the_statistics(ex):
    r = ex.set(preset="dn", sigma=0.5)
    html = ex.readout.value
    assert 'class="dnlib-stats"' in html and f'{r["sparsity"]:.4f}' in html and 'dnlib-stat-mi' in html
    before = html
    ex.controls["sigma"].value = 1.5
    assert ex.readout.value != before


def test_pair_statistics_are_those_of_stats(ex):
    from dnlib import stats

    r = ex.set(preset="ln", sigma=0.0)
    p = stats.pairwise_corr_mi(ex.y, pairs=ex.pre_pairs.pairs, bins=ex.bins, max_samples=ex.max_samples, seed=ex.seed)
    assert r["corr"] == pytest.approx(p.corr) and r["mi"] == pytest.approx(p.mi)
    bn = ex.set(preset="bn", sigma=0.0)  # BN is a per-channel affine map: correlation unchanged
    assert bn["corr"] == pytest.approx(bn["corr_pre"], abs=1e-4)


def test_figure(ex):
    from matplotlib.figure import Figure

    assert isinstance(ex.figure(), Figure)


def test_images_fall_back_to_skimage_without_data(monkeypatch, tmp_path):
    monkeypatch.setenv("DNLIB_DATA", str(tmp_path))
    x, desc = widgets.explorer_images(4, "auto")
    assert x.shape == (4, 3, 32, 32) and "scikit-image" in desc
    with pytest.raises(Exception):
        widgets.explorer_images(4, "cifar-samples")


def test_fallback_images_say_so_loudly(monkeypatch, tmp_path, capsys):
    """02 must not silently switch to other photos (every number changes): a visible warning names what was missing."""
    monkeypatch.setenv("DNLIB_DATA", str(tmp_path))
    for _ in range(2):  # every time, not only the first (a re-run cell in the same kernel warns again)
        with pytest.warns(UserWarning) as rec:
            x, desc = widgets.explorer_images(4, "auto")
        (w,) = [r for r in rec if "scikit-image" in str(r.message)]
        msg = str(w.message)
        assert type(w.message).__name__ == "DataWarning"
        for part in ("CIFAR-10", str(tmp_path / widgets.CIFAR_SAMPLES), str(tmp_path / "cifar10-jpeg"), "DNLIB_DATA"):
            assert part in msg, part
        assert "FALLBACK" in desc and str(tmp_path) in desc  # the notebook prints desc under the images


@pytest.mark.skipif(not (Path(os.environ.get("DNLIB_DATA", "data")) / widgets.CIFAR_SAMPLES).exists(),
                    reason="the CIFAR-10 exact samples are not in $DNLIB_DATA")
def test_cifar_samples():
    x, desc = widgets.explorer_images(20, "auto")
    assert x.shape == (20, 3, 32, 32) and "CIFAR-10" in desc


def test_first_conv_random_and_from_checkpoint(tmp_path):
    conv = widgets.first_conv(seed=0)
    assert conv.weight.shape == (32, 3, 5, 5) and conv.padding == (2, 2)
    torch.testing.assert_close(conv.weight.flatten(1).norm(dim=1), torch.ones(32))
    assert torch.equal(conv.weight, widgets.first_conv(seed=0).weight)
    w, b = torch.randn(32, 3, 5, 5), torch.randn(32)
    path = tmp_path / "ckpt.pt"
    torch.save({"step": 3, "model": {"features.0.weight": w, "features.0.bias": b, "fc.weight": torch.randn(10, 64)}}, path)
    loaded = widgets.first_conv(str(path))
    assert torch.equal(loaded.weight.data, w) and torch.equal(loaded.bias.data, b)


def test_picking_a_preset_shows_its_own_sigma(ex):
    """bn and bn-s (ln/ln-s, dn/dn-s) differ only in sigma: picking one must not keep the other's sigma."""
    ex.controls["preset"].value = "bn"  # as a user picking from the dropdown
    bn = dict(ex.result)
    ex.controls["preset"].value = "bn-s"
    assert ex.controls["sigma"].value == 1.0 and ex.result["sigma"] == 1.0  # bn-s's own sigma (presets.py)
    assert ex.result["mean_square"] != pytest.approx(bn["mean_square"], rel=1e-3)
    for plain, smooth in (("ln", "ln-s"), ("dn", "dn-s")):
        a = ex.set(preset=plain)["mean_square"]
        b = ex.set(preset=smooth)["mean_square"]
        assert ex.controls["sigma"].value == 0.5 and a != pytest.approx(b, rel=1e-3), (plain, smooth)
    ex.controls["preset"].value = "bn"
    assert ex.controls["sigma"].value == 0.0
    assert ex.set(preset="bn-s", sigma=0.25)["sigma"] == 0.25  # an explicit sigma still wins


@pytest.mark.parametrize("preset", ["bn-ms", "ln-ms", "dn-ms", "none"])
def test_sigma_is_disabled_where_it_has_no_effect(ex, preset):
    ex.controls["preset"].value = preset
    assert ex.controls["sigma"].disabled
    before = ex.y.clone()
    ex.controls["sigma"].value = 1.5 if ex.controls["sigma"].value != 1.5 else 0.5
    torch.testing.assert_close(ex.y, before, rtol=0, atol=0)  # mean subtraction only: sigma changes nothing
    ex.controls["preset"].value = "dn"
    assert not ex.controls["sigma"].disabled


def test_gn_differs_from_in_and_is_torch_group_norm(ex):
    gn = ex.set(preset="gn")
    y_gn = ex.y.clone()
    groups = ex.spec.groups
    assert 1 < groups < ex.z.shape[1], f"gn with {groups} groups on {ex.z.shape[1]} channels"
    assert f"groups={groups}" in gn["spec"]
    ex.set(preset="in")
    assert (y_gn - ex.y).abs().max().item() > 0.1
    torch.testing.assert_close(y_gn, F.group_norm(ex.z, groups, eps=1e-5), atol=1e-4, rtol=1e-4)


def test_figure_is_readable(ex):
    """Feature-map labels of at least 8 pt, and a colour bar for the maps' shared scale."""
    fig = ex.figure()
    titles = [ax.title for ax in fig.axes if ax.get_title() and ax.get_title().isdigit()]
    assert titles and min(t.get_fontsize() for t in titles) >= 8
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
