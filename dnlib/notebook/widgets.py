"""Widget builders for the notebooks: the activation explorer of ``notebooks/02_activation_explorer.ipynb``.

:func:`activation_explorer` passes real images through a first conv layer (5 x 5, 32 filters, like the paper's
CIFAR CNN, PAPER.md §3.1), normalizes the responses with a preset whose knobs are ipywidgets controls
(preset, sigma, spatial window, channel window, which field the windows apply to, L1 alpha), and reports the
statistics of :mod:`dnlib.analysis.stats` live. Everything is addressable from code, so it is tested headless::

    ex = activation_explorer(preset="bn", sigma=0.0)
    ex.controls["sigma"].value = 1.0      # or ex.set(sigma=1.0); observers fire synchronously
    ex.result["sparsity"], ex.result["l1_penalty"]

Layer: notebook. The explorer's inputs (the images, their preprocessing, the first conv layer) are
:mod:`dnlib.notebook.explorer_inputs`; :func:`explorer_images` and :func:`first_conv` stay importable from here, where
``notebooks/02_activation_explorer.ipynb`` and the README call them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..analysis.stats import activation_stats, linearity, pairwise_corr_mi, suppression_mean_square
from ..norms.functional import field_mean
from ..norms.presets import PRESETS, get_spec, list_norms, make_norm
from ..norms.sparse import l1_penalty
from ..norms.spec import NormSpec
from .explorer_inputs import explorer_images, first_conv, preprocess

# explorer_images and first_conv: re-exported from explorer_inputs (the notebook and the README call them here)
__all__ = ["explorer_images", "first_conv", "explorer_spec", "preset_windows", "ActivationExplorer",
           "activation_explorer", "preset_settings", "SPACE_WINDOWS", "CHANNEL_WINDOWS", "STAT_LABELS", "GN_GROUPS",
           "FIXED_LIMITS", "SLIDER_RANGES", "explorer_presets"]

#: Window choices: (label, size); size 0 = the whole axis (no window).
SPACE_WINDOWS = [("whole map", 0), ("3 x 3", 3), ("5 x 5", 5), ("7 x 7", 7), ("9 x 9", 9), ("15 x 15", 15)]
CHANNEL_WINDOWS = [("all channels", 0), ("3", 3), ("5", 5), ("9", 9), ("15", 15), ("31", 31)]
WINDOW_FIELDS = [("both", "both"), ("summation", "sum"), ("suppression", "sup")]
#: The sliders' ranges (inclusive). A value outside is refused by the explorer (its constructor and
#: :meth:`~ActivationExplorer.set`), not capped to the slider's end as a bare slider would; notebook 02's parameter
#: rules give the same ``min``/``max``, so the suite refuses ``-p sigma 3`` before running. ``compute()`` and
#: ``sweep()`` take any value (off-screen, and their results record what they used).
SLIDER_RANGES = {"sigma": (0.0, 2.0), "alpha": (0.0, 0.05)}
#: Groups of the explorer's ``gn``: the preset's 32 groups on the first layer's 32 channels would be ``in``.
GN_GROUPS = 8
#: The explorer figure's axes with "fixed scale" on: the histograms cover responses in [-6, 6] and the feature maps'
#: colours [-3, 3]. Normalized responses at sigma = 0 have unit mean square, so the fixed scale holds them, and a
#: larger sigma visibly shrinks them (with the scale fitted to each result, only the tick labels would change).
FIXED_LIMITS = {"histogram": 6.0, "maps": 3.0}
#: The statistics shown in the explorer's readout, in order: key -> label.
STAT_LABELS = {
    "sparsity": "sparsity (zeros after ReLU)",
    "sparsity_min": "zeros of one filter: fewest",
    "sparsity_max": "zeros of one filter: most",
    "kurtosis": "kurtosis (excess, before ReLU)",
    "relu_kurtosis": "kurtosis after ReLU",
    "mean_square": "mean square of y",
    "field_mean_square": "E_B[y²] (1 for a global field at σ=0)",
    "linearity": "linearity R² of y vs z − E_A z",
    "corr": "mean |corr| over all filter pairs",
    "mi": "mean MI over all filter pairs (nats)",
    "l1_penalty": "L1 penalty α·mean|z − E_A z|",
}


def explorer_spec(preset: str, sigma: float, space_window: int = 0, channel_window: int = 0,
                  window_field: str = "both") -> tuple[NormSpec, list[str]]:
    """The spec the explorer's controls describe, and notes on controls that do not apply.

    Window sizes of 0 (or 1) pool the whole axis. ``window_field`` (``"both"``, ``"sum"``, ``"sup"``) says which
    field gets the windows; the other is pooled over its whole axes. A window on an axis the field does not
    pool (e.g. a spatial window for LRN) or a channel window with groups (GN) is ignored, with a note. ``gn``
    pools :data:`GN_GROUPS` groups (its preset's 32 groups on the explorer's 32 channels would equal ``in``), and a
    window standing in for a preset's own size that the sliders do not offer (``dn-1d``'s 61 channels: 31, the
    nearest, :func:`preset_windows`) is used; both with a note.
    """
    if window_field not in ("both", "sum", "sup"):
        raise ValueError(f"window_field must be 'both', 'sum' or 'sup', got {window_field!r}")
    base = get_spec(preset)
    notes = []
    if base.groups > 1:
        if base.groups != GN_GROUPS:
            notes.append(f"{preset}: {GN_GROUPS} groups here, not the preset's {base.groups} (that many groups of the "
                         f"explorer's 32 channels would be instance norm, in)")
        base = base.replace(groups=GN_GROUPS)
    own = base.window("sup") or base.window("sum")
    for axis, size, options in (("space", space_window, SPACE_WINDOWS), ("channel", channel_window, CHANNEL_WINDOWS)):
        k = own.get(axis, 0)
        if k and k not in [v for _, v in options] and size == _nearest(k, options):
            notes.append(f"{axis} window {size} for {preset}'s own {k}: the nearest of the slider's options")
    wanted = {a: k for a, k in (("space", space_window), ("channel", channel_window)) if k and k > 1}
    if "channel" in wanted and base.groups > 1:
        notes.append(f"channel window ignored: {preset} pools channels within groups")
        wanted.pop("channel")
    fields = {"sum": base.sum_axes, "sup": base.sup_axes}
    chosen = ("sum", "sup") if window_field == "both" else (window_field,)
    windows = {f: ({a: k for a, k in wanted.items() if a in fields[f]} if f in chosen else {}) for f in fields}
    for axis in wanted:
        if not any(axis in windows[f] for f in chosen):
            notes.append(f"{axis} window ignored: {preset}'s {'/'.join(chosen)} field does not pool {axis}")
    spec = base.replace(sigma=float(sigma), sum_window=windows["sum"], sup_window=windows["sup"])
    return spec, notes


# ----------------------------------------------------------------------------------------- explorer
class ActivationExplorer:
    """Controls, the computation behind them, and the latest result; display it in a notebook.

    Attributes:
        controls: ``{name: widget}`` for ``preset``, ``sigma``, ``space_window``, ``channel_window``,
            ``window_field``, ``alpha``; setting a widget's ``.value`` recomputes synchronously. A slider caps a
            value beyond its ends (:data:`SLIDER_RANGES`) as sliders do; the constructor and :meth:`set` refuse it.
        fixed_scale: the "fixed scale" checkbox (on by default): the figure's axes and colours stay at
            :data:`FIXED_LIMITS` as the controls move, instead of fitting each result.
        result: the statistics of the latest computation: of the controls (shown in the readout), or of a direct
            :meth:`compute` call (see there).
        z: first-layer responses ``(N, C, H, W)`` before normalization (fixed); ``y``: the normalized responses
            (before ReLU) of :attr:`result`; ``spec``: its spec; ``norm``: its module.
        widget: the ``VBox`` that is displayed: the controls, the live figure right under them, then the readout.
        pre_pairs: the pair statistics of ``z`` (:func:`dnlib.analysis.stats.pairwise_corr_mi` over all filter pairs, as
        the
            Table 10 figure :func:`dnlib.analysis.figures.joint_histograms` computes them, so the two report one
            number).
    """

    def __init__(self, images: torch.Tensor, conv: nn.Conv2d, *, source: str = "", preset: str = "dn",
                 sigma: float = 0.5, space_window: int | None = None, channel_window: int | None = None,
                 window_field: str | None = None, alpha: float = 0.0, bins: int = 20, n_pairs: int | None = None,
                 max_samples: int | None = 20000, seed: int = 0, live_plots: bool = True,
                 inputs: str = "standardized", fixed_scale: bool = True):
        import ipywidgets as W

        self.images, self.source, self.seed, self.inputs = images, source, seed, inputs
        self.bins, self.n_pairs, self.max_samples = bins, n_pairs, max_samples
        for name, value in (("sigma", sigma), ("alpha", alpha)):
            _check_slider_range(name, value)
        with torch.no_grad():
            self.z = conv(preprocess(images, inputs))
        pre = pairwise_corr_mi(self.z, n_pairs=n_pairs, bins=bins, max_samples=max_samples, seed=seed)
        self.pre_pairs = pre
        self.live_plots = live_plots
        self._holding = False
        self._shown: dict | None = None  # the result the readout and the live figure show (the controls')
        style = {"description_width": "110px"}  # one width for every description: the columns line up
        wide = W.Layout(width="440px")  # room for the slider and a full readout ("all channels", "whole map")
        names = explorer_presets()
        (sigma_lo, sigma_hi), (alpha_lo, alpha_hi) = SLIDER_RANGES["sigma"], SLIDER_RANGES["alpha"]
        self.controls = {
            "preset": W.Dropdown(options=names, value=preset, description="preset", style=style,
                                 layout=W.Layout(width="260px")),
            "sigma": W.FloatSlider(value=sigma, min=sigma_lo, max=sigma_hi, step=0.05, description="σ", style=style,
                                   continuous_update=False, layout=wide),
            "space_window": W.SelectionSlider(options=SPACE_WINDOWS, value=0, description="spatial window", style=style,
                                              continuous_update=False, layout=wide),
            "channel_window": W.SelectionSlider(options=CHANNEL_WINDOWS, value=0, description="channel window",
                                                style=style, continuous_update=False, layout=wide),
            "window_field": W.ToggleButtons(options=WINDOW_FIELDS, value="both", description="windows on",
                                            style={**style, "button_width": "90px"}),
            "alpha": W.FloatSlider(value=alpha, min=alpha_lo, max=alpha_hi, step=0.001, readout_format=".3f",
                                   description="L1 α", style=style, continuous_update=False, layout=wide),
        }
        self.fixed_scale = W.Checkbox(value=fixed_scale, description="fixed scale", indent=False,
                                      layout=W.Layout(width="120px", margin="0 0 0 16px"))
        self.readout = W.HTML()
        self.plots = W.Output()
        self._set_windows_from_preset(preset, sigma=False)  # the sigma argument wins at the start
        overrides = {k: v for k, v in (("space_window", space_window), ("channel_window", channel_window),
                                       ("window_field", window_field)) if v is not None}
        for name, value in overrides.items():
            self.controls[name].value = value
        for widget in self.controls.values():
            widget.observe(self._on_change, names="value")
        self.fixed_scale.observe(lambda change: self._redraw(), names="value")
        gap = W.Layout(grid_gap="0 32px")  # the sliders' readouts ("whole map") clear the next label
        self.widget = W.VBox([W.HBox([self.controls["preset"], self.controls["window_field"], self.fixed_scale]),
                              W.HBox([self.controls["sigma"], self.controls["alpha"]], layout=gap),
                              W.HBox([self.controls["space_window"], self.controls["channel_window"]], layout=gap),
                              self.plots, self.readout])
        self.update()

    # --- the computation ------------------------------------------------------------------------
    @property
    def values(self) -> dict:
        """The current control values by name."""
        return {name: w.value for name, w in self.controls.items()}

    def compute(self, preset: str, sigma: float, space_window: int | None = None,
                channel_window: int | None = None, window_field: str | None = None, alpha: float = 0.0) -> dict:
        """Normalize ``self.z`` with these settings and return the statistics, off-screen.

        Windows left as None are the preset's own (:func:`preset_windows`). :attr:`result`, :attr:`y`, :attr:`spec`
        and :attr:`norm` are set to this computation together, so :meth:`figure` draws it under its own title; the
        controls and the readout are not touched, and the live figure shows the controls' setting (a redraw
        recomputes it). :meth:`sweep` leaves all four as they were.

        Keys: the settings; ``spec`` (repr); ``mean``, ``std``, ``mean_square``, ``kurtosis`` (excess) of the
        normalized responses ``y``; ``sparsity``, ``relu_mean``, ``relu_kurtosis`` of ``relu(y)``;
        ``field_mean_square`` (mean of ``E_B[y^2]``, nan without division); ``linearity`` (R^2 of ``y`` against
        ``v = z - E_A z``); ``corr``/``mi`` between filter pairs of ``y`` and ``corr_pre``/``mi_pre`` of ``z``;
        ``inputs`` (:func:`preprocess`); ``sparsity_min``/``sparsity_max``
        (:func:`dnlib.analysis.stats.activation_stats`); ``l1_penalty``: what this site would add to a training loss,
        ``alpha * mean|z - E_A z|`` (:func:`dnlib.l1_penalty`: the term :func:`dnlib.sparse_penalty` returns after one
        training forward with gradients; this forward runs under ``no_grad``, which records none); ``notes``;
        ``source``.
        """
        own = preset_windows(preset)
        space_window = own["space_window"] if space_window is None else space_window
        channel_window = own["channel_window"] if channel_window is None else channel_window
        window_field = own["window_field"] if window_field is None else window_field
        spec, notes = explorer_spec(preset, sigma, space_window, channel_window, window_field)
        norm = make_norm(spec, self.z.shape[1], affine=False, alpha=float(alpha), track_running_stats=False)
        norm.train()
        with torch.no_grad():
            y = norm(self.z)
            penalty = l1_penalty(self.z, spec, float(alpha)).item()
            v = self.z - field_mean(self.z, spec)
        pairs = pairwise_corr_mi(y, pairs=self.pre_pairs.pairs, bins=self.bins, max_samples=self.max_samples,
                                 seed=self.seed)
        result = {"preset": preset, "sigma": float(sigma), "space_window": space_window,
                  "channel_window": channel_window, "window_field": window_field, "alpha": float(alpha),
                  "spec": repr(spec), **activation_stats(y),
                  "field_mean_square": suppression_mean_square(y, spec).mean().item() if spec.divide else math.nan,
                  "linearity": linearity(v, y), "corr": pairs.corr, "mi": pairs.mi,
                  "corr_pre": self.pre_pairs.corr, "mi_pre": self.pre_pairs.mi, "inputs": self.inputs,
                  "l1_penalty": penalty,
                  "notes": notes, "source": self.source}
        self.result, self.spec, self.norm, self.y = result, spec, norm, y  # one computation: figure() draws it
        return result

    def update(self) -> dict:
        """Recompute from the controls, refresh the readout (and plots in a live kernel); return the result."""
        self.result = self._shown = self.compute(**self.values)
        self.readout.value = self._html(self.result)
        self._redraw()
        return self.result

    def _redraw(self) -> None:
        """Redraw the live figure (in a kernel, with live plots on) for the controls' setting: after a
        :meth:`compute` of another setting, recompute the controls' one first."""
        if self.result is not self._shown:
            self.update()
            return
        if self.live_plots and _in_kernel():
            from IPython.display import clear_output, display

            with self.plots:
                clear_output(wait=True)
                display(self.figure())

    def set(self, **values) -> dict:
        """Set several controls at once (one recomputation); return the new result."""
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise KeyError(f"unknown control {unknown[0]!r}; controls are {list(self.controls)}")
        for name, value in values.items():
            _check_slider_range(name, value)
        self._holding = True
        try:
            if "preset" in values:
                self.controls["preset"].value = values.pop("preset")
                self._set_windows_from_preset(self.controls["preset"].value)  # then explicit values win
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._holding = False
        return self.update()

    def sweep(self, name: str, values: Sequence[Any]) -> list[dict]:
        """The result for each value of one control, the others as they are (a preset brings its own sigma and
        windows).

        Computed off-screen: the controls, the readout and :attr:`result` are left as they were.
        """
        if name not in self.controls:
            raise KeyError(f"unknown control {name!r}; controls are {list(self.controls)}")
        saved = (self.result, self.spec, self.norm, self.y)
        rows = []
        for value in values:
            settings = {**self.values, name: value}
            if name == "preset":
                settings.update(preset_settings(value))
            rows.append(self.compute(**settings))
        self.result, self.spec, self.norm, self.y = saved
        return rows

    # --- display ----------------------------------------------------------------------------------
    def figure(self, n_maps: int = 16, dpi: int = 100, fixed_scale: bool | None = None):
        """Histograms before/after ReLU and the normalized feature maps of the first image (channel numbers in
        9 pt, one colour bar for their shared scale), for the current result. ``fixed_scale`` (default: the
        checkbox) keeps the axes and colours at :data:`FIXED_LIMITS`; off, they fit this result."""
        from ..analysis.figures import activation_histograms, feature_maps, new_figure

        fixed = self.fixed_scale.value if fixed_scale is None else fixed_scale
        fig = new_figure(figsize=(10, 5.8), dpi=dpi)
        top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.1])
        axes = top.subplots(1, 2)
        top.subplots_adjust(left=0.08, right=0.98, bottom=0.2, top=0.85, wspace=0.25)
        activation_histograms(self.y, axes=axes, title=self.result["preset"],
                              limit=FIXED_LIMITS["histogram"] if fixed else None)
        feature_maps(self.y, 0, n_maps=n_maps, ncols=8, fig=bottom, limit=FIXED_LIMITS["maps"] if fixed else None,
                     title=f"normalized feature maps of image 0 (channel numbers): {self.result['spec']}")
        maps = [ax for ax in bottom.axes if ax.images]
        for ax in maps:
            ax.title.set_fontsize(9)
        if maps:
            bar = bottom.colorbar(maps[0].images[0], ax=maps, fraction=0.03, pad=0.01)
            bar.ax.tick_params(labelsize=8)
            bar.set_label("y", fontsize=9)
        return fig

    def _html(self, r: dict) -> str:
        rows = "".join(f'<tr><td>{label}</td>'
                       f'<td class="dnlib-stat-{key}" style="text-align:right">{r[key]:.4f}</td></tr>'
                       for key, label in STAT_LABELS.items())
        notes = "".join(f"<div><i>{n}</i></div>" for n in r["notes"])
        pre = self.pre_pairs
        return (f'<div class="dnlib-stats"><div><code>{r["spec"]}</code></div><table>{rows}</table>{notes}'
                f'<div style="color:#777">before normalization: mean |corr| '
                f'<span class="dnlib-stat-corr_pre">{r["corr_pre"]:.4f}</span>, MI '
                f'<span class="dnlib-stat-mi_pre">{r["mi_pre"]:.4f}</span> nats (all {len(pre.pairs)} filter pairs, '
                f'{pre.n_samples} samples, {pre.bins} bins: the Table 10 figure\'s numbers); inputs {r["inputs"]}; '
                f'images: {r["source"]}</div></div>')

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # --- events -------------------------------------------------------------------------------------
    def _set_windows_from_preset(self, preset: str, sigma: bool = True) -> None:
        """Set the controls to the preset's own windows (and sigma); disable sigma where it has no effect."""
        held, self._holding = self._holding, True
        try:
            settings = preset_settings(preset) if sigma else preset_windows(preset)
            for name, value in settings.items():
                self.controls[name].value = value
            self.controls["sigma"].disabled = not get_spec(preset).divide  # -ms and none: no division, no sigma
        finally:
            self._holding = held

    def _on_change(self, change) -> None:
        if self._holding:
            return
        if change["owner"] is self.controls["preset"]:
            self._set_windows_from_preset(change["new"])
        self.update()


def explorer_presets() -> list[str]:
    """The presets the explorer's dropdown offers (notebook 02's ``preset`` rule names them): those of a
    :class:`~dnlib.norms.spec.NormSpec`. Presets with a module of their own (GDN: a learned channel matrix, no NormSpec
    fields) have no fields to explore here."""
    return [n for n in list_norms() if PRESETS[n].module is None]


def preset_windows(preset: str) -> dict:
    """The window controls that reproduce a preset's own windows (``space_window``, ``channel_window``,
    ``window_field``); the suppression window wins when the two fields' windows differ."""
    spec = get_spec(preset)
    window = spec.window("sup") or spec.window("sum")
    if spec.sum_window and spec.sup_window:
        field = "both" if spec.sum_window == spec.sup_window else "sup"
    else:
        field = "sup" if spec.sup_window else "sum" if spec.sum_window else "both"
    return {"space_window": _nearest(window.get("space", 0), SPACE_WINDOWS),
            "channel_window": _nearest(window.get("channel", 0), CHANNEL_WINDOWS), "window_field": field}


def preset_settings(preset: str) -> dict:
    """:func:`preset_windows` plus the preset's own ``sigma`` (e.g. 0 for ``bn``, 1 for ``bn-s``)."""
    return {"sigma": float(get_spec(preset).sigma), **preset_windows(preset)}


def _check_slider_range(name: str, value) -> None:
    """Refuse a value of the ``name`` slider outside :data:`SLIDER_RANGES` (a bare slider would cap it silently)."""
    if name not in SLIDER_RANGES:
        return
    lo, hi = SLIDER_RANGES[name]
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi):
        raise ValueError(f"{name} = {value!r} is outside the explorer's {name} slider: allowed [{lo}, {hi}] (a slider "
                         f"would silently show its end instead); compute() and sweep() take any value off-screen")


def _nearest(size: int, options) -> int:
    values = [v for _, v in options]
    return size if size in values else min(values, key=lambda v: abs(v - size))


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def activation_explorer(images: torch.Tensor | None = None, *, conv: nn.Conv2d | None = None,
                        checkpoint: str | None = None, n_images: int = 16, source: str = "auto", seed: int = 0,
                        preset: str = "dn", sigma: float = 0.5, alpha: float = 0.0, bins: int = 20,
                        n_pairs: int | None = None, max_samples: int | None = 20000, live_plots: bool = True,
                        label: str = "", inputs: str = "standardized", fixed_scale: bool = True,
                        **controls) -> ActivationExplorer:
    """Build the activation explorer (see the module docstring).

    Args:
        images: uint8 ``(N, 3, H, W)``; default ``explorer_images(n_images, source, seed)``.
        conv: the first layer; default ``first_conv(checkpoint, seed)``.
        preset, sigma, alpha: initial control values (``**controls`` may set ``space_window``,
            ``channel_window``, ``window_field``; by default the preset's own windows).
        bins, n_pairs, max_samples: the correlation/MI estimator (:func:`dnlib.analysis.stats.pairwise_corr_mi`); the
            defaults (all filter pairs, up to 20,000 samples) are those of the Table 10 figure
            (:func:`dnlib.analysis.figures.joint_histograms`), so the readout and the figure's title give the same
            numbers.
        live_plots: redraw histograms and feature maps on every change (in a kernel only).
        inputs: ``"standardized"`` or ``"raw"`` (:func:`preprocess`): what the first layer sees.
        fixed_scale: start with the "fixed scale" checkbox on (:data:`FIXED_LIMITS`).
        label: where the images came from, shown in the readout (set automatically when ``images`` is None).
    """
    desc = label
    if images is None:
        images, desc = explorer_images(n_images, source, seed)
    conv = conv if conv is not None else first_conv(checkpoint, seed)
    return ActivationExplorer(images, conv, source=desc, preset=preset, sigma=sigma, alpha=alpha, bins=bins,
                              n_pairs=n_pairs, max_samples=max_samples, seed=seed, live_plots=live_plots,
                              inputs=inputs, fixed_scale=fixed_scale, **controls)
