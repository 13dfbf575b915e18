"""dnlib.analysis.stats (activation statistics, Table 10 metrics, equivalence table) and the figures drawn from them."""
import math

import numpy as np
import pytest
import torch

import dnlib
from dnlib.analysis import figures, stats


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_kurtosis_of_known_distributions():
    g = _gen()
    assert abs(stats.kurtosis(torch.randn(200_000, generator=g)).item()) < 0.05
    assert stats.kurtosis(torch.rand(200_000, generator=g)).item() == pytest.approx(-1.2, abs=0.02)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    assert stats.kurtosis(laplace).item() == pytest.approx(3.0, abs=0.3)
    assert stats.kurtosis(torch.randn(4, 1000, generator=g), dim=1).shape == (4,)


def test_sparsity_and_activation_stats():
    y = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert stats.sparsity(y.clamp_min(0)) == pytest.approx(0.6)
    s = stats.activation_stats(y)
    assert s["sparsity"] == pytest.approx(0.6)
    assert s["mean_square"] == pytest.approx((4 + 1 + 0 + 1 + 9) / 5)
    assert s["relu_mean"] == pytest.approx(4 / 5)


def test_channel_sparsity_shows_what_the_overall_fraction_hides():
    """Half the channels always on, half always off: overall sparsity 1/2, per channel 0 and 1."""
    y = torch.cat([torch.ones(4, 2, 3, 3), -torch.ones(4, 2, 3, 3)], dim=1)
    s = stats.activation_stats(y)
    assert s["sparsity"] == pytest.approx(0.5)
    assert (s["sparsity_min"], s["sparsity_max"]) == (0.0, 1.0)
    assert stats.channel_sparsity(y).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert "sparsity_min" not in stats.activation_stats(torch.randn(10))   # no channel axis


def test_pairwise_corr_matches_numpy_and_mi_orders_dependence():
    g = _gen(1)
    a = torch.randn(4, 5000, generator=g)
    # channels: a0, a0 (copy), -a0 + noise, independent
    z = torch.stack([a[0], a[0], -a[0] + 0.5 * a[1], a[3]])  # (C, S)
    z = z.T.reshape(50, 100, 4).permute(0, 2, 1)  # (N=50, C=4, L=100)
    p = stats.pairwise_corr_mi(z, bins=16, max_samples=None)
    ref = np.corrcoef(z.permute(1, 0, 2).reshape(4, -1).numpy())
    iu = np.triu_indices(4, 1)
    np.testing.assert_allclose(p.corr_per_pair.numpy(), ref[iu], atol=1e-5)
    assert p.corr == pytest.approx(np.abs(ref[iu]).mean(), abs=1e-5)
    assert p.corr_signed == pytest.approx(ref[iu].mean(), abs=1e-5)
    mi = dict(zip(map(tuple, p.pairs.tolist()), p.mi_per_pair.tolist()))
    assert mi[(0, 1)] > mi[(0, 2)] > 0.3 > 0.05 > mi[(0, 3)]  # copy > noisy copy > independent
    assert p.n_samples == 5000 and p.bins == 16 and p.as_dict()["mi"] == pytest.approx(p.mi)


def test_a_dead_channel_has_no_correlation_and_is_left_out_of_the_mean():
    """A constant (dead) channel has no Pearson r (np.corrcoef: NaN): its pairs are NaN and left out of the means,
    counted out of corr_pairs; a clamp made them r = 0 and pulled Table 10's mean |r| down silently."""
    g = _gen(4)
    a = torch.randn(2, 3000, generator=g)
    z = torch.stack([a[0], 0.5 * a[0] + 0.3 * a[1], torch.full_like(a[0], 0.7)]).T.reshape(30, 100, 3).permute(0, 2, 1)
    p = stats.pairwise_corr_mi(z, bins=8, max_samples=None)
    ref = np.corrcoef(z.permute(1, 0, 2).reshape(3, -1).numpy()[:2])[0, 1]
    assert p.pairs.tolist() == [[0, 1], [0, 2], [1, 2]] and p.corr_pairs == 1
    assert p.corr_per_pair[0].item() == pytest.approx(ref, abs=1e-5) and p.corr_per_pair[1:].isnan().all()
    assert p.corr == pytest.approx(abs(ref), abs=1e-5) and p.corr_signed == pytest.approx(ref, abs=1e-5)
    assert p.mi_per_pair[1:].tolist() == pytest.approx([0, 0], abs=1e-12) and p.as_dict()["corr_pairs"] == 1   # MI 0
    assert math.isnan(stats.pairwise_corr_mi(z, pairs=[[0, 2]], max_samples=None).corr)


def test_mi_estimate_of_a_bivariate_gaussian():
    g = _gen(2)
    rho = 0.8
    a, n = torch.randn(2, 200_000, generator=g)
    b = rho * a + math.sqrt(1 - rho ** 2) * n
    exact = -0.5 * math.log(1 - rho ** 2)  # 0.511 nats
    assert stats.mutual_information(a, b, bins=30) == pytest.approx(exact, abs=0.06)
    assert stats.mutual_information(a, n, bins=30) < 0.01


def test_pair_sampling_is_seeded_and_sized():
    z = torch.randn(4, 32, 6, 6, generator=_gen(3))
    p1 = stats.pairwise_corr_mi(z, n_pairs=10, seed=5)
    p2 = stats.pairwise_corr_mi(z, n_pairs=10, seed=5)
    assert p1.pairs.shape == (10, 2) and torch.equal(p1.pairs, p2.pairs) and p1.mi == p2.mi
    assert bool((p1.pairs[:, 0] < p1.pairs[:, 1]).all())
    assert stats.pairwise_corr_mi(z).pairs.shape == (32 * 31 // 2, 2)
    explicit = stats.pairwise_corr_mi(z, pairs=[[0, 1], [2, 3]], max_samples=100)
    assert explicit.pairs.tolist() == [[0, 1], [2, 3]] and explicit.n_samples == 100


def test_suppression_mean_square_is_one_for_global_fields_at_sigma_zero():
    x = torch.randn(6, 5, 7, 7, generator=_gen(4), dtype=torch.float64) * 3 + 1
    for name in ("bn", "ln", "in"):
        spec = dnlib.get_spec(name).replace(eps=0.0)
        y = dnlib.divisive_norm(x, spec)
        ms = stats.suppression_mean_square(y, spec)
        torch.testing.assert_close(ms, torch.ones_like(ms))
        y1 = dnlib.divisive_norm(x, spec, sigma=1.0)
        assert stats.suppression_mean_square(y1, spec).max() < 1


def test_suppression_mean_square_uses_the_window_weights():
    # a unit impulse: E_B[y^2] at its own position is the window's centre weight; for a 3x3 Gaussian of width 1
    # (separable, normalized to sum 1) that is (1 / (1 + 2 e^-1/2))^2, for the 3x3 box 1/9
    y = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    y[0, 0, 2, 2] = 1.0
    gauss = dnlib.NormSpec(None, "space", sup_window={"space": 3}, sup_weights={"space": 1.0})
    box = dnlib.NormSpec(None, "space", sup_window={"space": 3})
    centre = 1.0 / (1.0 + 2.0 * math.exp(-0.5))
    assert stats.suppression_mean_square(y, gauss)[0, 0, 2, 2].item() == pytest.approx(centre ** 2, rel=1e-12)
    assert stats.suppression_mean_square(y, box)[0, 0, 2, 2].item() == pytest.approx(1 / 9, rel=1e-12)


def test_linearity():
    x = torch.linspace(-1, 1, 101)
    assert stats.linearity(x, 3 * x + 2) == pytest.approx(1.0)
    assert stats.linearity(x, x ** 2) == pytest.approx(0.0, abs=1e-6)


def test_figure2_response_saturates_at_sigma_zero_and_linearizes_with_sigma():
    x = torch.tensor([-1.0, 0.5, 1.0, 2.0, 3.0])
    y0 = stats.dn_relu_response(x, 0.0, fixed=0.5)
    torch.testing.assert_close(y0[:, 0], torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64),
                               atol=1e-3, rtol=0)
    assert float(y0[0, 1]) == pytest.approx(1.0, abs=1e-3) and float(y0[-1, 1]) == 0.0  # the other unit is suppressed
    big = stats.dn_relu_response(x, 50.0, fixed=0.5)
    torch.testing.assert_close(big[:, 0] * 50, ((x - 0.5) / 2).clamp_min(0).double(), atol=2e-3, rtol=2e-3)
    rows = stats.dn_relu_summary([0.0, 0.25, 0.5, 1.0, 2.0])
    lin = [r["linearity"] for r in rows]
    assert lin == sorted(lin) and lin[-1] > 0.99 and lin[0] < 0.1


def test_equivalence_table_all_presets_match_torch():
    rows = stats.equivalence_table(seed=0)
    assert {r.preset for r in rows} >= {"bn", "ln", "in", "gn", "lrn", "rms", "dn-s"}
    assert all(r.passed for r in rows), [(r.preset, r.max_abs_diff) for r in rows]
    text = stats.format_equivalence(rows)
    assert text.count("pass") == len(rows) and "FAIL" not in text
    summary = stats.summarize_equivalence(rows)
    assert summary["all_passed"] and summary["max_abs_diff"] < 1e-6


def test_equivalence_format_reports_a_failure():
    row = stats.EquivalenceRow("x", "spec", "ref", 0.5, 1e-6)
    assert not row.passed and "FAIL" in stats.format_equivalence([row])


def test_format_rows():
    text = stats.format_rows([{"a": 1.23456, "b": "x"}, {"a": float("nan"), "b": "yy"}], ["a", "b"], digits=2)
    assert text.splitlines() == ["   a   b", "1.23   x", " nan  yy"]


# --------------------------------------------------------------------------------------------- figures
@pytest.mark.parametrize("name, sum_count, sup_count", [
    ("bn", 2 * 6 * 6, 2 * 6 * 6),      # same channel, every example and position
    ("ln", 4 * 6 * 6, 4 * 6 * 6),      # one example, all channels and positions
    ("dn", 4 * 3 * 3, 4 * 3 * 3),      # one example, all channels, 3 x 3 window
    ("in", 6 * 6, 6 * 6),              # one example, one channel
    ("lrn", 0, 3),                     # no centring; channel window 5 around channel 0 -> channels 0..2
    ("rms", 0, 4 * 6 * 6),
])
def test_field_mask_counts(name, sum_count, sup_count):
    spec = dnlib.get_spec(name)
    shape, center = (2, 4, 6, 6), (0, 0, 2, 2)
    a = figures.field_mask(spec, shape, center, "sum")
    b = figures.field_mask(spec, shape, center, "sup")
    assert a.sum() == sum_count and b.sum() == sup_count
    if a.any():
        assert a[center] and b[center]


def test_field_mask_groups_and_unequal_windows():
    spec = dnlib.get_spec("gn")
    mask = figures.field_mask(spec, (2, 4, 5, 5), (0, 1, 2, 2), "sum", groups=2)
    assert mask[0, :2].all() and not mask[0, 2:].any() and not mask[1].any()
    custom = dnlib.NormSpec("channel,space", "channel,space", {"space": 3}, {"space": 5})
    assert figures.field_mask(custom, (1, 2, 7, 7), (0, 0, 3, 3), "sum").sum() == 2 * 9
    assert figures.field_mask(custom, (1, 2, 7, 7), (0, 0, 3, 3), "sup").sum() == 2 * 25


def test_figures_draw():
    from matplotlib.figure import Figure

    z = torch.randn(4, 8, 8, 8, generator=_gen(5))
    assert isinstance(figures.figure1(["bn", "ln", "dn", "gn"]), Figure)
    assert isinstance(figures.draw_fields(dnlib.NormSpec("batch", "channel")), Figure)
    assert isinstance(figures.figure2([0.0, 1.0]), Figure)
    assert isinstance(figures.joint_histograms(z, n_pairs=3), Figure)
    assert isinstance(figures.activation_histograms(z), Figure)
    assert isinstance(figures.feature_maps(z, n_maps=8), Figure)
    assert isinstance(figures.image_grid(torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)), Figure)
    table = figures.spec_table(["bn", "lrn"])
    assert table._repr_markdown_().count("\n") == 3 and "channel [5]" in table
