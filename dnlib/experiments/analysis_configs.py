"""Named configurations of the ``analysis`` experiment (:mod:`dnlib.experiments.analysis`): one per point of each
analysis of notebook 08, at three sizes.

Analyses (the configuration names say which; ``python -m dnlib analysis list``):

* ``batch-<norm>-b<B>``: **batch-size dependence** (Wu & He 2018, Figure 1). The CIFAR CNN with bn, gn, ln,
  dn-star, frn (filter response normalization + TLU, Singh & Krishnan 2020) or brn (batch renormalization, Ioffe
  2017, at its final rmax 3, dmax 5 from the start: no warm-up schedule) trained for a fixed number of images at
  batch ``B`` in 2 ... 128, the learning rate scaled linearly with the batch (``BASE_LR[norm] * B / 32``); test
  error, and the error with batch statistics.
* ``smooth-<norm>``, ``smooth-dn-sigma<s>``: **smoothness** (Santurkar et al. 2018) at checkpoints during
  training, every preset of interest at one learning rate, and DN with a sigma sweep (a large sigma leaves DN
  a (scaled) local mean subtraction: sigma is the knob from "no division" to "full division").
* ``lr-<norm>-<lr>``: **largest stable learning rate** (Bjorck et al. 2018): a short training per learning rate
  of :data:`LR_GRID`; a run that diverges is a record that says so.
* ``depth-<norm>``: **signal growth with depth**: a 12-layer plain CNN (:class:`dnlib.models.plain.PlainCNN`),
  per-layer activation and gradient RMS at initialization and after a few steps.
* ``inv-<variant>``: **weight-scale invariance, detached statistics, mean-only and variance-only**: BN, LN and DN,
  their ``-ms`` (mean subtraction only) presets, the variance-only variants (``bn-vo``: ``NormSpec(None,
  "batch,space")``; ``ln-vo``: the ``rms`` preset), and the three with their statistics detached from the graph
  (:func:`dnlib.analysis.probes.detach_statistics`).

Sizes (the ``size`` field, ``--size``): ``smoke`` (the notebook suite: a few seconds per point), ``cpu`` (every
analysis x 3 seeds on a 2-core CPU: a 2000/500-image CIFAR-10 subset, a quarter-width CNN (8, 8, 16), 2 epochs) and
``full`` (the whole of CIFAR-10, the paper's widths, 30 epochs per point; for a GPU: ``scripts/analysis_full.sh``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

DATASETS = ("cifar10", "cifar100")
ANALYSES = ("batch", "smooth", "lr", "depth", "inv")
ARCHS = ("cnn", "plain")
BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128)
BATCH_NORMS = ("bn", "gn", "ln", "dn-star", "frn", "brn")
SMOOTH_NORMS = ("none", "bn", "gn", "ln", "dn-star")
SIGMAS = (0.01, 0.1, 0.5, 2.0, 10.0)
LR_NORMS = ("none", "bn", "gn", "ln", "dn-star")
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
DEPTH_NORMS = ("none", "bn", "gn", "ln", "dn")
INV_VARIANTS = ("none", "bn", "bn-ms", "bn-vo", "bn-detached", "ln", "ln-ms", "ln-vo", "ln-detached", "dn", "dn-ms",
                "dn-detached")
#: The batch at which each normalizer's learning rate is the base one (the batch analysis scales it linearly).
REFERENCE_BATCH = 32
#: Learning rate at batch 32 (SGD, momentum 0.9) of every analysis but ``lr``: one for all normalizers, so that
#: the smoothness probes compare like with like (the unnormalized CNN trains at it: raw 0-255 inputs).
BASE_LR = 0.01

@dataclass(frozen=True)
class Variant:
    """One normalizer of the analyses: a preset of :mod:`dnlib.norms.presets` and its :func:`dnlib.make_norm`
    overrides for the CIFAR CNN's three sites (a configuration row, as SR's ``SRNorm``; not a second registry)."""
    preset: str
    norm_kwargs: Mapping = field(default_factory=dict)


#: variant -> :class:`Variant`. ``dn*`` as the paper's CIFAR-10 DN*
#: (windows 5, 3, 3, sigma 0.5 as eps = sigma^2, L1 0.005); ``dn`` the same without L1; GN with 4 groups (the
#: half-width CNN has 8 and 16 channels at smoke size); ``brn`` clipped at rmax 3, dmax 5 from the first batch
#: (``relax=None``: on the preset's default, Ioffe's schedule, it is BN for 5000 batches, longer than any smoke or
#: cpu point; the committed cpu records ran with these clips).
VARIANTS = {
    "none": Variant("none", {}),
    "bn": Variant("bn", {}),
    "bn-ms": Variant("bn-ms", {}),
    "bn-vo": Variant("bn-vo", {}),
    "gn": Variant("gn", {"groups": 4}),
    "frn": Variant("frn", {}),
    "brn": Variant("brn", {"relax": None}),
    "ln": Variant("ln", {}),
    "ln-ms": Variant("ln-ms", {}),
    "ln-vo": Variant("rms", {}),
    "dn": Variant("dn", {"window": (5, 3, 3), "border": "reference", "sigma": 0.5, "eps": 0.0}),
    "dn-star": Variant("dn", {"window": (5, 3, 3), "border": "reference", "sigma": 0.5, "eps": 0.0, "alpha": 0.005}),
    "dn-ms": Variant("dn-ms", {"window": (5, 3, 3), "border": "reference"}),
}

#: size -> (CIFAR subset (train, eval) or None: all, CNN width, images per training run, probe batch, steps of an
#: lr point, steps of a depth point, plain-CNN depth)
SIZES = {
    "smoke": dict(subset=(500, 200), width=8, images=500, probe_batch=32, lr_steps=8, depth_steps=4, depth=6),
    "cpu": dict(subset=(2000, 500), width=8, images=4000, probe_batch=64, lr_steps=40, depth_steps=20, depth=12),
    "full": dict(subset=None, width=32, images=30 * 50000, probe_batch=256, lr_steps=500, depth_steps=500,
                 depth=20),
}


@dataclass(frozen=True)
class AnalysisConfig:
    """One point of one analysis: a model, a normalizer variant, a schedule and what to probe."""
    name: str
    analysis: str                   # one of ANALYSES
    norm: str = "bn"                # a key of VARIANTS
    sigma: float | None = None      # DN's sigma (None: the variant's); the smooth sigma sweep sets it
    detach: bool = False            # batch statistics detached from the graph
    arch: str = "cnn"               # "cnn" (the paper's CIFAR CNN, widths (w, w, 2w)) or "plain" (PlainCNN)
    depth: int = 12                 # the plain CNN's conv layers
    width: int = 8
    batch_size: int = 32
    lr: float = BASE_LR
    momentum: float = 0.9
    steps: int = 125
    evals: int = 2                  # evaluations (= chunks, checkpoints) per run
    probe_batch: int = 64          # training images of the probes (the first ones: the same every time)
    probe_steps: tuple = (0.5, 1.0, 2.0, 4.0)   # smoothness step sizes, in multiples of lr
    size: str = "cpu"
    subset: tuple | None = (2000, 500)
    dataset: str = "cifar10"

    def __post_init__(self):
        for key, allowed in (("analysis", ANALYSES), ("arch", ARCHS), ("size", tuple(SIZES)),
                             ("dataset", DATASETS), ("norm", tuple(VARIANTS))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: must be one of {list(allowed)}, got {getattr(self, key)!r}")
        for key in ("steps", "evals", "batch_size", "probe_batch", "width", "depth"):
            v = getattr(self, key)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"{key}: must be an integer >= 1, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr!r}")
        if self.sigma is not None and not self.sigma >= 0:
            raise ValueError(f"sigma: must be >= 0 (or None), got {self.sigma!r}")

    @property
    def num_classes(self) -> int:
        return 10 if self.dataset == "cifar10" else 100

    @property
    def eval_every(self) -> int:
        return max(1, -(-self.steps // self.evals))

    def norm_spec(self):
        """The ``norm=`` of the model: a preset name, or the NormSpec of a variant the registry does not have."""
        preset = VARIANTS[self.norm].preset
        if preset == "bn-vo":   # variance only: no centring, the suppression field of BN
            from ..norms.spec import NormSpec
            return NormSpec(None, "batch,space")
        return preset

    def norm_kwargs(self) -> dict:
        kw = dict(VARIANTS[self.norm].norm_kwargs)
        if self.norm == "bn-vo":
            kw["affine"] = True
        if self.sigma is not None:
            kw.update(sigma=self.sigma, eps=0.0)
        if self.arch == "plain" and "window" in kw:     # one window for every layer of the plain CNN
            kw["window"] = 3
        return kw

    def build_model(self):
        """The model (initialised from torch's RNG)."""
        from ..models import CifarCNN
        from ..models.plain import PlainCNN
        if self.arch == "plain":
            return PlainCNN(self.num_classes, self.norm_spec(), norm_kwargs=self.norm_kwargs(), depth=self.depth,
                            width=self.width)
        return CifarCNN(self.num_classes, self.norm_spec(), norm_kwargs=self.norm_kwargs(),
                        widths=(self.width, self.width, 2 * self.width))

    def scaled(self, steps: int) -> AnalysisConfig:
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
        return dataclasses.replace(self, steps=steps)

    def replace(self, **changes) -> AnalysisConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _lr_name(lr: float) -> str:
    return f"{lr:g}"


def _points() -> dict:
    """name -> (analysis, fields that do not depend on the size; "images"/"lr_steps"/"depth_steps" resolved later)."""
    out = {}
    for norm in BATCH_NORMS:
        for b in BATCH_SIZES:
            out[f"batch-{norm}-b{b}"] = ("batch", dict(norm=norm, batch_size=b, lr=BASE_LR * b / REFERENCE_BATCH))
    for norm in SMOOTH_NORMS:
        out[f"smooth-{norm}"] = ("smooth", dict(norm=norm))
    for s in SIGMAS:
        out[f"smooth-dn-sigma{s:g}"] = ("smooth", dict(norm="dn", sigma=s))
    for norm in LR_NORMS:
        for lr in LR_GRID:
            out[f"lr-{norm}-{_lr_name(lr)}"] = ("lr", dict(norm=norm, lr=lr))
    for norm in DEPTH_NORMS:
        out[f"depth-{norm}"] = ("depth", dict(norm=norm, arch="plain"))
    for v in INV_VARIANTS:
        base, detached = (v[:-len("-detached")], True) if v.endswith("-detached") else (v, False)
        out[f"inv-{v}"] = ("inv", dict(norm=base, detach=detached))
    return out


POINTS = _points()


def list_configs(analysis: str = "all") -> list:
    """The configuration names of ``analysis`` (one of :data:`ANALYSES`, or ``"all"``)."""
    if analysis not in ANALYSES + ("all",):
        raise ValueError(f"analysis: must be one of {list(ANALYSES + ('all',))}, got {analysis!r}")
    return [n for n, (a, _) in POINTS.items() if analysis in ("all", a)]


def get_config(name: str, size: str = "cpu", **changes) -> AnalysisConfig:
    """The named point at ``size`` (:data:`SIZES`), with optional field changes."""
    if size not in SIZES:
        raise ValueError(f"size: must be one of {list(SIZES)}, got {size!r}")
    if name not in POINTS:
        raise ValueError(f"config: unknown analysis configuration {name!r}; known are e.g. "
                         f"{list_configs()[:3] + ['...']} (`python -m dnlib analysis list`)")
    analysis, fields = POINTS[name]
    sz = SIZES[size]
    batch = fields.get("batch_size", REFERENCE_BATCH)
    steps = {"lr": sz["lr_steps"], "depth": sz["depth_steps"]}.get(analysis, max(1, sz["images"] // batch))
    evals = {"smooth": 4, "lr": 1}.get(analysis, 2)
    cfg = AnalysisConfig(name, analysis, steps=min(steps, max(steps, 1)), evals=min(evals, steps),
                         width=sz["width"], depth=sz["depth"], probe_batch=sz["probe_batch"], size=size,
                         subset=sz["subset"], **fields)
    return cfg.replace(**changes) if changes else cfg
