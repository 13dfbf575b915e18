"""The activation explorer driven headless: set a control, read the result, check it against the math."""
import inspect
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dnlib.notebook import widgets
from dnlib.notebook.explorer_inputs import CIFAR_SAMPLES, preprocess


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


@pytest.mark.slow
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


@pytest.mark.slow
def test_sparsity_does_not_depend_on_sigma(ex):
    rows = ex.sweep("sigma", [0.0, 0.5, 2.0])
    assert len({r["sparsity"] for r in rows}) == 1  # division keeps signs; only the summation field matters
    assert [r["sigma"] for r in rows] == [0.0, 0.5, 2.0]
    assert ex.result["sigma"] == 0.0 and ex.controls["sigma"].value == 0.0  # the sweep left the explorer as it was


@pytest.mark.slow
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


@pytest.mark.slow
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
    from dnlib.analysis import stats

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
    with pytest.raises(Exception):  # noqa: B017  the error of a failing download, whatever the library raises
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
        for part in ("CIFAR-10", str(tmp_path / CIFAR_SAMPLES), str(tmp_path / "cifar10-jpeg"), "DNLIB_DATA"):
            assert part in msg, part
        assert "FALLBACK" in desc and str(tmp_path) in desc  # the notebook prints desc under the images


@pytest.mark.skipif(not (Path(os.environ.get("DNLIB_DATA", "data")) / CIFAR_SAMPLES).exists(),
                    reason="the CIFAR-10 exact samples are not in $DNLIB_DATA")
def test_cifar_samples():
    x, desc = widgets.explorer_images(20, "auto")
    assert x.shape == (20, 3, 32, 32) and "CIFAR-10" in desc


def test_an_empty_checkpoint_is_refused_and_the_explorer_defaults_to_random_filters(images):
    """The notebooks pass None, not "" (issue 24): first_conv names the parameter for "", and activation_explorer's
    own default is None (it was "", which the explorer then loaded as a path: 26 widget tests errored)."""
    with pytest.raises(ValueError, match="checkpoint: a path to a saved state dict, or None"):
        widgets.first_conv("")
    assert inspect.signature(widgets.activation_explorer).parameters["checkpoint"].default is None


def test_first_conv_random_and_from_checkpoint(tmp_path):
    conv = widgets.first_conv(seed=0)
    assert conv.weight.shape == (32, 3, 5, 5) and conv.padding == (2, 2)
    torch.testing.assert_close(conv.weight.flatten(1).norm(dim=1), torch.ones(32))
    assert torch.equal(conv.weight, widgets.first_conv(seed=0).weight)
    w, b = torch.randn(32, 3, 5, 5), torch.randn(32)
    path = tmp_path / "ckpt.pt"
    torch.save({"step": 3, "model": {"features.0.weight": w, "features.0.bias": b, "fc.weight": torch.randn(10, 64)}},
               path)
    loaded = widgets.first_conv(str(path))
    assert torch.equal(loaded.weight.data, w) and torch.equal(loaded.bias.data, b)


@pytest.mark.slow
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


@pytest.mark.slow
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


def _suptitle_numbers(fig):
    """The mean |r| and MI in the Table 10 figure's title."""
    import re

    text = fig._suptitle.get_text()
    r, mi = re.search(r"\|r\| = ([\d.]+), MI = ([\d.]+)", text).groups()
    return float(r), float(mi)


def test_readout_and_table10_figure_report_one_value(ex):
    """Issue 23: the readout said "mean |corr| 0.3606, MI 0.1777 before normalization" and the joint histograms'
    title "|r| = 0.338, MI = 0.161" for the same responses (64 random pairs of 8,192 samples against all pairs of
    20,000): one estimator, one value, before and after normalization."""
    from dnlib.analysis import figures

    r = ex.set(preset="dn", sigma=0.5)
    assert _suptitle_numbers(figures.joint_histograms(ex.z, bins=20, seed=ex.seed, mi_bins=ex.bins)) == (
        pytest.approx(r["corr_pre"], abs=5e-5), pytest.approx(r["mi_pre"], abs=5e-5))
    assert _suptitle_numbers(figures.joint_histograms(ex.y, bins=20, seed=ex.seed, mi_bins=ex.bins)) == (
        pytest.approx(r["corr"], abs=5e-5), pytest.approx(r["mi"], abs=5e-5))
    c = ex.z.shape[1]
    assert len(ex.pre_pairs.pairs) == c * (c - 1) // 2          # all filter pairs, as the figure's title says
    assert f"all {c * (c - 1) // 2} filter pairs" in ex.readout.value and f'{r["corr_pre"]:.4f}' in ex.readout.value


def _scales(fig):
    hist = [ax for ax in fig.axes if ax.patches]
    maps = [ax.images[0].get_clim() for ax in fig.axes if ax.images]
    return [ax.get_xlim() for ax in hist], [ax.get_ylim() for ax in hist], maps


def test_fixed_scale_keeps_the_axes_so_sigma_shows_in_the_figure(ex):
    """Issue 23: with axes and colours fitted to each result, moving sigma changed only the tick labels. The
    "fixed scale" checkbox (on by default) keeps both, so a larger sigma visibly shrinks the responses; off, the
    figure fits each result as before."""
    import matplotlib.pyplot as plt

    assert ex.fixed_scale.value is True
    ex.set(preset="dn", sigma=0.0)
    small_sigma = _scales(ex.figure())
    ex.set(sigma=2.0)
    large_sigma = _scales(ex.figure())
    assert small_sigma == large_sigma
    assert small_sigma[0][0] == pytest.approx((-widgets.FIXED_LIMITS["histogram"], widgets.FIXED_LIMITS["histogram"]))
    assert set(small_sigma[2]) == {(-widgets.FIXED_LIMITS["maps"], widgets.FIXED_LIMITS["maps"])}
    ex.fixed_scale.value = False   # as a user unticking the box
    fitted = _scales(ex.figure())
    ex.set(sigma=0.0)
    assert _scales(ex.figure()) != fitted and ex.figure(fixed_scale=True) is not None
    plt.close("all")


def test_the_figure_comes_right_after_the_controls(ex):
    """Issue 23: the live figure sat under the readout (~700 px below the sliders in JupyterLab): now the controls,
    then the figure, then the readout (tests/test_browser.py measures it on the page)."""
    children = list(ex.widget.children)
    assert children.index(ex.plots) == 3 and children.index(ex.readout) == 4
    assert ex.fixed_scale in children[0].children


def test_raw_inputs_make_the_summation_field_visible(images):
    """02 §6: on standardized images with zero-mean random filters every summation field subtracts almost nothing
    (the responses are already centred): penalty and zeros are the same for none/bn/ln/dn. On raw pixels in [0, 1]
    each filter's response has an offset (its weights' sum times the brightness), of either sign: BN removes it per
    filter, LN and DN (means across the filters) do not; the overall fraction of zeros stays near 1/2 either way,
    but per filter it spans almost 0 to 1 unless BN centred it."""
    rows = {}
    for inputs in ("standardized", "raw"):
        e = widgets.activation_explorer(images, preset="dn", sigma=0.5, alpha=0.005, live_plots=False, inputs=inputs)
        rows[inputs] = {r["preset"]: r for r in e.sweep("preset", ["none", "bn", "ln", "dn"])}
    std, raw = rows["standardized"], rows["raw"]
    assert max(r["l1_penalty"] for r in std.values()) < 1.02 * min(r["l1_penalty"] for r in std.values())
    assert raw["bn"]["l1_penalty"] < 0.8 * raw["none"]["l1_penalty"]
    for p in ("ln", "dn"):
        assert raw[p]["l1_penalty"] == pytest.approx(raw["none"]["l1_penalty"], rel=0.02)
        assert raw[p]["sparsity_max"] - raw[p]["sparsity_min"] > 0.9
    assert raw["bn"]["sparsity_max"] - raw["bn"]["sparsity_min"] < 0.3
    assert all(abs(r["sparsity"] - 0.5) < 0.05 for r in (*std.values(), *raw.values()))
    with pytest.raises(ValueError, match="inputs must be one of"):
        preprocess(images, "centred")


NOTEBOOK_02 = Path(__file__).resolve().parents[1] / "notebooks" / "02_activation_explorer.ipynb"


def test_values_outside_a_slider_are_refused_not_capped(images):
    """UI review: sigma=3 and alpha=0.1 were capped by the sliders to 2 and 0.05 without a word, while compute() and
    sweep() took them as given, so one run of notebook 02 saved a table at sigma 2 and results at sigma 3. The
    explorer refuses them (naming parameter, value and range), and notebook 02's rules stop the suite first."""
    from dnlib.notebook import parameters

    for name, value in (("sigma", 3.0), ("alpha", 0.1), ("sigma", -0.5)):
        lo, hi = widgets.SLIDER_RANGES[name]
        with pytest.raises(ValueError, match=rf"{name} = {value}.*\[{lo}, {hi}\]"):
            widgets.activation_explorer(images, preset="dn", live_plots=False, **{name: value})
    ex = widgets.activation_explorer(images, preset="dn", sigma=0.5, live_plots=False)
    with pytest.raises(ValueError, match=r"sigma = 5.0"):
        ex.set(sigma=5.0)
    assert ex.controls["sigma"].value == 0.5 and ex.result["sigma"] == 0.5   # a refused set leaves it as it was
    assert ex.compute("dn", 5.0)["sigma"] == 5.0                               # off-screen: any value, as given
    rules = parameters.parameter_rules(NOTEBOOK_02)
    for name, (lo, hi) in widgets.SLIDER_RANGES.items():
        assert (rules[name]["min"], rules[name]["max"]) == (lo, hi), name
        assert (ex.controls[name].min, ex.controls[name].max) == (lo, hi), name
    with pytest.raises(parameters.ParameterError, match="sigma"):
        parameters.resolve_parameters(NOTEBOOK_02, "smoke", [("sigma", "3.0")])
    with pytest.raises(parameters.ParameterError, match="alpha"):
        parameters.resolve_parameters(NOTEBOOK_02, "smoke", [("alpha", "0.1")])


def test_compute_keeps_its_responses_and_their_title_together(images):
    """UI review: compute() set y and spec but not result, and figure() drew y under result's title, so after notebook
    02's `explorer.compute("bn", sigma=0.0)` the figure showed BN's responses titled "dn ... sigma=0.5". Now the
    figure is the computation's own; the controls and the readout keep the controls' setting, and the live figure
    (redrawn by the fixed-scale box) comes back to it."""
    ex = widgets.activation_explorer(images, preset="dn", sigma=0.5, live_plots=False)
    shown = ex.readout.value
    bn = ex.compute("bn", sigma=0.0)
    assert ex.result is bn and repr(ex.spec) == bn["spec"]
    fig = ex.figure()
    titles = [t.get_text() for sf in fig.subfigs for t in sf.texts] + [a.get_title() for a in fig.subfigs[0].axes]
    assert any(t.startswith("bn before ReLU") for t in titles) and any(bn["spec"] in t for t in titles), titles
    assert ex.controls["preset"].value == "dn" and ex.readout.value == shown
    ex.fixed_scale.value = False          # a redraw of the live widget shows the controls' setting again
    assert ex.result["preset"] == "dn" and ex.result["sigma"] == 0.5 and repr(ex.spec) == ex.result["spec"]


def test_first_conv_refuses_a_stacked_groups_checkpoint(tmp_path):
    """UI review: a stacked run's one checkpoint holds K copies' first convs packed as (K*32, 3, 5, 5), which passed the
    3-input-channel check, so the explorer showed 64 filters of two seeds' models as one layer. Refused, naming the
    seeds (the layout of experiments.stacked's group checkpoint: identity.run.seeds, batches.copies)."""
    w = torch.randn(64, 3, 5, 5)
    state = {"step": 1, "model": {"convs.0.weight": w, "convs.0.bias": torch.zeros(64)},
             "identity": {"run": {"config": "dn-star", "seeds": [0, 1]}},
             "batches": {"copies": [{"seed": 0, "pos": 1}, {"seed": 1, "pos": 1}]}}
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"stacked.*2 copies.*seeds \[0, 1\].*\(64, 3, 5, 5\)"):
        widgets.first_conv(str(tmp_path / "checkpoint.pt"))
    state["identity"]["run"]["seeds"] = [0]        # one copy: its own first conv
    del state["batches"]
    torch.save(state, tmp_path / "one.pt")
    assert widgets.first_conv(str(tmp_path / "one.pt")).weight.shape == (64, 3, 5, 5)


def test_a_window_or_groups_the_explorer_substitutes_are_noted(images):
    """UI review: preset dn-1d's 61-channel window became the slider's largest option, 31, with no note (mean square
    0.966 against the preset's 0.999). A substitute for the preset's own window, and gn's groups, are now noted."""
    ex = widgets.activation_explorer(images, preset="dn-1d", sigma=0.0, live_plots=False)
    assert ex.values["channel_window"] == 31 and "channel[31]" in ex.result["spec"]
    assert any("61" in n and "31" in n for n in ex.result["notes"]), ex.result["notes"]
    assert "61" in ex.readout.value
    assert any("61" in n for n in ex.compute("dn-1d", 0.0)["notes"])
    assert not ex.set(channel_window=15)["notes"]          # a window the user picks is what was asked for
    assert not ex.set(preset="dn")["notes"]                # a preset's own windows that are slider options
    gn = ex.set(preset="gn")
    assert any(f"{widgets.GN_GROUPS} groups" in n for n in gn["notes"]), gn["notes"]


def test_more_images_than_a_source_holds_are_refused(monkeypatch, tmp_path):
    """UI review: explorer_images(64, "cifar-samples") returned the file's 20 images without a word (and notebook 02
    printed them as its 64). Asking a fixed set for more than it holds is refused, naming n and what it holds."""
    import numpy as np

    from dnlib import data

    path = tmp_path / CIFAR_SAMPLES
    path.parent.mkdir(parents=True)
    np.savez(path, x_test=np.zeros((20, 32, 32, 3), np.uint8))
    monkeypatch.setenv("DNLIB_DATA", str(tmp_path))
    assert widgets.explorer_images(20, "cifar-samples")[0].shape == (20, 3, 32, 32)
    with pytest.raises(ValueError, match=r"n = 64.*20 images"):
        widgets.explorer_images(64, "cifar-samples")

    class FiveTestImages:
        x_test, source, description = np.zeros((5, 32, 32, 3), np.uint8).transpose(0, 3, 1, 2), "fake", "CIFAR-10"

    monkeypatch.setattr(data, "load_cifar", lambda *a, **k: FiveTestImages())
    assert widgets.explorer_images(5, "cifar")[0].shape == (5, 3, 32, 32)
    with pytest.raises(ValueError, match=r"n = 6.*5 test images"):
        widgets.explorer_images(6, "cifar")


def test_notebook_02_offers_the_presets_of_the_dropdown(ex):
    """UI review: `-p preset gdn` passed the rule (any of list_norms()) and then the explorer's dropdown raised a
    TraitError; the rule's choices are now the dropdown's options, so the suite refuses gdn before running."""
    from dnlib.notebook import parameters

    rule = parameters.parameter_rules(NOTEBOOK_02)["preset"]
    assert rule == {"choices_from": "dnlib.notebook.widgets.explorer_presets()"}
    offered = list(ex.controls["preset"].options)
    assert widgets.explorer_presets() == offered and "gdn" not in offered
    with pytest.raises(parameters.ParameterError, match="preset"):
        parameters.resolve_parameters(NOTEBOOK_02, "smoke", [("preset", "gdn")])
    assert parameters.resolve_parameters(NOTEBOOK_02, "smoke", [("preset", "dn-1d")]) == {"preset": "dn-1d"}
