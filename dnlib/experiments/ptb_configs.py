"""Named PTB configurations: the 12 rows of the paper's Table 9 x {LSTM, tanh RNN, ReLU RNN}, and its numbers.

A name is ``<row>-<cell>`` with row in :data:`ROWS` (``base``, ``base-l1``, ``bn``, ``bn-l1``, ``bn-s``,
``bn-star``, ``ln``, ``ln-l1``, ``ln-s``, ``ln-star``, ``dn``, ``dn-star``) and cell in :data:`CELL_TYPES`
(``lstm``, ``tanh-rnn``, ``relu-rnn``), as the authors' ``--model`` strings (PAPER.md §2.3); e.g.
``get_config("dn-star-lstm")``.

sigma, alpha and the learning rates are those of the authors' ``ptb_exp_config`` (PAPER.md §2.3). Where the paper
and the code differ (PAPER.md §5.4 items 2-8) ``source="paper"`` (the default) takes the paper and
``source="code"`` the code:

======================  =============================================  =============================================
item                    paper (default)                                code (``source="code"``)
======================  =============================================  =============================================
1-D DN window (§5.4-2)  radius R: 2R+1 = 61 (LSTM) / 121 (RNN) units,  30 (LSTM) / 60 (RNN) units, TF SAME zero
                        divided by 2R+1 at the border (zeros counted)  padding, asymmetric (``border="reference"``)
RNN hidden size (-3)    400                                            200
Baseline LSTM LR (-4)   0.1 ("for unnormalized baselines and BN+ReLU,  1.0 (TF small config; the 115.7 of Table 4
                        the initial learning rate is set to 0.1")      is what this gives, most likely)
LN/LN-s RNN alpha (-5)  0 (plain LN, and LN-s = sigma only)            1e-2 (a catch-all branch)
"DN" row (-6)           sigma only: ``dn-s`` (sigma 1)                 same (the code's ``dn`` has sigma 0.01; not
                                                                       a Table 9 row)
Baseline +L1 (-7)       not given: alpha 1e-2 (our choice, as LN+L1),  not exposed by the code; same choice
                        LR as the baseline
BN test (-8)            per-step running statistics                    ``bn_test_step0``: step 0's for every step
                                                                       (BN-LSTM and BN vanilla RNNs: the code's
                                                                       test model is unrolled one step)
BN/LN-LSTM state (-8)   the paper is silent: the code's normalized c   same
Clipping norm           ``clip_mode="dense"``: the global norm of the  ``"slices"``: TF's ``clip_by_global_norm``
                        gradient (torch's ``clip_grad_norm_``; the     over the embedding's IndexedSlices, one row
                        embedding gradient summed per word; the paper  per token occurrence (repeated words not
                        says only "global norm 5")                     summed; ``dnlib.experiments.ptb.SliceClip``)
BN running statistics   ``running_stats="torch"``: start 0 / 1,        ``"tf"``: TF's moving averages (decay 0.9)
                        unbiased variance (the paper is silent)        start at 0, biased variance
======================  =============================================  =============================================

``affine=True`` on the per-nonlinearity LSTM (the LN-s/LN*/DN rows, where the paper removes the gains) gives each of
its five normalized blocks (i, j, f, o, c) its own gain and bias, as the authors' code does when its config turns
``norm_affine`` on (10H parameters per layer); the paper is silent, so both sides take the code's. On a config without
a normalizer (``base*``) it is refused.

"BN+ReLU" (LR 0.1) is read as the plain BN row of the ReLU RNN, which is what the code does (``bn-relu`` prefix).
eps = 0 everywhere: the code's epsilon is sigma^2 (PAPER.md §1.4), which ``sigma`` already supplies.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .. import cli

__all__ = ["PTBConfig", "PTBRunConfig", "get_config", "list_configs", "ROWS", "ROW_NAMES", "CELL_TYPES", "TABLE4",
           "TABLE9", "paper_perplexity", "SOURCES", "CLIP_MODES", "RUNNING_STATS"]

CELL_TYPES = ("lstm", "tanh-rnn", "relu-rnn")
SOURCES = ("paper", "code")
CLIP_MODES = ("dense", "slices")
RUNNING_STATS = ("torch", "tf")

#: Table 9 row label -> config row name
ROW_NAMES = {"Baseline": "base", "Baseline +L1": "base-l1", "BN": "bn", "BN +L1": "bn-l1", "BN-s": "bn-s",
             "BN*": "bn-star", "LN": "ln", "LN +L1": "ln-l1", "LN-s": "ln-s", "LN*": "ln-star", "DN": "dn",
             "DN*": "dn-star"}
ROWS = tuple(ROW_NAMES.values())
_LABEL = {v: k for k, v in ROW_NAMES.items()}

#: Table 9 (PTB ablations), test perplexity: row label -> (LSTM, tanh RNN, ReLU RNN)
TABLE9 = {
    "Baseline":     (115.720, 149.357, 147.630),
    "Baseline +L1": (111.885, 143.965, 148.572),
    "BN":           (123.245, 148.052, 164.977),
    "BN +L1":       (123.736, 152.777, 166.658),
    "BN-s":         (123.243, 131.719, 139.159),
    "BN*":          (116.920, 129.155, 138.947),
    "LN":           (119.247, 154.324, 149.128),
    "LN +L1":       (116.964, 152.100, 147.937),
    "LN-s":         (102.492, 133.812, 118.786),
    "LN*":          (101.725, 129.823, 116.609),
    "DN":           (103.714, 132.143, 118.789),
    "DN*":          (102.238, 123.652, 117.868),
}
#: Table 4 (the main PTB table) is a subset of Table 9 with the same numbers.
TABLE4 = {k: TABLE9[k] for k in ("Baseline", "BN", "LN", "BN*", "LN*", "DN*")}

# sigma per row (code; PAPER.md §2.3). None: no normalizer.
_SIGMA = {"base": None, "base-l1": None, "bn": 0.01, "bn-l1": 0.01, "bn-s": 1.0, "bn-star": 1.0, "ln": 0.01,
          "ln-l1": 0.01, "ln-s": 1.0, "ln-star": 1.0, "dn": 1.0, "dn-star": 1.0}
# alpha per row: (LSTM, tanh RNN, ReLU RNN), code values except the quirks handled in get_config
_ALPHA = {"base": (0, 0, 0), "base-l1": (1e-2, 1e-2, 1e-2), "bn": (0, 0, 0), "bn-l1": (1e-2, 1e-1, 1e-4),
          "bn-s": (0, 0, 0), "bn-star": (1e-1, 1e-4, 1e-1), "ln": (0, 0, 0), "ln-l1": (1e-2, 1e-2, 1e-2),
          "ln-s": (0, 0, 0), "ln-star": (1e-3, 1e-2, 1e-2), "dn": (0, 0, 0), "dn-star": (1e-4, 1e-2, 1e-2)}


#: the numeric fields :class:`PTBConfig` checks: (field, test, what is allowed)
_RANGES = (("lr", lambda v: v > 0, "a number > 0"),
           ("lr_decay", lambda v: v > 0, "a number > 0 (the learning rate's factor per epoch after decay_after)"),
           ("clip_norm", lambda v: v > 0, "None (no clipping) or a number > 0"),
           ("alpha", lambda v: v >= 0, "a number >= 0"),
           *((f, lambda v: v >= 1, "an integer >= 1") for f in ("hidden_size", "num_layers", "batch_size", "num_steps",
                                                               "epochs")),
           ("decay_after", lambda v: v >= 0, "an integer >= 0"))



@dataclass(frozen=True)
class PTBConfig:
    """One PTB run (PAPER.md §3.3). Build with :func:`get_config`; change fields with ``cfg.replace(...)``."""
    name: str                         # "<row>-<cell>", e.g. "dn-star-lstm"
    row: str                          # the Table 9 row label, e.g. "DN*"
    cell: str                         # "lstm", "tanh-rnn" or "relu-rnn"
    arch: str                         # the cell class (dnlib.models.rnn.CELLS): lstm, bn-lstm, ln-lstm, rnn, bn-rnn
    norm: str = "none"                # normalizer preset of every site (dnlib.norms.presets; the BN cells' "bn")
    sigma: float | None = None     # smoothing term sigma (enters as sigma^2); None: no normalizer
    alpha: float = 0.0                # L1 weight per site, summed over sites, layers and steps (PAPER.md §2.2)
    affine: bool = False              # learn gains and biases in the normalizers
    window: int | None = None      # 1-D DN window (units along the hidden axis)
    border: str = "zeros"             # DN window border: "zeros" (paper, divide by 2R+1), "reference" (code)
    lr: float = 1.0                   # initial learning rate (plain SGD)
    hidden_size: int = 200            # units per layer (= embedding size)
    num_layers: int = 2               # stacked recurrent layers
    vocab_size: int = 10000           # softmax size (set from the data when training)
    batch_size: int = 20              # streams per minibatch
    num_steps: int = 20               # BPTT unroll
    epochs: int = 13                  # training epochs
    decay_after: int = 4              # LR constant for epochs 1..decay_after, then halved every epoch
    lr_decay: float = 0.5             # LR factor per epoch after decay_after (> 0)
    clip_norm: float | None = 5.0     # clip the global gradient norm to this (> 0); None: no clipping
    init_scale: float = 0.1           # uniform(-s, s) initialisation
    forget_bias: float = 0.0          # added to the forget-gate pre-activation (before normalization)
    state_norm_c: bool = True         # BN/LN-LSTM: pass the normalized c on as state (the code's quirk)
    clip_mode: str = "dense"          # clipping norm: "dense" (torch) or "slices" (TF: embedding rows per occurrence)
    running_stats: str = "torch"      # BN cells' running statistics: "torch" or "tf" (EMA from 0, biased variance)
    bn_test_step0: bool = False       # BN cells (LSTM and vanilla): test set with step-0 running statistics (code)
    eps: float = 0.0                  # numerical eps beside sigma^2 (the code has none)
    source: str = "paper"             # "paper" or "code": which side of the §5.4 discrepancies
    notes: tuple = field(default_factory=tuple)   # what was chosen where paper and code differ

    def __post_init__(self):
        for name, ok, allowed in _RANGES:      # values that would reverse or stop the update: refused here
            cli.check_number(name, getattr(self, name), ok, allowed, integer="integer" in allowed,
                             none_ok=name == "clip_norm")
        for name, allowed in (("clip_mode", CLIP_MODES), ("running_stats", RUNNING_STATS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: got {getattr(self, name)!r}; allowed values are {list(allowed)}")
        if self.affine and self.norm == "none":
            raise ValueError(f"affine: True needs a normalizer, but {self.name!r} has norm='none' (no gain or bias "
                             f"to learn, in the authors' code either); drop affine or set norm")
        if self.running_stats != "torch" and self.arch not in ("bn-lstm", "bn-rnn"):
            raise ValueError(f"running_stats: {self.running_stats!r} sets the BN cells' running statistics, but "
                             f"{self.name!r} (arch {self.arch!r}) keeps none; allowed there: 'torch'")

    @property
    def nonlinearity(self) -> str | None:
        return None if self.cell == "lstm" else self.cell.split("-")[0]

    def lr_at_epoch(self, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (1-based): lr * lr_decay^max(epoch - decay_after, 0)."""
        return self.lr * self.lr_decay ** max(epoch - self.decay_after, 0)

    def norm_kwargs(self) -> dict:
        """The :func:`dnlib.make_norm` overrides every site of this config gets."""
        kw = {}
        if self.sigma is not None:
            kw.update(sigma=self.sigma, eps=self.eps)
        if self.alpha:
            kw["alpha"] = self.alpha
        if self.window is not None:
            kw.update(window=self.window, border=self.border)
        if self.arch in ("bn-lstm", "ln-lstm", "bn-rnn") or self.norm != "none":
            kw["affine"] = self.affine
        if self.running_stats != "torch":
            kw["running_stats"] = self.running_stats
        return kw

    def model_kwargs(self) -> dict:
        """Keyword arguments of :class:`dnlib.models.rnn.LanguageModel` (without ``vocab_size``)."""
        kw = dict(hidden_size=self.hidden_size, arch=self.arch, num_layers=self.num_layers,
                  init_scale=self.init_scale, norm=self.norm, norm_kwargs=self.norm_kwargs())
        if self.arch in ("lstm", "bn-lstm", "ln-lstm"):
            kw["forget_bias"] = self.forget_bias
        if self.arch in ("bn-lstm", "ln-lstm"):
            kw["state_norm_c"] = self.state_norm_c
        if self.arch in ("bn-lstm", "bn-rnn"):
            kw["max_steps"] = self.num_steps
        if self.arch in ("rnn", "bn-rnn"):
            kw["nonlinearity"] = self.nonlinearity
        return kw

    @property
    def paper_perplexity(self) -> float:
        """The paper's test perplexity for this row and cell (Table 9)."""
        return TABLE9[self.row][CELL_TYPES.index(self.cell)]

    def replace(self, **changes) -> PTBConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class PTBRunConfig(PTBConfig):
    """A :class:`PTBConfig` plus ``steps``: the length of the schedule in minibatches
    (None: ``epochs`` x the batches per epoch). Given, it shortens (or lengthens) the schedule as CIFAR's and SR's
    ``steps`` do: the run trains ``steps`` minibatches and the per-epoch learning-rate decay is scaled to them
    (:meth:`lr_at_step`). To stop early with the schedule unchanged, use the runner's ``stop_after``."""
    steps: int | None = None

    def lr_at_step(self, step: int, batches_per_epoch: int) -> float:
        """The learning rate of minibatch ``step`` (0-based): :meth:`lr_at_epoch` of its epoch of the schedule; an
        epoch of the schedule is ``batches_per_epoch`` minibatches, or ``steps / epochs`` of them when ``steps``
        is set (the decay scaled to the shortened schedule)."""
        length = self.epochs * batches_per_epoch if self.steps is None else self.steps
        return self.lr_at_epoch(step * self.epochs // length + 1)


def _split(name: str):
    for cell in CELL_TYPES:
        if name.endswith("-" + cell):
            row = name[: -len(cell) - 1]
            if row in ROWS:
                return row, cell
    raise ValueError(f"config: unknown PTB config {name!r}; names are <row>-<cell> with row in {list(ROWS)} and "
                     f"cell in {list(CELL_TYPES)}, e.g. 'dn-star-lstm'")


def _learning_rate(row: str, cell: str, source: str, notes: list) -> float:
    """The row's learning rate: 1.0 but 0.1 for the baseline vanilla RNNs, the BN ReLU-RNN and (paper text, a note
    in ``notes``) the baseline LSTM, which the code trains at 1.0."""
    if row in ("base", "base-l1"):
        if cell == "lstm" and source == "paper":
            notes.append("baseline LSTM lr 0.1 (paper text); the code uses 1.0")
            return 0.1
        return 1.0 if cell == "lstm" else 0.1
    return 0.1 if row == "bn" and cell == "relu-rnn" else 1.0


def get_config(name: str, source: str = "paper", **overrides) -> PTBConfig:
    """The named configuration (``"<row>-<cell>"``), on the ``source`` side of the paper/code discrepancies,
    with ``overrides`` applied to its fields."""
    if source not in SOURCES:
        raise ValueError(f"source: got {source!r}; allowed values are {list(SOURCES)}")
    row, cell = _split(name)
    k = CELL_TYPES.index(cell)
    lstm = cell == "lstm"
    notes = []
    sigma, alpha = _SIGMA[row], float(_ALPHA[row][k])
    family = row.split("-")[0]            # base, bn, ln, dn
    if lstm:
        arch = {"base": "lstm", "bn": "bn-lstm", "ln": "ln-lstm" if row == "ln" else "lstm", "dn": "lstm"}[family]
    else:
        arch = "bn-rnn" if family == "bn" else "rnn"
    norm = {"base": "none", "bn": "bn", "ln": "ln-s", "dn": "dn-1d-s"}[family]
    affine = family == "bn" or row == "ln"
    if row == "ln":
        norm = "ln"                       # LN-LSTM (Ba et al.) and the LN vanilla RNN: plain LN, affine
    lr = _learning_rate(row, cell, source, notes)
    if row == "base-l1":
        notes.append("Baseline +L1 has no config in the code: alpha 1e-2 is our choice")
    # §5.4 item 5: LN-RNN alpha quirk
    if not lstm and row in ("ln", "ln-s"):
        if source == "code":
            alpha = 1e-2
            notes.append("code quirk: alpha 1e-2 on every LN vanilla-RNN variant")
        else:
            notes.append("alpha 0 (the code's catch-all gives 1e-2)")
    hidden = 200 if (lstm or source == "code") else 400
    if not lstm and source == "paper":
        notes.append("RNN hidden 400 (paper); the code uses 200")
    window, border = None, "zeros"
    if family == "dn":
        if source == "paper":
            window = 61 if lstm else 121
            notes.append(f"DN window 2R+1 = {window}, zeros counted at the border (paper eqs. 6-7)")
        else:
            window, border = (30 if lstm else 60), "reference"
            notes.append(f"DN window {window} units, TF SAME padding (code)")
    code_bn = source == "code" and family == "bn"
    if source == "code":
        notes.append("clipping norm over the embedding's per-occurrence slices (TF)")
    if code_bn:
        notes.append("BN running statistics: TF's moving averages (from 0, biased variance)")
    cfg = PTBConfig(name=name, row=_LABEL[row], cell=cell, arch=arch, norm=norm, sigma=sigma, alpha=alpha,
                    affine=affine, window=window, border=border, lr=lr, hidden_size=hidden,
                    bn_test_step0=code_bn, clip_mode="slices" if source == "code" else "dense",
                    running_stats="tf" if code_bn else "torch", source=source, notes=tuple(notes))
    return cfg.replace(**overrides) if overrides else cfg


def list_configs(cell: str | None = None) -> list:
    """All config names (36), or those of one cell type."""
    cells = CELL_TYPES if cell is None else (cell,)
    return [f"{row}-{c}" for c in cells for row in ROWS]


def paper_perplexity(name: str) -> float:
    """Table 9's test perplexity for a config name."""
    row, cell = _split(name)
    return TABLE9[_LABEL[row]][CELL_TYPES.index(cell)]
