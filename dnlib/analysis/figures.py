"""Figures of normalizers and their activations for the notebooks, drawn from the library's own objects (and the
Markdown tables the notebooks, reports and command lines print).

* :func:`draw_fields` / :func:`figure1`: the paper's Figure 1 redrawn from a :class:`~dnlib.norms.spec.NormSpec`:
  the ``N x C x H x W`` activation block, with the summation field A and the suppression field B of one unit
  highlighted. The fields are computed by :func:`field_mask` from the spec, so a new preset draws itself;
  weighted (Gaussian) windows are shaded by weight (:func:`field_weights`, e.g. ``lcn``).
* :func:`gdn_matrix`: a GDN layer's learned field, its ``gamma`` matrix (and ``beta``).
* :func:`figure2`: the paper's Figure 2, DN followed by ReLU as an activation function.
* :func:`activation_histograms`, :func:`feature_maps`, :func:`image_grid`: what the activation explorer shows.
* :func:`joint_histogram` / :func:`joint_histograms`: the paper's Table 10 joint histograms of filter pairs.
* :func:`spec_table`: presets as a Markdown table (the paper's Table 1, from the registry); :func:`markdown_table`,
  :func:`cell`, :class:`MarkdownTable`: the Markdown tables of the reports and command lines.

Curves of runs' logged metrics (``run_curves``, ``band_curves``, ``no_data``) are :mod:`dnlib.analysis.curves`.

Every figure function returns a :class:`matplotlib.figure.Figure` built without pyplot (so a notebook shows it once,
as the cell's value, and nothing leaks into pyplot's global state), or draws into a given ``ax``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..norms.presets import get_spec
from ..norms.spec import NormSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "field_mask", "field_weights", "gdn_matrix", "draw_fields", "figure1", "figure2",
           "activation_histograms", "feature_maps", "image_grid", "joint_histogram", "joint_histograms",
           "spec_table", "markdown_table", "cell", "MarkdownTable", "FIELD_COLORS"]

def new_figure(**kwargs) -> Figure:
    """A Figure outside pyplot's state (a notebook shows it once, as the cell's value). matplotlib is imported here,
    on the first figure, not with this module: the experiments' command lines (which import the table helpers below)
    start without it (0.5 s of each run's start-up; tests/test_layers.py)."""
    from matplotlib.figure import Figure

    _enable_ipython_display()
    return Figure(**kwargs)


def _enable_ipython_display() -> None:
    """In an IPython kernel whose matplotlib backend is inline, register the formatter that displays a
    returned Figure as PNG (pyplot would do this on import, but the figures here never go through pyplot)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    from matplotlib.figure import Figure

    ip = get_ipython()
    if ip is None or Figure in ip.display_formatter.formatters["image/png"].type_printers:
        return
    import matplotlib

    backend = (matplotlib.get_backend(auto_select=False) if matplotlib.__version_info__ >= (3, 10)
               else matplotlib.rcParams._get("backend"))
    if backend in ("inline", "module://matplotlib_inline.backend_inline"):
        from matplotlib_inline.backend_inline import configure_inline_support

        configure_inline_support(ip, backend)


FIELD_COLORS = {"both": "#8c6bb1", "sum": "#4292c6", "sup": "#fdae6b", "none": "#f7f7f7", "center": "#d7301f"}


def _as_spec(spec) -> tuple[NormSpec, str]:
    if isinstance(spec, str):
        return get_spec(spec), spec
    return spec, ""


# ------------------------------------------------------------------------------------------ Figure 1
def field_mask(spec: NormSpec, shape: Sequence[int], center: Sequence[int], field: str = "sum",
               groups: int | None = None) -> np.ndarray:
    """Boolean ``(N, C, H, W)`` mask of the units in field ``"sum"`` (A) or ``"sup"`` (B) of unit ``center``.

    An axis the field pools is covered entirely, or within its window (``|offset| <= k // 2``); an axis it
    does not pool is covered only at the centre's own index. A field that pools ``"channel"`` with
    ``spec.groups > 1`` covers the centre's group; ``groups`` overrides the number of groups drawn (a
    picture with 4 channels cannot show 32 groups). An empty field is all False.
    """
    n, c, h, w = shape
    n0, c0, h0, w0 = center
    axes = spec.sum_axes if field == "sum" else spec.sup_axes
    window = spec.window(field)
    if not axes:
        return np.zeros(shape, dtype=bool)
    nn_ = np.arange(n) if "batch" in axes else np.array([n0])
    if "channel" in axes:
        g = groups if groups is not None else spec.groups
        if g > 1:
            size = max(1, c // g)
            cc = np.arange(c)[np.arange(c) // size == c0 // size]
        elif "channel" in window:
            r = window["channel"] // 2
            cc = np.arange(max(0, c0 - r), min(c, c0 + r + 1))
        else:
            cc = np.arange(c)
    else:
        cc = np.array([c0])
    if "space" in axes:
        r = window.get("space", 0) // 2
        hh = np.arange(max(0, h0 - r), min(h, h0 + r + 1)) if "space" in window else np.arange(h)
        ww = np.arange(max(0, w0 - r), min(w, w0 + r + 1)) if "space" in window else np.arange(w)
    else:
        hh, ww = np.array([h0]), np.array([w0])
    mask = np.zeros(shape, dtype=bool)
    mask[np.ix_(nn_, cc, hh, ww)] = True
    return mask


def field_weights(spec: NormSpec, shape: Sequence[int], center: Sequence[int], field: str = "sum",
                  groups: int | None = None) -> np.ndarray:
    """Float ``(N, C, H, W)`` weights of every unit in the field mean of unit ``center``: 0 outside the field
    (:func:`field_mask`), inside it the product over the windowed axes of the window's weight of the unit's offset
    (Gaussian ``exp(-o^2 / (2 width^2))`` for a weighted window, 1 for a box), normalized to sum 1 over the units
    inside the map (the ``"valid"`` border's weighted mean)."""
    mask = field_mask(spec, shape, center, field, groups)
    w = mask.astype(float)
    widths = spec.weights(field)
    for axis, dims in (("channel", (1,)), ("space", (2, 3))):
        width = widths.get(axis)
        if not width:
            continue
        for d in dims:
            o = np.arange(shape[d]) - center[d]
            w = w * np.exp(-o ** 2 / (2.0 * width ** 2)).reshape([-1 if i == d else 1 for i in range(4)])
    total = w.sum()
    return w / total if total else w


def gdn_matrix(module, ax=None, *, title: str | None = None, decades: float = 3.0):
    """Draw a GDN layer's learned suppression field: the effective ``gamma`` (``C x C``, row i = the weights of
    the channels that divide channel i), the range of ``beta`` in the title. ``module``: a
    :class:`~dnlib.norms.gdn.GDN` (e.g. ``make_norm("gdn", 16)``, or a layer of a trained model). Returns the figure.

    The colours are on a log scale over ``decades`` decades below the largest weight, and weights below that
    (the zeros of an untrained off-diagonal included) are light grey: a linear scale lets one large weight (a short
    training grew one diagonal entry from 0.1 to 6.6) turn every other entry the same dark colour. The title names
    the largest weight and where it is."""
    from matplotlib.colors import LogNorm

    gamma = module.effective_gamma.detach().float().cpu().numpy()
    beta = module.effective_beta.detach().float().cpu().numpy()
    if ax is None:
        fig = new_figure(figsize=(4.6, 3.8), layout="constrained")
        ax = fig.add_subplot()
    fig = ax.figure
    top = float(gamma.max()) if gamma.max() > 0 else 1.0
    floor = top / 10 ** decades
    cmap = _cmap("viridis").with_extremes(under="0.9", bad="0.9")   # (bad: LogNorm masks exact zeros)
    im = ax.imshow(gamma, cmap=cmap, norm=LogNorm(vmin=floor, vmax=top))
    fig.colorbar(im, ax=ax, label="gamma_ij (log scale)", shrink=0.85, extend="min")
    ax.set(xlabel="channel j (suppressing)", ylabel="channel i (normalized)")
    kind = "IGDN" if module.inverse else "GDN"
    kind += "1" if module.simplified else ""
    i, j = np.unravel_index(int(gamma.argmax()), gamma.shape)
    ax.set_title(title if title is not None else f"{kind} gamma ({gamma.shape[0]} channels): largest {top:.3g} at "
                 f"({i}, {j}),\ngrey below {floor:.2g}; beta in [{beta.min():.3g}, {beta.max():.3g}]", fontsize=9)
    return fig


def _shade(color: str, weight: float) -> tuple:
    """``color`` blended towards the empty-unit colour as ``weight`` (0-1) falls."""
    from matplotlib.colors import to_rgb
    c, e = np.array(to_rgb(color)), np.array(to_rgb(FIELD_COLORS["none"]))
    return tuple(e + (c - e) * (0.15 + 0.85 * weight))


def draw_fields(spec, ax=None, *, n_examples: int = 2, channels: int = 4, height: int = 7, width: int = 7,
                center: Sequence[int] | None = None, title: str | None = None, legend: bool = True):
    """Draw the ``N x C x H x W`` block with the summation (A) and suppression (B) fields of one unit.

    Each example is a stack of its channel maps (front map = channel 0, drawn in perspective), examples side
    by side. Blue: A only; orange: B only; purple: both; red outline: the unit being normalized. A weighted
    (Gaussian) window is shaded by weight (:func:`field_weights`, relative to the field's largest weight; where
    A and B overlap, the larger of the two).
    ``spec`` is a :class:`NormSpec` or a preset name. Returns the figure (a new one when ``ax`` is None).
    """
    spec, name = _as_spec(spec)
    if ax is None:
        fig = new_figure(figsize=(4.2, 3.2), layout="constrained")
        ax = fig.add_subplot()
    fig = ax.figure
    shape = (n_examples, channels, height, width)
    center = tuple(center) if center is not None else (0, min(1, channels - 1), height // 2, width // 2)
    groups = min(spec.groups, 2) if spec.groups > 1 else None
    a = field_mask(spec, shape, center, "sum", groups)
    b = field_mask(spec, shape, center, "sup", groups)
    shade = None
    if spec.weighted:
        wa, wb = (field_weights(spec, shape, center, f, groups) for f in ("sum", "sup"))
        shade = np.maximum(wa / max(wa.max(), 1e-300), wb / max(wb.max(), 1e-300))
    shear, squash, gap_c, gap_n = 0.6, 0.45, 1.2, 3.0
    depth = squash * height + gap_c
    polys, colors = [], []
    for n in range(n_examples):
        x_off = n * (width + shear * squash * height + gap_n)
        for c in reversed(range(channels)):  # back maps first
            y_off = c * depth
            for i in range(height):
                for j in range(width):
                    y0 = (height - 1 - i) * squash
                    corners = [(j, y0), (j + 1, y0), (j + 1 + shear * squash, y0 + squash),
                               (j + shear * squash, y0 + squash)]
                    corners = [(x + shear * yy + x_off, yy + y_off) for x, yy in corners]
                    polys.append(corners)
                    in_a, in_b = a[n, c, i, j], b[n, c, i, j]
                    key = "both" if in_a and in_b else "sum" if in_a else "sup" if in_b else "none"
                    colors.append(FIELD_COLORS[key] if shade is None or key == "none" else
                                  _shade(FIELD_COLORS[key], shade[n, c, i, j]))
                    if (n, c, i, j) == center:
                        center_poly = corners
    from matplotlib.collections import PolyCollection

    ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="#636363", linewidths=0.4))
    ax.add_collection(PolyCollection([center_poly], facecolors="none", edgecolors=FIELD_COLORS["center"], linewidths=2))
    for n in range(n_examples):
        x_off = n * (width + shear * squash * height + gap_n)
        ax.text(x_off + width / 2, -0.9, f"example {n + 1}", ha="center", va="top", fontsize=8)
    ax.text(-0.6, channels * depth / 2, f"C = {channels} maps", rotation=90, ha="right", va="center", fontsize=7)
    ax.autoscale_view()
    ax.set_aspect("equal")
    ax.axis("off")
    label = title if title is not None else \
        (f"{name}: " if name else "") + repr(spec).replace("NormSpec(", "").rstrip(")")
    if groups:
        label += f"\n({spec.groups} groups drawn as {groups})"
    if shade is not None:
        label += " (shaded by weight)"
    ax.set_title(_wrap(label, 44), fontsize=9)
    if legend:
        ax.legend(handles=_field_handles(), loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8,
                  frameon=False)
    return fig


def _field_handles() -> list:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=FIELD_COLORS[k], edgecolor="#636363", label=t) for k, t in
               (("sum", "A (summation) only"), ("sup", "B (suppression) only"), ("both", "A and B"))]
    handles.append(Patch(facecolor="none", edgecolor=FIELD_COLORS["center"], label="unit normalized"))
    return handles


def _wrap(text: str, width: int) -> str:
    out, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) + 1 > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(out + [line])


def figure1(specs: Sequence = ("bn", "ln", "dn"), ncols: int = 3, **kwargs) -> Figure:
    """The paper's Figure 1 for any presets or specs: one :func:`draw_fields` panel each, one legend below."""
    specs = list(specs)
    nrows = -(-len(specs) // ncols)
    fig = new_figure(figsize=(4.2 * min(ncols, len(specs)), 3.4 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, min(ncols, len(specs)))).ravel()
    for ax, spec in zip(axes, specs):
        draw_fields(spec, ax, **{"legend": False, **kwargs})
    for ax in axes[len(specs):]:
        ax.axis("off")
    fig.legend(handles=_field_handles(), loc="outside lower center", ncol=4, fontsize=10, frameon=False)
    return fig


# ------------------------------------------------------------------------------------------ Figure 2
def figure2(sigmas: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0), fixed: float = 0.5,
            x: torch.Tensor | None = None, spec: NormSpec | None = None) -> Figure:
    """The paper's Figure 2: DN followed by ReLU as an activation function (two units, one at ``fixed``).

    Left: unit 1's output as its own input is swept, one curve per sigma (small sigma saturates, large sigma
    approaches a scaled ReLU). Right: unit 2's output (input fixed) as a function of unit 1's input: the
    units modulate each other. Computed by :func:`dnlib.analysis.stats.dn_relu_response`.
    """
    from .stats import dn_relu_response

    x = torch.linspace(-2, 3, 501, dtype=torch.float64) if x is None else torch.as_tensor(x, dtype=torch.float64)
    fig = new_figure(figsize=(9, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    cmap = _cmap("viridis")
    for k, s in enumerate(sigmas):
        y = dn_relu_response(x, s, fixed, spec)
        color = cmap(k / max(1, len(sigmas) - 1))
        left.plot(x, y[:, 0], color=color, label=f"σ = {s:g}")
        right.plot(x, y[:, 1], color=color, label=f"σ = {s:g}")
    left.set(xlabel="input of unit 1", ylabel="output of unit 1", title=f"Effect of σ (unit 2 input = {fixed:g})")
    right.set(xlabel="input of unit 1", ylabel="output of unit 2", title=f"Unit 1 modulates unit 2 (input {fixed:g})")
    for ax in (left, right):
        ax.axvline(fixed, color="0.7", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    return fig


def _cmap(name):
    import matplotlib

    return matplotlib.colormaps[name]


# -------------------------------------------------------------------------------- explorer figures
def activation_histograms(y: torch.Tensor, bins: int = 80, axes=None, title: str = "",
                          limit: float | None = None) -> Figure:
    """Histograms of normalized responses before the ReLU and after it (the zero spike reported as a fraction).

    ``limit``: fixed axes, the same for every ``y``: bins over ``[-limit, limit]`` (after the ReLU ``(0, limit]``),
    counts from 1 to the number of responses (log), the count of responses beyond the range in the title. None: the
    axes fit ``y``."""
    y = y.detach().double().flatten()
    r = y.clamp_min(0)
    if axes is None:
        fig = new_figure(figsize=(8, 2.8), layout="constrained")
        axes = fig.subplots(1, 2)
    fig = axes[0].figure
    zeros = (r == 0).double().mean().item()
    before, after = f"{title} before ReLU".strip(), f"after ReLU: {zeros:.0%} zeros (not drawn)"
    if limit is None:
        axes[0].hist(y.numpy(), bins=bins, color="#4292c6")
        axes[1].hist(r[r > 0].numpy(), bins=bins, color="#fd8d3c")
    else:
        edges = np.linspace(-limit, limit, bins + 1)
        axes[0].hist(y.numpy(), bins=edges, color="#4292c6")
        axes[1].hist(r[r > 0].numpy(), bins=edges[bins // 2:], color="#fd8d3c")
        beyond = int((y.abs() > limit).sum())
        if beyond:
            before += f" ({beyond} beyond ±{limit:g})"
        axes[0].set_xlim(-limit, limit)
        axes[1].set_xlim(0, limit)
        for ax in axes:
            ax.set_ylim(0.8, max(len(y), 1))
    axes[0].set(title=before, xlabel="response", ylabel="count")
    axes[1].set(title=after, xlabel="response")
    for ax in axes:
        ax.set_yscale("log")
    return fig


def feature_maps(y: torch.Tensor, index: int = 0, n_maps: int = 16, ncols: int = 8, fig: Figure | None = None,
                 title: str = "", limit: float | None = None) -> Figure:
    """The first ``n_maps`` channel maps of example ``index`` of ``(N, C, H, W)`` responses, one colour scale:
    ``[-limit, limit]`` (values beyond take the end colours), or fitted to the maps' largest ``|y|`` when None."""
    maps = y.detach()[index, :n_maps].double().numpy()
    nrows = -(-len(maps) // ncols)
    fig = fig if fig is not None else new_figure(figsize=(1.1 * ncols, 1.15 * nrows + 0.3))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, gridspec_kw=dict(left=0.01, right=0.99, bottom=0.01,
                                                                      top=0.86, wspace=0.05, hspace=0.2)))
    axes = axes.ravel()
    lim = float(limit) if limit is not None else float(np.abs(maps).max()) or 1.0
    for k, ax in enumerate(axes):
        ax.axis("off")
        if k < len(maps):
            ax.imshow(maps[k], cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{k}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def image_grid(images, ncols: int = 8, titles: Sequence[str] | None = None) -> Figure:
    """uint8 or float ``(N, 3, H, W)`` images in a grid."""
    x = torch.as_tensor(np.asarray(images)).detach()
    x = x.float() / 255 if x.dtype == torch.uint8 else (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
    n = len(x)
    nrows = -(-n // ncols)
    fig = new_figure(figsize=(1.1 * ncols, 1.15 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for k, ax in enumerate(axes):
        ax.axis("off")
        if k < n:
            ax.imshow(x[k].permute(1, 2, 0).numpy())
            if titles is not None:
                ax.set_title(titles[k], fontsize=6)
    return fig


# -------------------------------------------------------------------------------------- Table 10
def joint_histogram(a: torch.Tensor, b: torch.Tensor, bins: int = 40, ax=None, title: str | None = None,
                    labels: Sequence[str] = ("filter i", "filter j")):
    """Joint histogram (log counts) of two filters' responses at the same locations (one Table 10 panel)."""
    a = torch.as_tensor(a).detach().double().flatten().numpy()
    b = torch.as_tensor(b).detach().double().flatten().numpy()
    if ax is None:
        fig = new_figure(figsize=(2.8, 2.8), layout="constrained")
        ax = fig.add_subplot()
    counts, xe, ye = np.histogram2d(a, b, bins=bins)
    ax.pcolormesh(xe, ye, np.log1p(counts.T), cmap="magma_r")
    ax.set(xlabel=labels[0], ylabel=labels[1])
    if title:
        ax.set_title(title, fontsize=8)
    return ax.figure


def joint_histograms(z: torch.Tensor, pairs=None, n_pairs: int = 4, bins: int = 40, seed: int = 0,
                     label: str = "", mi_bins: int = 20, max_samples: int | None = 20000) -> Figure:
    """Table 10 panels: joint histograms of ``n_pairs`` random filter pairs of ``(N, C, ...)`` responses.

    Each title gives that pair's correlation r and MI (nats, ``mi_bins`` bins, see
    :func:`dnlib.analysis.stats.pairwise_corr_mi`); the figure title the mean |r| and MI over all pairs, computed as the
    activation explorer's readout computes them (:class:`dnlib.notebook.widgets.ActivationExplorer`, same defaults).
    """
    from .stats import as_samples, pairwise_corr_mi

    shown = pairwise_corr_mi(z, pairs=pairs, n_pairs=n_pairs, bins=mi_bins, max_samples=max_samples, seed=seed)
    overall = pairwise_corr_mi(z, bins=mi_bins, max_samples=max_samples, seed=seed)
    zc = as_samples(z, max_samples=max_samples, seed=seed)
    fig = new_figure(figsize=(2.6 * len(shown.pairs), 2.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(shown.pairs)))
    for k, (ax, (i, j)) in enumerate(zip(axes, shown.pairs.tolist())):
        joint_histogram(zc[i], zc[j], bins=bins, ax=ax, labels=(f"filter {i}", f"filter {j}"),
                        title=f"r = {shown.corr_per_pair[k]:.2f}, MI = {shown.mi_per_pair[k]:.2f}")
    fig.suptitle(f"{label} mean over all {len(overall.pairs)} pairs: |r| = {overall.corr:.4f}, "
                 f"MI = {overall.mi:.4f} nats".strip(), fontsize=9)
    return fig


# ------------------------------------------------------------------------------------------- tables
class MarkdownTable(str):
    """A string that Jupyter renders as Markdown."""

    def _repr_markdown_(self) -> str:
        return str(self)


def cell(value, spec: str = "") -> str:
    """A table cell: ``format(value, spec)`` for a float, ``str(value)`` otherwise, ``"—"`` for None."""
    return "—" if value is None else format(value, spec) if isinstance(value, float) else str(value)


def markdown_table(head: Sequence[str], rows, title: str = "") -> MarkdownTable:
    """A Markdown table: the header cells ``head``, then one line per item of ``rows`` (a sequence of cells; None
    shows as ``—``), under a bold ``title`` when given."""
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return MarkdownTable("\n".join(lines))


def spec_table(names: Sequence[str] | None = None) -> MarkdownTable:
    """Presets as a Markdown table: summation field A, suppression field B, sigma, power, groups, border."""
    from ..norms.presets import PRESETS

    names = list(PRESETS) if names is None else list(names)

    def field(axes, window, weights=()):
        if not axes:
            return "-"
        w, g = dict(window), dict(weights)
        return " + ".join((f"{a} [{w[a]}" + (f", Gaussian {g[a]:g}]" if a in g else "]")) if a in w else a
                          for a in ("batch", "channel", "space") if a in axes)

    lines = ["| preset | A (summation) | B (suppression) | σ | power | groups | what |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        s, extra = get_spec(name), PRESETS[name].extra  # (a module preset: its spec is its Table-1 view)
        lines.append(f"| `{name}` | {field(s.sum_axes, s.sum_window, s.sum_weights)} | "
                     f"{field(s.sup_axes, s.sup_window, s.sup_weights)} | {s.sigma:g} | {s.power:g} | {s.groups} | "
                     f"{PRESETS[name].doc}{'; beyond the fields: ' + extra if extra else ''} |")
    return MarkdownTable("\n".join(lines))
