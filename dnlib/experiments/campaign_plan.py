"""The campaign's launches and what predicts them (issue 28; layer: experiments, beside
:mod:`dnlib.experiments.campaign`, which runs them): every paper table row as stacked launches (:class:`Launch`,
:func:`plan`), each experiment's probe (:func:`probe`: the launch its graph check and bench use), the short bench on
it (:func:`bench`), the graph == eager check (:func:`check_graph`) and a launch's predicted seconds
(:func:`predict`); :func:`prepare_launch` builds a launch's stacked run (the campaign's budget statuses)."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch

from ..training import precision
from .bench import graph_not_applicable
from .runner import Run

__all__ = ["Launch", "plan", "probe", "prepare_launch", "shared_data", "bench", "predict", "steps_within",
           "check_graph", "graph_check_text", "table_notes", "ptb_eval_steps", "TABLES", "EXPERIMENTS", "SR_ROWS",
           "BUDGET_STATUS", "PROBES", "NOT_PLANNED"]

#: the paper tables each experiment's launches fill (registry.paper_tables names)
TABLES = {"cifar": ("table3", "table7"), "sr": ("table5", "table6"), "ptb": ("table4", "table9")}
EXPERIMENTS = tuple(TABLES)
SR_ROWS = ("none", "bn", "dn*", "dn*-code")
BUDGET_STATUS = "time budget at step"
#: what the paper's tables hold that the campaign does not plan (``not_planned`` in ``campaign.json``)
NOT_PLANNED = ("sr paper-* rows: the authors' SGD schedule (1M steps at lr 1e-4)",
               "Tables 5/6's x4 columns: the SR launches train and are evaluated at scale 3 only (the fast x3 rows)",
               "CIFAR-100 (Table 7's second column) and Table 10 (analysis of trained models)")
#: the launch each experiment's graph check and bench use: its step of the most kernel launches, so the prediction
#: bounds the others' and the capture that matters is checked. Kernels per training step at the paper's sizes
#: (results/h100/campaign_facts.json, scripts/campaign_facts.py): CIFAR DN* 612 (633 for 3 stacked) against BN*'s 212
#: and the baseline's 109; SR fast-dn* 588 (608 for 3 stacked) against fast-none's 106; PTB's lstm-lstm group (K=21)
#: 14,782 against dn-star-lstm's 5,437. At tiny sizes (tests/test_campaign.py): SR fast-dn*-code 674 against
#: fast-dn*'s 668; PTB lstm-lstm 3,772 against lstm-bn-lstm's 3,518 (PTB's counts grow with the unrolled steps)
PROBES = {"cifar": "dn-star", "sr": "fast-dn-star-code", "ptb": "lstm-lstm"}



def table_notes(experiments: Sequence[str] = EXPERIMENTS) -> dict:
    """``{table: note}``: what a row of a table the campaign fills is not, said beside it (tables.md, the log,
    ``campaign.json``): PTB runs the paper's text (``source="paper"``), whose Baseline LSTM learning rate is not the
    one of the authors' code that most likely made Table 4's number (PAPER.md §2.3, §5.4)."""
    if "ptb" not in experiments:
        return {}
    from .ptb_configs import get_config
    paper, code = get_config("base-lstm", "paper").lr, get_config("base-lstm", "code").lr
    note = (f"Baseline LSTM: trained as the paper's text says (source=paper: lr {paper:g}); the paper's 115.72 most "
            f"likely comes from the authors' code, lr {code:g} (PAPER.md §2.3, §5.4), so that row compares two "
            f"learning rates: `SOURCE=code CONFIGS=base-lstm bash scripts/gpu_ptb.sh` trains the code's")
    return {"table4": note, "table9": note}


@dataclasses.dataclass
class Launch:
    """One stacked model: ``configs`` x ``seeds`` of one experiment (CIFAR/SR: one configuration), trained in
    ``OUT/<experiment>/<name>``. ``steps``: None for the schedule's; ``overrides``/``options``: the runner's."""
    experiment: str
    name: str
    configs: list
    seeds: list
    steps: int | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    options: dict = dataclasses.field(default_factory=dict)
    planned: int = 0                  # steps the schedule plans (filled by plan)
    predicted_s: float = 0.0          # predicted training seconds (filled by bench)

    @property
    def copies(self) -> int:
        return len(self.configs) * len(self.seeds)


def recipe_of(name: str):
    import importlib
    return importlib.import_module(f"dnlib.experiments.{name}").RECIPE


def _planned(recipe, launch: Launch) -> int:
    """The steps a launch plans (without building it: from the configuration)."""
    cfg = recipe.config(launch.configs[0], steps=launch.steps, **launch.overrides)
    if launch.experiment == "ptb":
        if cfg.steps:
            return int(cfg.steps)
        tokens = {"max_tokens": launch.options.get("max_tokens")}
        n = tokens["max_tokens"] or 929_589                      # PTB's training tokens
        return cfg.epochs * ((n // cfg.batch_size - 1) // cfg.num_steps)
    return int(cfg.steps)


def plan(tiny: bool = False, seeds: Sequence[int] = (0, 1, 2), experiments: Sequence[str] = EXPERIMENTS) -> list:
    """The campaign's launches, in the order they run (module doc). ``tiny``: the CPU rehearsal's sizes (a few steps
    of small models on data subsets; the same launches, configurations and seeds)."""
    from .cifar_configs import list_configs as cifar_configs
    from .ptb_configs import list_configs as ptb_configs
    seeds = list(seeds)
    out = []
    for exp in experiments:
        if exp not in EXPERIMENTS:
            raise ValueError(f"experiments: {exp!r} is not one of {list(EXPERIMENTS)}")
        if exp == "cifar":
            kw = (dict(steps=2, overrides={"batch_size": 20}, options={"subset": (300, 100), "eval_every": 2})
                  if tiny else dict(options={"eval_every": 5000}))
            out += [Launch("cifar", name, [name], seeds, **kw) for name in cifar_configs()]
        elif exp == "sr":
            kw = (dict(steps=2, overrides={"batch_size": 4, "channels": (8, 4)},
                       options={"sets": ("Set5", "Set14"), "eval_every": 2}) if tiny
                  else dict(options={"eval_every": 5000}))
            out += [Launch("sr", f"fast-{row}".replace("*", "-star"), [f"fast-{row}"], seeds, **kw)
                    for row in SR_ROWS]
        else:
            recipe = recipe_of("ptb")
            kw = (dict(steps=2, overrides={"hidden_size": 8, "batch_size": 4, "num_steps": 5},
                       options={"max_tokens": 200, "vocab": 40, "eval_every": 2, "final_test_batch_size": 4})
                  if tiny else {})
            groups: dict = {}
            for name in ptb_configs():
                cfg = recipe.config(name)
                groups.setdefault((cfg.cell, cfg.arch), []).append(name)
            out += [Launch("ptb", f"{cell}-{arch}", names, seeds, **kw) for (cell, arch), names in groups.items()]
    for launch in out:
        launch.planned = _planned(recipe_of(launch.experiment), launch)
    return out



# ---------------------------------------------------------------------------------------- one launch
class _BudgetRun(Run):
    """A stacked run whose stops by the time limit (or stop_after) are the campaign's budget."""

    def write(self, stopped: str) -> list:
        if stopped.startswith(("time limit at", "stop_after at")):
            stopped = f"{BUDGET_STATUS} " + stopped.split(" at step ", 1)[1]
        return super().write(stopped)


def shared_data(experiment_name: str, tiny: bool = False, device: str = "auto"):
    """The data every launch of an experiment trains on, loaded once per process (CIFAR's JPEG folder takes seconds
    to decode; PTB's ids): passed as the build option ``data``; None for SR (its pairs are cached by the recipe).
    ``tiny``: CIFAR's stratified 300/100 subset (of seed 0, shared by every copy)."""
    if experiment_name == "cifar":
        from ..training.trainer import resolve_device
        from .cifar import load_data
        return load_data("cifar10", subset=(300, 100) if tiny else None, device=resolve_device(device),
                         download=False)
    if experiment_name == "ptb":
        from .ptb import load_data
        return load_data(200, 40) if tiny else load_data()
    return None


def prepare_launch(launch: Launch, device: str, data=None, **kwargs):
    recipe = recipe_of(launch.experiment)
    options = dict(launch.options, **({} if data is None else {"data": data}))
    kw = dict(device=device, steps=launch.steps, overrides=dict(launch.overrides), options=options,
              progress=False, **kwargs)
    if launch.experiment == "ptb":
        from . import stacked_ptb
        return stacked_ptb.GroupRun(recipe, launch.configs, launch.seeds, budget=True, **kw)
    from . import stacked, stacked_sr
    build = stacked.build if launch.experiment == "cifar" else stacked_sr.build
    return _BudgetRun(recipe, launch.configs[0], seeds=launch.seeds, build=build, **kw)


# ------------------------------------------------------------------------------------------------ bench
def bench(launch: Launch, device: str = "auto", steps: int = 3, warmup: int = 2, data=None) -> dict:
    """Seconds per training step of ``launch`` (built without a folder, ``warmup`` steps first: the CUDA-graph
    capture), of its build and of one evaluation, and on CUDA the peak memory (bytes); for PTB also the steps of a
    chunk's evaluation and of the final test pass (:func:`ptb_eval_steps`) and the seconds per evaluation step
    (``eval_step_s``: the evaluation's seconds over the steps it ran, the final pass's among them where the bench
    reached the schedule's end, as the CPU rehearsal's does)."""
    t0 = time.perf_counter()
    run = prepare_launch(launch, device, data)
    tr = run.trainer
    build_s = time.perf_counter() - t0
    cuda = tr.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(tr.device)
    sync = (lambda: torch.cuda.synchronize(tr.device)) if cuda else (lambda: None)

    def step():
        tr.train_step(next(tr.batches))
        tr.step += 1
    with precision.float32_arithmetic(run.tf32):   # the launch's arithmetic, as its run trains (runner.Run.go)
        for _ in range(warmup):
            step()
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        dt = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        metrics = tr.eval_metrics()                # one chunk's evaluation (a launch has planned / chunk of them)
        sync()
        eval_s = time.perf_counter() - t0
    out = {"launch": launch.name, "copies": launch.copies, "s_per_step": dt, "build_s": build_s,
           "eval_s": eval_s, "chunk": run.chunk,
           "peak_bytes": torch.cuda.max_memory_allocated(tr.device) if cuda else None}
    if launch.experiment == "ptb":
        every, final = ptb_eval_steps(run)
        rows = metrics if isinstance(metrics, list) else [metrics]
        measured = every + (final if any("final_test_ppl" in m for m in rows) else 0)   # (at the schedule's end)
        out.update(eval_steps=every, final_test_steps=final, eval_step_s=eval_s / measured)
    return out


def ptb_eval_steps(run) -> tuple:
    """A PTB run's evaluation in steps (each one eager forward over ``num_steps`` tokens of every stream): ``(steps
    of one chunk's evaluation: valid and test in the training layout, steps of the final test pass at the end of
    the schedule: the test set as ``final_test_batch_size`` streams, 4,121 at the paper's one stream; 0 without
    it)``."""
    from ..data.ptb import PTBBatches
    splits, cfg, final_bs = run.setup.data[0], run.cfg, run.setup.info.get("final_test_batch_size")
    every = sum(len(PTBBatches(splits[s], cfg.batch_size, cfg.num_steps)) for s in ("valid", "test"))
    return every, len(PTBBatches(splits["test"], final_bs, cfg.num_steps)) if final_bs else 0


def predict(launch: Launch, b: dict) -> float:
    """Seconds a launch takes by its experiment's bench ``b``: build, its steps, one evaluation per chunk, and for
    PTB the final test pass (one stream at the paper's batch 1: 4,121 eager steps, against a chunk's 390 in the
    training layout) at the bench's seconds per evaluation step (``eval_step_s``: the evaluation is eager and
    launch-bound on a GPU, a step's time following its kernels more than its streams, so this bounds the pass's
    seconds from above where a step of fewer streams costs less)."""
    evals = -(-launch.planned // b["chunk"])
    if b.get("final_test_steps"):              # PTB: its evaluations counted in steps
        return (b["build_s"] + launch.planned * b["s_per_step"]
                + (evals * b["eval_steps"] + b["final_test_steps"]) * b["eval_step_s"])
    return b["build_s"] + launch.planned * b["s_per_step"] + evals * b["eval_s"]


def steps_within(share: float, b: dict) -> int:
    """The steps of a launch that fit in ``share`` seconds by its experiment's bench ``b`` (:func:`predict` turned
    round): after the build, one evaluation and, for PTB, the final one-stream test pass (which the count left out,
    so a launch given just enough for its schedule overran by the pass); 0 when none do."""
    fixed = b["build_s"] + b["eval_s"] + b.get("final_test_steps", 0) * b.get("eval_step_s", 0.0)
    return max(0, int((share - fixed) / max(b["s_per_step"], 1e-9)))


def check_graph(launch: Launch, device: str = "auto", steps: int = 3, rtol: float = 1e-2, data=None) -> dict:
    """The stacked launch's graph step against its eager step: ``steps`` steps of both from the same initialisation
    on the same batches (the build option ``mode``: ``graph``, ``eager``); ``ok`` when every packed parameter and
    buffer agrees to ``rtol`` of how far training moved it, every copy's losses to ``rtol``, and no capture fell
    back (:func:`dnlib.experiments.bench.check_graph`'s rule, for K copies). On a CPU the graph step's body runs
    without a capture: CIFAR's is checked there too (its hand-written SGD against torch's); PTB's stacked trainer runs
    one body for both steps, so its check means something on CUDA only, and SR's fast schedule (Adam) builds no graph
    step: such a check, which cannot fail, is not made (:func:`~dnlib.experiments.bench.graph_not_applicable`):
    ``ok`` None and ``why``, never ``ok`` True."""
    out, eager = {}, None
    for mode in ("eager", "graph"):
        x = dataclasses.replace(launch, options={**launch.options, "mode": mode})
        run = prepare_launch(x, device, data)
        tr = run.trainer
        why = graph_not_applicable(eager, tr, run.setup.info.get("mode")) if mode == "graph" else None
        if why:
            return {"launch": launch.name, "copies": launch.copies, "trainer": type(tr).__name__, "captured": False,
                    "steps": 0, "ok": None, "why": why}
        eager = tr
        init = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        losses = []
        with precision.float32_arithmetic(run.tf32):   # the launch's arithmetic, as its run trains
            for _ in range(steps):
                losses.append(tr.train_step(next(tr.batches)).detach().double().reshape(-1).cpu())
                tr.step += 1
        out[mode] = (init, tr.model.state_dict(), torch.stack(losses), getattr(tr, "fell_back", False),
                     type(tr).__name__, getattr(tr, "capture", False))
    (init, e_sd, le, _, _, _), (_, g_sd, lg, fell, cls, captured) = out["eager"], out["graph"]
    floats = [k for k, v in e_sd.items() if v.is_floating_point()]
    moved = max((e_sd[k].double() - init[k].double()).abs().max().item() for k in floats)
    diff = max((e_sd[k].double() - g_sd[k].double()).abs().max().item() for k in floats)
    loss_diff = ((le - lg).abs() / le.abs().clamp(min=1e-12)).max().item()
    ok = diff <= rtol * moved and loss_diff <= rtol and moved > 0 and bool(torch.isfinite(lg).all()) and not fell
    return {"launch": launch.name, "copies": launch.copies, "trainer": cls, "captured": bool(captured),
            "steps": steps, "param_diff": diff, "param_moved": moved, "loss_rel_diff": loss_diff, "ok": bool(ok),
            "error": "the CUDA-graph capture failed" if fell else None}


def graph_check_text(g: dict) -> str:
    """A :func:`check_graph` row in words (the campaign's log): ``ok (...)``, ``FAILED (...)`` or ``not applicable:
    <why>``."""
    if g.get("ok") is None:
        return g.get("why") or "not applicable"
    figures = (f"params {g['param_diff']:.2g} of {g['param_moved']:.2g} moved, losses {g['loss_rel_diff']:.2g}"
               + (f"; {g['error']}" if g.get("error") else ""))
    return f"{'ok' if g['ok'] else 'FAILED'} ({figures})"


def probe(launches: Sequence[Launch]) -> Launch:
    """The launch of one experiment that its graph check and bench use: :data:`PROBES`, its step of the most kernel
    launches (else, for a plan without it, the launch of most copies)."""
    named = [x for x in launches if x.name == PROBES.get(x.experiment)]
    return named[0] if named else max(launches, key=lambda x: x.copies)
