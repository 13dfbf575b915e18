"""The atlas of normalizers (issue 26): every preset of the registry placed on the two axes of the paper's Table 1.

The paper's claim is that normalizers are one operator with different fields. :func:`atlas_figure` reads the one
registry (:data:`dnlib.norms.presets.PRESETS`) and puts each preset in the cell of its summation field A
(columns) and suppression field B (rows); a preset whose module computes something beyond ``(A, B, sigma)`` is
numbered, and what it adds (``Preset.extra``) is listed under the grid. Colours tell how much of a preset its
:class:`~dnlib.norms.spec.NormSpec` says:

- black: the spec's fields and sigma say it all (BN, LN, IN, DN, ...);
- blue: the spec says it all, with one of its further knobs (``groups``, ``power``, ``sup_scale``, Gaussian
  ``weights``, ``floor``): GN, LRN, LCN;
- red: a module adds something the spec cannot express (the ``extra``): GDN's learned weights, FRN's TLU,
  EvoNorm's nonlinear numerator and max of divisors, DyT's tanh, ...

:func:`atlas_rows` is the same as data (one dict per preset), :func:`atlas_table` as a Markdown table, and
:func:`atlas_figure1` draws presets' fields like Figure 1 with their extra in the title.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..norms.presets import PRESETS, get_spec
from ..norms.spec import AXES, NormSpec
from .figures import MarkdownTable, figure1, markdown_table, new_figure

__all__ = ["field_label", "spec_knobs", "atlas_rows", "atlas_table", "atlas_figure", "atlas_figure1", "KIND_COLORS"]

#: Colour of a preset by how much its spec says (see the module docstring).
KIND_COLORS = {"fields": "#252525", "knobs": "#2171b5", "extra": "#cb181d"}
_KIND_TEXT = {"fields": "the fields and sigma say it all", "knobs": "the spec, with a further knob",
              "extra": "a module adds the numbered extra"}


def field_label(spec: NormSpec, field: str) -> str:
    """One field of ``spec`` (``"sum"`` or ``"sup"``) in words: its axes (``-`` for none), windows (``space 3x3``,
    ``channel 61``), Gaussian weights and groups (``channel/32``)."""
    axes = spec.sum_axes if field == "sum" else spec.sup_axes
    if not axes:
        return "-"
    window, weights = spec.window(field), spec.weights(field)
    parts = []
    for a in AXES:
        if a not in axes:
            continue
        s = a
        if a == "channel" and spec.groups > 1:
            s += f"/{spec.groups}"
        if a in window:
            s += f" {window[a]}x{window[a]}" if a == "space" else f" {window[a]}"
            if a in weights:
                s += " gauss"
        parts.append(s)
    return " + ".join(parts)


def _order(label: str) -> tuple:
    """Columns and rows in Table 1's order: none, per-example fields (space, channel, both), batch fields; global
    before windowed."""
    axes = [p.split(" ")[0].split("/")[0] for p in label.split(" + ")] if label != "-" else []
    windowed = any(" " in p for p in label.split(" + "))
    return ("batch" in axes, len(axes) > 0, "channel" in axes, "space" in axes, windowed, label)


def spec_knobs(spec: NormSpec) -> list:
    """The spec's settings beyond ``(A, B, sigma)``: ``groups``, ``power``, ``sup_scale``, Gaussian weights,
    ``floor``, a learned sigma (empty for BN, LN, DN, ...)."""
    knobs = []
    if spec.groups > 1:
        knobs.append(f"groups={spec.groups}")
    if spec.power != 0.5:
        knobs.append(f"power={spec.power:g}")
    if spec.sup_scale != 1.0:
        knobs.append(f"sup_scale={spec.sup_scale:g}")
    if spec.weighted:
        knobs.append("Gaussian weights")
    if spec.floor is not None:
        knobs.append(f"floor={spec.floor}")
    if spec.learn_sigma:
        knobs.append("learned sigma")
    return knobs


def atlas_rows(names: Sequence[str] | None = None) -> list:
    """One dict per preset (all of :func:`dnlib.list_norms` by default): ``name``, ``A``, ``B`` (field labels),
    ``sigma``, ``knobs`` (:func:`spec_knobs`), ``extra`` (``Preset.extra``: what a module adds beyond its spec; a
    module preset without one says so),
    ``module`` (its class name, or None) and ``kind`` (``"fields"``, ``"knobs"`` or ``"extra"``, as the colours)."""
    rows = []
    for name in PRESETS if names is None else names:
        preset, spec = PRESETS[name.lower()], get_spec(name)
        knobs = spec_knobs(spec)
        extra = preset.extra or ("" if preset.module is None else  # (a module preset that does not say what it adds)
                                 f"computed by {preset.module.__name__}; its extra is not named in the registry")
        kind = "extra" if extra else "knobs" if knobs else "fields"
        rows.append({"name": name.lower(), "A": field_label(spec, "sum"), "B": field_label(spec, "sup"),
                     "sigma": spec.sigma, "knobs": knobs, "extra": extra,
                     "module": None if preset.module is None else preset.module.__name__, "kind": kind})
    return rows


def atlas_table(names: Sequence[str] | None = None) -> MarkdownTable:
    """:func:`atlas_rows` as a Markdown table (preset, A, B, sigma, spec knobs, module, extra)."""
    rows = [(f"`{r['name']}`", r["A"], r["B"], f"{r['sigma']:g}", ", ".join(r["knobs"]) or "-",
             f"`{r['module']}`" if r["module"] else "DivisiveNorm", r["extra"] or "-") for r in atlas_rows(names)]
    return markdown_table(["preset", "A (summation)", "B (suppression)", "σ", "spec knobs", "module", "extra"], rows)


def atlas_figure(names: Sequence[str] | None = None, *, cell_width: float = 1.55, line_height: float = 0.13,
                 wrap: int = 150):
    """Every preset (default: the whole registry) in the cell of its summation field (x) and suppression field (y),
    coloured by how much its spec says; a red preset is numbered and its extra listed under the grid. Returns the
    figure."""
    rows = atlas_rows(names)
    cols = sorted({r["A"] for r in rows}, key=_order)
    lines = sorted({r["B"] for r in rows}, key=_order)
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["A"], r["B"]), []).append(r)
    depth = max(len(v) for v in cells.values())
    notes = [r for r in rows if r["kind"] == "extra"]
    number = {r["name"]: i + 1 for i, r in enumerate(notes)}
    foot = [f"{number[r['name']]} {r['name']}: {r['extra']}" for r in notes]
    foot_lines = sum(1 + len(t) // wrap for t in foot)
    grid_h = len(lines) * (0.25 + depth * line_height) + 1.4
    foot_h = 0.15 * foot_lines + 0.1
    fig = new_figure(figsize=(2.2 + cell_width * len(cols), grid_h + foot_h), layout="constrained")
    ax, note_ax = fig.subplots(2, 1, height_ratios=(grid_h, foot_h))
    note_ax.axis("off")
    ax.set_xlim(-0.5, len(cols) - 0.5)
    ax.set_ylim(-0.5, len(lines) - 0.5)
    ax.set_xticks(range(len(cols)), [c.replace(" + ", "\n+ ") for c in cols], fontsize=7)
    ax.set_yticks(range(len(lines)), lines, fontsize=7)
    ax.set_xticks([i + 0.5 for i in range(len(cols) - 1)], minor=True)
    ax.set_yticks([i + 0.5 for i in range(len(lines) - 1)], minor=True)
    ax.grid(which="minor", color="#d9d9d9", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("summation field A (centring: whose mean is subtracted)", fontsize=8)
    ax.set_ylabel("suppression field B (division: whose mean square divides)", fontsize=8)
    ax.invert_yaxis()
    for (a, b), members in cells.items():
        x, y = cols.index(a), lines.index(b)
        n = len(members)
        for k, r in enumerate(members):
            label = r["name"] + (f" σ={r['sigma']:g}" if r["sigma"] else "")
            label += f" ({number[r['name']]})" if r["name"] in number else ""
            ax.text(x, y + (k - (n - 1) / 2) * 0.8 / max(depth, 1), label, ha="center", va="center", fontsize=7,
                    color=KIND_COLORS[r["kind"]])
    handles = [ax.plot([], [], "s", color=c, label=_KIND_TEXT[k])[0] for k, c in KIND_COLORS.items()]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7, frameon=False)
    text = "\n".join(_wrap(t, wrap) for t in foot)
    note_ax.text(0.0, 1.0, text, ha="left", va="top", fontsize=6.5, color=KIND_COLORS["extra"],
                 transform=note_ax.transAxes)
    ax.set_title(f"The atlas: {len(rows)} presets on Table 1's two axes", fontsize=9, pad=18)
    return fig


def _wrap(text: str, width: int) -> str:
    out, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) + 1 > width:
            out.append(line)
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join(out + [line])


def atlas_figure1(names: Sequence[str], ncols: int = 3, **kwargs):
    """Figure 1 for any presets (:func:`~dnlib.analysis.figures.figure1` of each preset's spec, its Table-1 view),
    each panel titled with its name, its fields and the extra beyond them. Returns the figure."""
    names = list(names)
    fig = figure1(names, ncols=ncols, **kwargs)
    for ax, name in zip(fig.axes, names):
        r = atlas_rows([name])[0]
        title = f"{r['name']}: A = {r['A']}, B = {r['B']}" + (f"; + {r['extra']}" if r["extra"] else "")
        ax.set_title(_wrap(title, 46), fontsize=8, color=KIND_COLORS[r["kind"]])
    return fig
