"""Activation statistics: what normalization does to a layer's responses.

The numbers the notebooks report, as plain functions of tensors:

* :func:`activation_stats`: mean square, sparsity (fraction of exact zeros after ReLU, overall and the range over
  filters) and kurtosis of normalized responses;
* :func:`pairwise_corr_mi`: the mean pairwise correlation and mutual information between filter responses
  at the same location (the metrics of the paper's Table 10, PAPER.md §4);
* :func:`suppression_mean_square`: ``E_B[y^2]``, which is 1 for a global field at sigma = 0 (eq. 4);
* :func:`dn_relu_response`: the toy "DN followed by ReLU" of the paper's Figure 2;
* :func:`equivalence_table`: BN, LN, IN, GN, LRN and RMSNorm computed as DN presets, against torch's modules.

Layout convention: responses are ``(N, C)``, ``(N, C, L)`` or ``(N, C, H, W)``; a *sample* is one example at one
location, the *variables* are the C channels (filters).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..norms.functional import divisive_norm, field_mean
from ..norms.presets import get_spec
from ..norms.spec import NormSpec

__all__ = ["kurtosis", "sparsity", "channel_sparsity", "activation_stats", "as_samples", "mutual_information",
           "pairwise_corr_mi", "PairStats", "suppression_mean_square", "linearity", "dn_relu_response",
           "equivalence_table", "EquivalenceRow", "summarize_equivalence", "format_equivalence", "format_rows",
           "dn_relu_summary"]


# ----------------------------------------------------------------------------------------- moments
def kurtosis(x: torch.Tensor, dim=None, excess: bool = True) -> torch.Tensor:
    """Kurtosis ``E[(x - mean)^4] / E[(x - mean)^2]^2`` over ``dim`` (all elements when None).

    Biased (population) moments. With ``excess=True`` (default) 3 is subtracted, so a Gaussian gives 0,
    a heavy-tailed (sparse) response a large positive value and a uniform one -1.2. A constant gives nan.
    """
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16, torch.uint8) else x
    d = tuple(range(x.dim())) if dim is None else dim
    c = x - x.mean(d, keepdim=True)
    c2 = c * c
    m2 = c2.mean(d, dtype=torch.float64)
    k = c2.square().mean(d, dtype=torch.float64) / m2.square()
    return k - 3.0 if excess else k


def sparsity(x: torch.Tensor, threshold: float = 0.0) -> float:
    """Fraction of elements with ``|x| <= threshold``; of ``relu(y)`` with 0 this is the fraction of zeros."""
    return (x.abs() <= threshold).double().mean().item()


def channel_sparsity(y: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """Fraction of zeros of ``relu(y)`` per channel (over every other axis): one value per filter, float64."""
    y = y.detach()
    return (y.movedim(channel_dim, 0).reshape(y.shape[channel_dim], -1) <= 0).double().mean(1)


def activation_stats(y: torch.Tensor) -> dict:
    """Statistics of normalized responses ``y`` (before the ReLU) and of ``relu(y)``.

    Returns ``mean``, ``std``, ``mean_square`` and ``kurtosis`` (excess) of ``y`` over all elements, and
    ``sparsity`` (fraction of zeros), ``relu_mean`` and ``relu_kurtosis`` of ``relu(y)``. For ``(N, C, ...)``
    responses also ``sparsity_min`` and ``sparsity_max``, the lowest and highest fraction of zeros of one channel
    (:func:`channel_sparsity`): the overall fraction can stay near 1/2 while some filters are always on and others
    never (a filter whose responses have a positive offset against one with a negative offset).
    """
    y = y.detach()
    r = y.clamp_min(0)
    mean = y.mean(dtype=torch.float64).item()
    mean_square = (y * y).mean(dtype=torch.float64).item()
    out = {
        "mean": mean,
        "std": max(mean_square - mean * mean, 0.0) ** 0.5,
        "mean_square": mean_square,
        "kurtosis": kurtosis(y).item(),
        "sparsity": sparsity(r),
        "relu_mean": r.mean(dtype=torch.float64).item(),
        "relu_kurtosis": kurtosis(r).item(),
    }
    if y.dim() >= 2:
        per_channel = channel_sparsity(y)
        out.update(sparsity_min=per_channel.min().item(), sparsity_max=per_channel.max().item())
    return out


def suppression_mean_square(y: torch.Tensor, spec: NormSpec) -> torch.Tensor:
    """``E_B[y^2]`` at every unit: the mean square of ``y`` over the suppression field of ``spec``.

    For a global field (BN, LN, IN) at sigma = 0 this is 1 up to ``eps`` (eq. 4 divides by exactly that
    root mean square); a larger sigma makes it smaller. Broadcastable to ``y``.
    """
    field = NormSpec(sum_axes=spec.sup_axes, sum_window=spec.sup_window, sum_weights=spec.sup_weights,
                     groups=spec.groups, border="zeros" if spec.border == "reference" else spec.border)
    return field_mean(y * y, field)


def linearity(x: torch.Tensor, y: torch.Tensor) -> float:
    """R^2 of the best affine fit of ``y`` from ``x`` (the squared Pearson correlation over all elements).

    1 when ``y`` is an affine function of ``x``: normalization with a large sigma tends to ``v / sigma``.
    """
    x, y = x.detach().double().flatten(), y.detach().double().flatten()
    x, y = x - x.mean(), y - y.mean()
    denom = (x.pow(2).sum() * y.pow(2).sum()).sqrt()
    return float((x @ y / denom).pow(2)) if denom > 0 else float("nan")


# ------------------------------------------------------------------------------ pairs of filters
def as_samples(z: torch.Tensor, channel_dim: int = 1, max_samples: int | None = None, seed: int = 0) -> torch.Tensor:
    """``(C, S)`` view of responses: one row per channel, one column per (example, location).

    With ``max_samples``, a random subset of columns (seeded, without replacement) is kept.
    """
    z = z.detach()
    zc = z.movedim(channel_dim, 0).reshape(z.shape[channel_dim], -1)
    if max_samples is not None and zc.shape[1] > max_samples:
        g = torch.Generator().manual_seed(seed)
        zc = zc[:, torch.randperm(zc.shape[1], generator=g)[:max_samples]]
    return zc


def _bin_index(zc: torch.Tensor, bins: int) -> torch.Tensor:
    lo, hi = zc.min(1, keepdim=True).values, zc.max(1, keepdim=True).values
    width = (hi - lo).clamp_min(torch.finfo(zc.dtype).tiny)
    return ((zc - lo) / width * bins).long().clamp_(0, bins - 1)


def _plugin_mi(counts: torch.Tensor) -> torch.Tensor:
    """Plug-in MI (nats) from joint counts ``(P, B, B)``."""
    p = counts / counts.sum((1, 2), keepdim=True)
    pa, pb = p.sum(2, keepdim=True), p.sum(1, keepdim=True)
    ratio = p / (pa * pb)
    terms = torch.where(p > 0, p * ratio.clamp_min(1e-300).log(), torch.zeros_like(p))
    return terms.sum((1, 2))


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 20) -> float:
    """MI in nats between two 1-D samples, from a ``bins x bins`` 2-D histogram (see :func:`pairwise_corr_mi`)."""
    idx = _bin_index(torch.stack([a.detach().double().flatten(), b.detach().double().flatten()]), bins)
    counts = torch.bincount(idx[0] * bins + idx[1], minlength=bins * bins).double().view(1, bins, bins)
    return _plugin_mi(counts).item()


@dataclass
class PairStats:
    """Result of :func:`pairwise_corr_mi`.

    ``corr``: mean over pairs of |Pearson r|; ``corr_signed``: mean of r; ``mi``: mean MI in nats;
    per-pair values in ``corr_per_pair``/``mi_per_pair`` for ``pairs`` (a ``(P, 2)`` tensor of channel indices).
    ``corr_pairs``: how many pairs the correlations average: a pair with a constant (dead) channel has no Pearson r
    (NaN in ``corr_per_pair``) and is left out of ``corr``/``corr_signed`` (NaN when no pair has one); its MI is 0
    and counts.
    """

    corr: float
    corr_signed: float
    mi: float
    pairs: torch.Tensor
    corr_per_pair: torch.Tensor
    mi_per_pair: torch.Tensor
    bins: int
    n_samples: int
    corr_pairs: int

    def as_dict(self) -> dict:
        """The scalar fields only (for tables and JSON)."""
        return {k: v for k, v in asdict(self).items() if not torch.is_tensor(v)}


def pairwise_corr_mi(z: torch.Tensor, *, channel_dim: int = 1, pairs=None, n_pairs: int | None = None,
                     bins: int = 20, max_samples: int | None = 20000, seed: int = 0) -> PairStats:
    """Mean pairwise correlation and mutual information between filter responses at the same location.

    The metrics of the paper's Table 10 (PAPER.md §4): every (example, location) is one sample of the C
    channel responses; for each pair of channels ``(i, j)``

    * correlation: Pearson r over the samples (``corr`` averages |r|, ``corr_signed`` averages r; the paper says
      "average pairwise correlation", read here as the mean |r| since signed r of many filter pairs cancel). A pair
      with a constant (dead) channel has no r: it is NaN per pair, left out of the means and counted out of
      ``corr_pairs`` (a clamp that made it r = 0 pulled the mean down, silently);
    * mutual information: the plug-in estimate ``sum_ab p(a,b) log(p(a,b) / (p(a) p(b)))`` in nats from a
      ``bins x bins`` 2-D histogram whose bins are equal-width between each channel's min and max. It is biased
      upward by about ``(bins - 1)^2 / (2 S)`` nats for S samples (0.009 for 20 bins and 20,000 samples) and
      depends on ``bins``: compare numbers computed with the same ``bins`` and ``max_samples`` only.

    Args:
        z: responses ``(N, C, ...)`` (or with the channels on ``channel_dim``).
        pairs: explicit ``(P, 2)`` channel index pairs; else all pairs ``i < j``, or ``n_pairs`` of them drawn
            at random (seeded) without replacement.
        bins: histogram bins per axis for the MI estimate.
        max_samples: subsample this many (example, location) samples (seeded); None keeps all.
        seed: seed for the pair and sample draws.
    """
    zc = as_samples(z, channel_dim, max_samples, seed)
    zc = zc.float() if zc.dtype not in (torch.float32, torch.float64) else zc
    c, s = zc.shape
    if pairs is None:
        iu = torch.triu_indices(c, c, offset=1).T
        if n_pairs is not None and n_pairs < len(iu):
            g = torch.Generator().manual_seed(seed + 1)
            iu = iu[torch.randperm(len(iu), generator=g)[:n_pairs]]
        pairs = iu
    pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
    std = zc.std(1, unbiased=False, keepdim=True)
    zs = (zc - zc.mean(1, keepdim=True)) / std.clamp_min(1e-12)
    r = (zs @ zs.T / s)[pairs[:, 0], pairs[:, 1]]
    dead = zc.amax(1) == zc.amin(1)                                  # constant channels: Pearson r is undefined
    r = torch.where(dead[pairs[:, 0]] | dead[pairs[:, 1]], torch.nan, r)
    defined = r[~r.isnan()]
    idx = _bin_index(zc, bins).to(torch.int32)
    mi = []
    chunk = max(1, 4_000_000 // max(s, 1))
    for start in range(0, len(pairs), chunk):
        p = pairs[start:start + chunk]
        offset = torch.arange(len(p), dtype=torch.int32).unsqueeze(1) * (bins * bins)
        joint = offset + idx[p[:, 0]] * bins + idx[p[:, 1]]
        counts = torch.bincount(joint.flatten(), minlength=len(p) * bins * bins).double()
        mi.append(_plugin_mi(counts.view(len(p), bins, bins)))
    mi = torch.cat(mi)
    return PairStats(corr=defined.abs().mean().item(), corr_signed=defined.mean().item(), mi=mi.mean().item(),
                     pairs=pairs, corr_per_pair=r.float(), mi_per_pair=mi.float(), bins=bins, n_samples=s,
                     corr_pairs=len(defined))


# ----------------------------------------------------------------------------------- Figure 2
def dn_relu_response(x: torch.Tensor, sigma: float, fixed: float = 0.5, spec: NormSpec | None = None) -> torch.Tensor:
    """The paper's Figure 2 toy: two units normalized together, then ReLU.

    Unit 1 gets each value of ``x``, unit 2 the constant ``fixed``; both are normalized with ``spec`` (default:
    eqs. 3-4 with A = B = both units, i.e. ``v = z - mean(z)``, ``y = v / sqrt(sigma^2 + mean(v^2))``).
    Returns ``relu(y)`` of shape ``(len(x), 2)``: column 0 is unit 1 (as a function of its own input), column 1
    unit 2 (as a function of the other unit's input).
    """
    spec = spec if spec is not None else NormSpec("channel", "channel")
    x = torch.as_tensor(x, dtype=torch.float64).flatten()
    z = torch.stack([x, torch.full_like(x, fixed)], dim=1)
    return divisive_norm(z, spec, sigma=sigma).clamp_min(0)


def dn_relu_summary(sigmas: Sequence[float], fixed: float = 0.5, x: torch.Tensor | None = None,
                    spec: NormSpec | None = None) -> list:
    """For each sigma, how ReLU-like the Figure 2 response of unit 1 is.

    ``linearity``: R^2 of unit 1's output against its input over the inputs above ``fixed`` (where the
    output is not cut by the ReLU); 1 for a straight line. ``y_max``: the output at the largest input
    (it saturates at 1 for sigma = 0 with the default two-unit field).
    """
    x = torch.linspace(fixed, fixed + 2.5, 251, dtype=torch.float64) if x is None else torch.as_tensor(x).double()
    rows = []
    for s in sigmas:
        y = dn_relu_response(x, s, fixed, spec)[:, 0]
        rows.append({"sigma": float(s), "linearity": linearity(x, y), "y_max": y[-1].item()})
    return rows


# ------------------------------------------------------------------ equivalence with torch's modules
@dataclass
class EquivalenceRow:
    """One line of :func:`equivalence_table`."""

    preset: str
    spec: str
    reference: str
    max_abs_diff: float
    tol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tol

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _paper_dn(x: torch.Tensor, k: int, sigma: float, eps: float) -> torch.Tensor:
    """The authors' conv DN written from PAPER.md §7: channel mean, avg_pool2d with zero padding counted."""
    pool = lambda t: F.avg_pool2d(t, k, stride=1, padding=k // 2, count_include_pad=True)  # noqa: E731
    v = x - pool(x.mean(1, keepdim=True))
    return v / (pool(v.pow(2).mean(1, keepdim=True)) + sigma ** 2 + eps).sqrt()


def equivalence_table(seed: int = 0, shape: Sequence[int] = (4, 8, 6, 6), tol: float = 1e-6) -> list:
    """Forward outputs of DN presets against torch's own normalizers, at a fixed seed, in float64.

    Each row computes ``dnlib.norms.functional.divisive_norm(x, spec)`` (the general DN math, no fused kernel)
    and the reference on the same random ``x`` (mean 1, std 2), and reports ``max |difference|``. The torch
    module gets ``eps = sigma^2 + spec.eps`` (sigma folds into eps) and no affine; BN is in training mode
    (batch statistics, biased variance). GN uses 4 groups; LRN uses its preset window and power with
    ``alpha = 1`` so that the channel window visibly matters; DN is checked against the authors' recipe
    (PAPER.md §7) with its zero-padded border.
    """
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 1

    def eps_of(spec):
        return spec.sigma ** 2 + spec.eps

    cases = []
    for name in ("bn", "bn-s"):
        spec = get_spec(name)
        cases.append((name, spec, f"nn.BatchNorm2d(eps={eps_of(spec):g}), train",
                      nn.BatchNorm2d(c, eps=eps_of(spec), affine=False).double().train()))
    spec = get_spec("ln")
    cases.append(("ln", spec, "nn.LayerNorm([C, H, W])", nn.LayerNorm([c, h, w], eps=eps_of(spec),
                                                                      elementwise_affine=False).double()))
    spec = get_spec("in")
    cases.append(("in", spec, "nn.InstanceNorm2d", nn.InstanceNorm2d(c, eps=eps_of(spec)).double()))
    spec = get_spec("gn").replace(groups=4)
    cases.append(("gn", spec, "nn.GroupNorm(4, C)", nn.GroupNorm(4, c, eps=eps_of(spec), affine=False).double()))
    spec = get_spec("lrn").replace(sup_scale=1.0)
    size = dict(spec.sup_window)["channel"]
    cases.append(("lrn", spec, f"nn.LocalResponseNorm({size}, alpha=1, beta={spec.power:g}, k={eps_of(spec):g})",
                  nn.LocalResponseNorm(size, alpha=spec.sup_scale, beta=spec.power, k=eps_of(spec))))
    spec = get_spec("rms")
    cases.append(("rms", spec, "nn.RMSNorm([C, H, W])", nn.RMSNorm([c, h, w], eps=spec.eps).double()))
    spec = get_spec("dn-s").replace(border="zeros")
    k = dict(spec.sup_window)["space"]
    cases.append(("dn-s", spec, f"paper recipe (§7), avg_pool2d {k}x{k}",
                  lambda t, k=k, s=spec: _paper_dn(t, k, s.sigma, s.eps)))

    rows = []
    with torch.no_grad():
        for name, spec, ref_name, ref in cases:
            diff = (divisive_norm(x, spec) - ref(x)).abs().max().item()
            rows.append(EquivalenceRow(name, repr(spec), ref_name, diff, tol))
    return rows


def summarize_equivalence(rows: Sequence[EquivalenceRow]) -> dict:
    """``{"all_passed", "max_abs_diff", "rows"}`` for a results file."""
    return {"all_passed": all(r.passed for r in rows), "max_abs_diff": max(r.max_abs_diff for r in rows),
            "rows": [r.as_dict() for r in rows]}


def format_equivalence(rows: Sequence[EquivalenceRow]) -> str:
    """Rows of :func:`equivalence_table` as stable text: the bound passed, not the raw (machine-dependent) diff."""
    wp = max([len(r.preset) for r in rows] + [len("preset")])
    wr = max([len(r.reference) for r in rows] + [len("torch reference")])
    lines = [f"{'preset':<{wp}}  {'torch reference':<{wr}}  max|diff|"]
    for r in rows:
        verdict = f"< {r.tol:.0e}  pass" if r.passed else f"= {r.max_abs_diff:.1e}  FAIL"
        lines.append(f"{r.preset:<{wp}}  {r.reference:<{wr}}  {verdict}")
    return "\n".join(lines)


def format_rows(rows: Sequence[dict], columns: Sequence[str], digits: int = 3) -> str:
    """A fixed-width text table of dict rows (floats rounded to ``digits``)."""
    def cell(v):
        if isinstance(v, float):
            return f"{v:.{digits}f}" if math.isfinite(v) else "nan"
        return str(v)

    table = [[str(c) for c in columns]] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table)
