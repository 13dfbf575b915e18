"""Named CIFAR configurations: every row of the paper's Table 7, for CIFAR-10 and CIFAR-100, and the paper's numbers.

One line per row below, with the authors' values (PAPER.md §2.3, §3.1, §5.4 items 17-18):

* sigma enters as ``eps = sigma^2`` in the authors' code; here ``make_norm(..., sigma=s, eps=0)``, so the
  denominator is ``sqrt(sigma^2 + E_B[v^2])`` exactly (no extra numerical eps);
* ``alpha`` is the L1 weight per site (3 conv sites); for the baseline it penalises the raw pre-ReLU activation;
* DN windows are 5, 3, 3 (conv1-3), summation = suppression, zero padding counted (``border="reference"``);
* schedule: SGD momentum 0.9, batch 100, lr 1e-3 x0.1 at the milestones. Baseline rows decay at 5K and 30K and
  stop at 50K; all other rows decay at 30K and 50K and stop at 80K (the paper's third number is the end);
* "Baseline +WD +Dropout" (the authors' unreachable ``BaselineWDDropoutConfig``): weight decay 0.1 in TF's
  ``wd * sum(w^2) / 2`` convention (= SGD ``weight_decay=0.1``) on conv and FC weights, dropout 0.5 after both FC
  layers including the logits.

Beyond the paper, the same recipe trains He et al.'s ResNet-20 (:func:`dnlib.models.resnet20`; ``arch="resnet20"``)
with BN, GN, LN, DN*, GDN, BRN, FRN and EvoNorm-B0 at all 19 normalizer sites (:data:`RESNET_ROWS`, names
``resnet20-<norm>``, :func:`list_configs` ``("resnet20")``), on He et al.'s schedule (CVPR 2016, §4.2): SGD
momentum 0.9, lr 0.1, weight decay 1e-4 (here on the conv and FC weights), batch 128, 64K steps with the lr /10 at
32K and 48K.
Unlike He et al. there is no data augmentation (the recipe has none), so expect less than their 91.25%.
GN uses 8 groups (Wu & He's 32 do not divide the 16 channels of stage 1); DN* is the CNN's DN* per site (``dn``
with its 3x3 window (``border="valid"``), sigma 0.5 as eps = sigma^2, alpha 0.005 at each of the 19 sites; not
tuned for this network); GDN is the ``gdn`` preset (compressai's init); BRN, FRN and EvoNorm-B0 are their presets
(``brn``: Ioffe's schedule, BN for 5000 batches, then the clips relaxed to rmax 3 at 40000 and dmax 5 at 25000;
``frn`` with its TLU; ``evonorm-b0``), the normalizers meant for small batches (notebook 07 trains them at one).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import cli

DATASETS = ("cifar10", "cifar100")
BASELINE_SCHEDULE = dict(milestones=(5000, 30000), steps=50000)
NORM_SCHEDULE = dict(milestones=(30000, 50000), steps=80000)
DN_WINDOWS = (5, 3, 3)
#: The model of a configuration: the paper's CNN (:class:`~dnlib.models.CifarCNN`) or He et al.'s ResNet-20.
ARCHS = ("cnn", "resnet20")
#: He et al. 2016 §4.2's CIFAR schedule for the ResNet rows.
RESNET_SCHEDULE = dict(lr=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128, milestones=(32000, 48000),
                       steps=64000)

# name           paper row                 norm    affine  (sigma, alpha) CIFAR-10  (sigma, alpha) CIFAR-100  extra
_ROWS = [
    ("base",         "Baseline",              "none", None,  (None, 0.0),    (None, 0.0),    {}),
    ("base-wd-drop", "Baseline +WD +Dropout", "none", None,  (None, 0.0),    (None, 0.0),    dict(weight_decay=0.1, dropout=0.5)),  # noqa: E501 (a table row)
    ("base-l1",      "Baseline +L1",          "none", None,  (None, 0.01),   (None, 0.01),   {}),
    ("bn",           "BN",                    "bn",   True,  (0.01, 0.0),    (0.01, 0.0),    {}),
    ("bn-l1",        "BN +L1",                "bn",   True,  (0.01, 0.005),  (0.01, 0.01),   {}),
    ("bn-s",         "BN-s",                  "bn",   True,  (1.0, 0.0),     (0.25, 0.0),    {}),
    ("bn-star",      "BN*",                   "bn",   True,  (1.0, 0.005),   (0.25, 0.01),   {}),
    ("ln",           "LN",                    "ln",   True,  (0.01, 0.0),    (0.01, 0.0),    {}),
    ("ln-l1",        "LN +L1",                "ln",   True,  (0.01, 0.005),  (0.01, 0.005),  {}),
    ("ln-s",         "LN-s",                  "ln",   False, (0.5, 0.0),     (0.5, 0.0),     {}),
    ("ln-star",      "LN*",                   "ln",   False, (0.5, 0.005),   (0.5, 0.005),   {}),
    ("dn",           "DN",                    "dn",   False, (0.5, 0.0),     (0.5, 0.0),     {}),
    ("dn-star",      "DN*",                   "dn",   False, (0.5, 0.005),   (0.5, 0.001),   {}),
]

# ResNet-20 rows (beyond the paper): name, row label, norm, (sigma, alpha), extra
RESNET_ROWS = [
    ("resnet20-bn",      "ResNet-20 BN",  "bn",  (None, 0.0),  {}),
    ("resnet20-gn",      "ResNet-20 GN",  "gn",  (None, 0.0),  dict(groups=8)),
    ("resnet20-ln",      "ResNet-20 LN",  "ln",  (None, 0.0),  {}),
    ("resnet20-dn-star", "ResNet-20 DN*", "dn",  (0.5, 0.005), {}),
    ("resnet20-gdn",     "ResNet-20 GDN", "gdn", (None, 0.0),  {}),
    # issue 26's atlas rows that target small batches: batch renorm, and two without batch statistics in training
    ("resnet20-brn",     "ResNet-20 BRN", "brn", (None, 0.0),  {}),
    ("resnet20-frn",     "ResNet-20 FRN", "frn", (None, 0.0),  {}),
    ("resnet20-evonorm-b0", "ResNet-20 EvoNorm-B0", "evonorm-b0", (None, 0.0), {}),
]

#: Table 7 (test accuracy), the paper's numbers: name -> (CIFAR-10, CIFAR-100).
TABLE7 = {
    "base": (0.7565, 0.4409), "base-wd-drop": (0.7795, 0.4179), "base-l1": (0.7839, 0.4517),
    "bn": (0.7807, 0.4814), "bn-l1": (0.8067, 0.5100), "bn-s": (0.8017, 0.5005), "bn-star": (0.8179, 0.5156),
    "ln": (0.7211, 0.4249), "ln-l1": (0.7994, 0.4990), "ln-s": (0.8083, 0.4863), "ln-star": (0.8091, 0.4957),
    "dn": (0.8058, 0.4892), "dn-star": (0.8122, 0.5066),
}
#: Table 3 is the subset of Table 7 rows shown in the main text.
TABLE3_ROWS = ("base", "base-wd-drop", "bn", "ln", "bn-star", "ln-star", "dn-star")
#: Table 10: mean pairwise correlation and MI of first-layer pre-normalization responses: name -> (corr, MI).
TABLE10 = {
    "base": (0.1677, 0.3774), "bn": (0.5269, 1.4878), "bn-s": (0.2521, 0.9912), "bn-star": (0.1578, 0.7287),
    "ln": (0.7199, 1.7784), "ln-s": (0.1995, 0.8959), "ln-star": (0.1512, 0.6986), "dn": (0.1958, 0.8951),
    "dn-star": (0.2031, 0.8412),
}


#: the numeric fields :class:`CifarConfig` checks: (field, test, what is allowed)
_RANGES = (("lr", lambda v: v > 0, "a number > 0"), ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
           ("weight_decay", lambda v: v >= 0, "a number >= 0"),
           ("gamma", lambda v: v > 0, "a number > 0 (the learning rate's factor at each milestone)"),
           ("batch_size", lambda v: v >= 1, "an integer >= 1"), ("alpha", lambda v: v >= 0, "a number >= 0"),
           ("dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"))



@dataclass(frozen=True)
class CifarConfig:
    """One training run of the paper's CIFAR CNN (a row of Table 7 on one dataset)."""
    name: str                          # the authors' --model name, e.g. "dn-star"
    paper: str                         # the row's name in the paper, e.g. "DN*"
    dataset: str = "cifar10"           # "cifar10" or "cifar100"
    norm: str = "none"                 # normalizer preset (dnlib.make_norm) on the three conv layers
    sigma: float | None = None      # smoothing term; eps = sigma^2 (None: no normalizer to smooth)
    alpha: float = 0.0                 # L1 weight per conv site
    affine: bool | None = None      # per-channel gamma/beta (None: the preset's default)
    window: tuple | None = None     # DN windows per conv layer (summation = suppression)
    dropout: float = 0.0               # drop probability after both FC layers, in [0, 1)
    weight_decay: float = 0.0          # on conv and FC weights only (>= 0)
    lr: float = 1e-3                   # initial learning rate (> 0)
    momentum: float = 0.9              # SGD momentum, in [0, 1)
    batch_size: int = 100
    milestones: tuple = NORM_SCHEDULE["milestones"]  # lr x gamma at these steps (>= 1, in order)
    gamma: float = 0.1                 # > 0
    steps: int = NORM_SCHEDULE["steps"]              # training stops here
    impl: str = "auto"                 # DivisiveNorm impl of the normalizers ("compile": torch.compile, for GPUs)
    arch: str = "cnn"                  # the model: "cnn" (the paper's) or "resnet20" (He et al. 2016)
    groups: int | None = None       # channel groups of the normalizer (gn); None: the preset's

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch: must be one of {list(ARCHS)}, got {self.arch!r}")
        for name, ok, allowed in _RANGES:      # values that would reverse or stop the update: refused here
            cli.check_number(name, getattr(self, name), ok, allowed, integer="integer" in allowed)
        ms = tuple(self.milestones)
        if not all(cli.number_in(m, lambda v: v >= 1, integer=True) for m in ms) or list(ms) != sorted(ms):
            raise ValueError(f"milestones: must be integers >= 1 in order (a repeat applies gamma twice), got {ms!r}")

    @property
    def num_classes(self) -> int:
        return 10 if self.dataset == "cifar10" else 100

    @property
    def paper_accuracy(self) -> float | None:
        """This row's test accuracy in the paper's Table 7."""
        row = TABLE7.get(self.name)
        return None if row is None else row[DATASETS.index(self.dataset)]

    def norm_kwargs(self) -> dict:
        """The ``norm_kwargs`` of :class:`dnlib.models.CifarCNN` (:func:`dnlib.make_norm` overrides; ``window`` one
        per conv layer)."""
        kw = {}
        if self.sigma is not None:
            kw.update(sigma=self.sigma, eps=0.0)
        if self.alpha:
            kw["alpha"] = self.alpha
        if self.affine is not None:
            kw["affine"] = self.affine
        if self.window is not None:
            kw.update(window=tuple(self.window), border="reference")
        if self.groups is not None:
            kw["groups"] = self.groups
        if self.impl != "auto" and self.norm != "none":
            kw["impl"] = self.impl
        return kw

    def build_model(self):
        """The model of this configuration (initialised from torch's RNG): :class:`~dnlib.models.CifarCNN`, or
        :func:`~dnlib.models.resnet20` for ``arch="resnet20"`` (which has no dropout)."""
        from ..models import CifarCNN, resnet20
        if self.arch == "resnet20":
            if self.dropout:
                raise ValueError(f"dropout: the ResNet-20 has none, got {self.dropout!r}")
            return resnet20(self.num_classes, self.norm, norm_kwargs=self.norm_kwargs())
        return CifarCNN(self.num_classes, self.norm, norm_kwargs=self.norm_kwargs(), dropout=self.dropout)

    def scaled(self, steps: int) -> CifarConfig:
        """The same run shortened (or lengthened) to ``steps``, milestones scaled proportionally (smoke runs)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
        ms = tuple(max(1, round(m * steps / self.steps)) for m in self.milestones)
        return dataclasses.replace(self, steps=steps, milestones=ms)

    def replace(self, **changes) -> CifarConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(dataset: str) -> dict:
    out = {}
    for name, paper, norm, affine, c10, c100, extra in _ROWS:
        sigma, alpha = c10 if dataset == "cifar10" else c100
        sched = BASELINE_SCHEDULE if name.startswith("base") else NORM_SCHEDULE
        window = DN_WINDOWS if norm == "dn" else None
        out[name] = CifarConfig(name, paper, dataset, norm, sigma, alpha, affine, window, **extra, **sched)
    for name, paper, norm, (sigma, alpha), extra in RESNET_ROWS:
        out[name] = CifarConfig(name, paper, dataset, norm, sigma, alpha, arch="resnet20", **extra, **RESNET_SCHEDULE)
    return out


CONFIGS = {ds: _build(ds) for ds in DATASETS}


def list_configs(arch: str = "cnn") -> list:
    """The configuration names of ``arch``: ``"cnn"`` (default) Table 7's rows in its order, ``"resnet20"`` the
    ResNet-20 rows (:data:`RESNET_ROWS`), ``"all"`` both."""
    if arch not in ARCHS + ("all",):
        raise ValueError(f"arch: must be one of {list(ARCHS + ('all',))}, got {arch!r}")
    cnn, resnet = [row[0] for row in _ROWS], [row[0] for row in RESNET_ROWS]
    return cnn if arch == "cnn" else resnet if arch == "resnet20" else cnn + resnet


def _dataset(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"dataset: must be one of {list(DATASETS)}, got {name!r}")
    return key


def get_config(name: str, dataset: str = "cifar10", **changes) -> CifarConfig:
    """The named configuration (see :func:`list_configs`) for ``dataset``, with optional field changes."""
    ds = _dataset(dataset)
    if name not in CONFIGS[ds]:
        raise ValueError(f"config: unknown CIFAR configuration {name!r}; known are {list_configs('all')}")
    cfg = CONFIGS[ds][name]
    return cfg.replace(**changes) if changes else cfg
