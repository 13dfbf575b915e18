"""Super-resolution configurations (PAPER.md §3.4) and the paper's numbers (§4 Tables 5, 6; Figures 3, 4).

Two named training configurations, each saying what it is:

* ``"paper"`` (kind ``"reference"``): the authors' optimizer: SGD with momentum 0.9, lr 1e-4, no decay, loss
  MSE / 2, a batch of 100 random 33 x 33 patches all drawn from one training image, weights N(0, 1e-3)
  truncated. The paper gives no iteration count and the code trains until stopped; direct (non-residual)
  prediction from a 1e-3 initialization learns slowly under it (hundreds of thousands of steps).
* ``"fast"`` (kind ``"fast"``, not the paper's): Adam, lr 1e-3 divided by 10 at 70% and 90% of the steps,
  batch 128, He initialization. Same model, data, loss and evaluation; beats bicubic within a few hundred
  steps instead of many thousands, which is what one would rather run (how close it gets to the paper's
  SRCNN row in a GPU budget is what ``scripts/gpu_sr.sh`` measures).
* ``"smoke"`` (kind ``"smoke"``): a CPU check of the pipeline only: SRCNN at a quarter of the paper's width
  (32, 16 filters), Adam 2e-3, batch 16, 300 steps. Beats bicubic on Set5 x3 by 0.3-0.7 dB (seeds 0-2) in
  ~10 s on one CPU core.

Every configuration samples each batch from a single training image (``per_image=True``), as the authors'
code does; this is what lets batch statistics differ between images, the mechanism behind BN's intensity
shift in Tables 5/6.

The normalizers of the SR rows (:data:`SR_NORM_ROWS`: a :mod:`dnlib.norms.presets` preset plus its overrides,
PAPER.md §2.3 ``sr_exp_config`` and §5.4 items 1, 10):

==============  =========  ========================================================================================
row             preset     overrides, and what they are
==============  =========  ========================================================================================
``"none"``      ``none``   SRCNN as published (Tables 5/6 "SRCNN"): no normalizer (``nn.Identity``).
``"bn"``        ``bn``     batch norm (affine, running statistics with momentum 0.1 in eval mode; "BN").
``"dn*"``       ``dn``     the paper's DN*: ``sum_window=5, sup_window=7, sigma=1.0, alpha=0.1``: all channels, a
                           5 x 5 summation and a 7 x 7 suppression window, the sparse L1 term *applied*; windows
                           average over the real neighbours at the map border (``border="valid"``, the default),
                           eps the default 1e-5 beside sigma^2.
``"dn*-code"``  ``dn``     what the authors' code trains under ``dn-star``: ``sum_window=5, sup_window=7,
                           sigma=1.0, eps=0.0, alpha=0.0, border="reference"``: no L1 (the SR model never adds it,
                           §5.4 item 10), zero padding counted and the suppression sum divided by the 5 x 5
                           *summation* area (variance x 49/25, §1.2 step 5, §5.4 item 1), epsilon sigma^2 alone.
``"dn-ms"``     ``dn-ms``  the code's ``dnms``: ``window=5, border="reference"``: 5 x 5 local mean subtraction only
                           (the mean divided by 25 everywhere, zeros counted), no division, no L1.
==============  =========  ========================================================================================

:data:`SR_NORM_ALIASES` keeps the authors' spellings (``dn-star``, ``dnstar``, ``dn-star-code``, ``dnms``,
``base``, ``srcnn``). Any other preset name or a :class:`~dnlib.norms.spec.NormSpec` is taken as it is.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import cli
from ..norms.presets import PRESETS, NormLike, norm_name
from ..norms.spec import NormSpec

__all__ = ["SRConfig", "SR_CONFIGS", "get_config", "SR_MODELS", "ROW_NAMES", "TRAIN_SETS", "SRNorm",
           "SR_NORM_ROWS", "SR_NORM_ALIASES", "sr_norm", "sr_norm_name",
           "PAPER_TABLE5", "PAPER_TABLE6", "PAPER_TABLES", "PAPER_FIG3", "PAPER_FIG4", "paper_numbers"]

#: Training sets: "T91" (SRCNN's 91 images), "291" (T91 + the 200 BSDS500 training images).
TRAIN_SETS = {"T91": ("T91",), "291": ("T91", "BSD200-train")}



@dataclass(frozen=True)
class SRNorm:
    """One SR normalizer row: a preset of :mod:`dnlib.norms.presets` and its :func:`dnlib.make_norm` overrides."""
    preset: str
    norm_kwargs: Mapping = field(default_factory=dict)
    label: str = ""                # the row's name in the paper's tables
    doc: str = ""


_DN_STAR = dict(sum_window=5, sup_window=7, sigma=1.0)
#: The SR normalizers by row name (see the module docstring).
SR_NORM_ROWS = {
    "none": SRNorm("none", {}, "SRCNN", "SRCNN as published: no normalizer"),
    "bn": SRNorm("bn", {}, "BN", "batch norm (affine, running statistics)"),
    "dn*": SRNorm("dn", dict(_DN_STAR, alpha=0.1), "DN*",
                  "the paper's DN*: 5x5 summation, 7x7 suppression, sigma 1, L1 alpha 0.1 applied, valid border"),
    "dn*-code": SRNorm("dn", dict(_DN_STAR, eps=0.0, alpha=0.0, border="reference"), "DN* (code)",
                       "the authors' code's dn-star: no L1, zero padding counted, suppression / 5x5 area, eps 0"),
    "dn-ms": SRNorm("dn-ms", dict(window=5, border="reference"), "DN-ms",
                    "the code's dnms: 5x5 local mean subtraction, zero padding counted, no L1"),
}
#: The authors' spellings of the rows (their ``sr_exp_config`` model names and ours before).
SR_NORM_ALIASES = {"dn-star": "dn*", "dnstar": "dn*", "dn-star-code": "dn*-code", "dnms": "dn-ms", "base": "none",
                   "srcnn": "none"}

#: The models of Tables 5/6, by SR row name.
SR_MODELS = ("none", "bn", "dn*")

#: Row names of the paper's tables for each model name (and "bicubic").
ROW_NAMES = {"bicubic": "Bicubic", **{name: row.label for name, row in SR_NORM_ROWS.items()}}


def sr_norm_name(norm: NormLike) -> str:
    """The row name of ``norm`` (aliases resolved, lower case); another preset's name; or a spec's repr."""
    if isinstance(norm, str):
        return SR_NORM_ALIASES.get(norm.lower(), norm.lower())
    return norm_name(norm)


def sr_norm(norm: NormLike, norm_kwargs: Mapping | None = None) -> tuple:
    """``(preset or NormSpec, norm_kwargs)`` for SRCNN: an SR row (or alias) gives its preset and overrides, updated
    by ``norm_kwargs``; another preset name or a :class:`~dnlib.norms.spec.NormSpec` is passed on as it is."""
    extra = dict(norm_kwargs or {})
    if norm is None or isinstance(norm, NormSpec):
        return ("none" if norm is None else norm), extra
    if not isinstance(norm, str):
        raise ValueError(f"norm: expected an SR row name, a preset name or a NormSpec, got {type(norm).__name__}")
    name = sr_norm_name(norm)
    if name in SR_NORM_ROWS:
        row = SR_NORM_ROWS[name]
        return row.preset, {**row.norm_kwargs, **extra}
    if name in PRESETS:
        return name, extra
    raise ValueError(f"norm: unknown SR normalizer {norm!r}; the SR rows are {list(SR_NORM_ROWS)} (aliases "
                     f"{list(SR_NORM_ALIASES)}), or any preset of {list(PRESETS)}")


#: the numeric fields :class:`SRConfig` checks: (field, test, what is allowed)
_RANGES = (("lr", lambda v: v > 0, "a number > 0"), ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
           ("gamma", lambda v: v > 0, "a number > 0 (the learning rate's factor at each milestone)"),
           ("batch_size", lambda v: v >= 1, "an integer >= 1"))



@dataclass(frozen=True)
class SRConfig:
    """One SRCNN training configuration."""
    name: str
    kind: str                      # "reference" (the paper's optimizer), "fast" or "smoke"
    description: str
    optimizer: str = "sgd"         # "sgd" (momentum, no dampening, as TF) or "adam"
    lr: float = 1e-4               # initial learning rate
    momentum: float = 0.9          # SGD momentum, in [0, 1)
    milestones: tuple = ()         # fractions of the steps (in (0, 1), in order) at which lr is multiplied by gamma
    gamma: float = 0.1             # lr factor at each milestone (> 0)
    batch_size: int = 100          # patches per step
    per_image: bool = True         # all patches of a batch from one image (authors' code)
    steps: int = 1_000_000         # default number of steps (the code has no limit)
    init: str = "paper"            # "paper": N(0, 1e-3) truncated; "he": He-normal
    channels: tuple = (64, 32)     # hidden widths (paper: 64, 32)
    train_set: str = "T91"         # "T91" or "291"
    scale: int = 3                 # upscaling factor (the paper reports x3 and x4)
    norm: str = "none"             # the SR row (SR_NORM_ROWS, an alias, or a preset name) of build_model

    def __post_init__(self):
        sr_norm(self.norm)         # ValueError naming an unknown normalizer
        if self.kind not in ("reference", "fast", "smoke"):
            raise ValueError(f"kind: got {self.kind!r}; allowed 'reference', 'fast', 'smoke'")
        if self.train_set not in TRAIN_SETS:
            raise ValueError(f"train_set: got {self.train_set!r}; allowed {list(TRAIN_SETS)}")
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale: got {self.scale!r}; allowed 2, 3, 4")
        if self.init not in ("paper", "he"):
            raise ValueError(f"init: got {self.init!r}; allowed 'paper', 'he'")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones: fractions of the steps in (0, 1), got {self.milestones!r}")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones: fractions of the steps in increasing order, got {self.milestones!r}")
        for name, ok, allowed in _RANGES:      # values that would reverse or stop the update: refused here
            cli.check_number(name, getattr(self, name), ok, allowed, integer="integer" in allowed)

    def replace(self, **changes) -> SRConfig:
        return dataclasses.replace(self, **changes)

    def milestone_steps(self, steps: int | None = None) -> tuple:
        """The milestones as step numbers for a run of ``steps`` steps."""
        steps = self.steps if steps is None else steps
        return tuple(max(1, int(round(f * steps))) for f in self.milestones)

    def build_model(self, norm: NormLike | None = None, norm_kwargs: Mapping | None = None):
        """The :class:`~dnlib.models.srcnn.SRCNN` of this configuration (widths, init) with the SR row ``norm``
        (default the configuration's :attr:`norm`; see :func:`sr_norm`), initialised from torch's RNG."""
        from ..models.srcnn import SRCNN
        preset, kwargs = sr_norm(self.norm if norm is None else norm, norm_kwargs)
        return SRCNN(preset, channels=self.channels, init=self.init, norm_kwargs=kwargs)


SR_CONFIGS = {
    "paper": SRConfig(
        "paper", "reference",
        "the authors' optimizer: SGD momentum 0.9, lr 1e-4 constant, batch 100 patches of one image, "
        "N(0, 1e-3) init; trains until stopped (slow)"),
    "fast": SRConfig(
        "fast", "fast",
        "not the paper's: Adam lr 1e-3 (x0.1 at 70% and 90%), batch 128 patches of one image, He init",
        optimizer="adam", lr=1e-3, milestones=(0.7, 0.9), batch_size=128, steps=50_000, init="he"),
    "smoke": SRConfig(
        "smoke", "smoke",
        "CPU pipeline check, not the paper's: width (32, 16), Adam 2e-3 (x0.1 at 80%), batch 16, 300 steps",
        optimizer="adam", lr=2e-3, milestones=(0.8,), batch_size=16, steps=300, init="he", channels=(32, 16)),
}


def get_config(name: str = "fast", **overrides) -> SRConfig:
    """A named configuration (``"paper"``, ``"fast"``, ``"smoke"``) with field overrides."""
    if isinstance(name, SRConfig):
        return name.replace(**overrides) if overrides else name
    if name not in SR_CONFIGS:
        raise ValueError(f"config: unknown SR configuration {name!r}; known are {list(SR_CONFIGS)}")
    cfg = SR_CONFIGS[name]
    return cfg.replace(**overrides) if overrides else cfg


# --- the paper's numbers (PAPER.md §4) -----------------------------------------------------------------------
# {row: {scale: (PSNR dB, SSIM)}}
PAPER_TABLE5 = {  # Set14
    "Bicubic": {3: (27.54, 0.7733), 4: (26.01, 0.7018)},
    "A+":      {3: (29.13, 0.8188), 4: (27.32, 0.7491)},
    "SRCNN":   {3: (29.35, 0.8212), 4: (27.53, 0.7512)},
    "BN":      {3: (22.31, 0.7530), 4: (21.40, 0.6851)},
    "DN*":     {3: (29.34, 0.8219), 4: (27.64, 0.7562)},
}
PAPER_TABLE6 = {  # BSD200
    "Bicubic": {3: (27.19, 0.7636), 4: (25.92, 0.6952)},
    "A+":      {3: (27.05, 0.7945), 4: (25.51, 0.7171)},
    "SRCNN":   {3: (28.42, 0.8100), 4: (26.87, 0.7378)},
    "BN":      {3: (21.89, 0.7553), 4: (21.53, 0.6741)},
    "DN*":     {3: (28.44, 0.8110), 4: (26.96, 0.7428)},
}
#: Test set -> table. The paper reports no Set5 numbers.
PAPER_TABLES = {"Set14": PAPER_TABLE5, "BSD200": PAPER_TABLE6}

#: Figure 3 (x4): crop PSNRs (dB) of two examples [inferred reading, PAPER.md §4]; images not named.
PAPER_FIG3 = [
    {"Bicubic": 29.84, "SRCNN": 31.33, "BN": 23.94, "DN*": 31.46},
    {"Bicubic": 29.41, "SRCNN": 33.14, "BN": 21.88, "DN*": 33.43},
]
#: Figure 4 (x4): a second example.
PAPER_FIG4 = {"Bicubic": 27.46, "SRCNN": 30.12, "BN": 23.91, "DN*": 30.19}


def paper_numbers(set_name: str, scale: int) -> dict:
    """``{row: (psnr, ssim)}`` from Table 5 (Set14) or 6 (BSD200) at ``scale``; ``{}`` for other sets."""
    table = PAPER_TABLES.get(set_name, {})
    return {row: vals[scale] for row, vals in table.items() if scale in vals}
