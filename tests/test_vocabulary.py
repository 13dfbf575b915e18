"""One spelling per idea across the experiments (issue 24 item 3): the same word means the same thing in CIFAR, PTB
and SR, on the command line and in the library (``steps``, ``stop_after``, ``eval_every``, ``bench``, the results
table, ``headline``; notebooks pass None, not sentinels)."""
import os
from pathlib import Path

import pytest

from dnlib.experiments import cifar, commands, ptb, sr
from dnlib.experiments.runner import build_setup

MIRROR = Path(os.environ.get("DNLIB_DATA", "data"))
HAVE = {"cifar": (MIRROR / "cifar10-jpeg" / "train").is_dir() or (MIRROR / "cifar-10-batches-py").is_dir(),
        "ptb": (MIRROR / "ptb" / "ptb.train.txt").is_file(), "sr": (MIRROR / "sr" / "T91").is_dir()}
# (recipe, configuration, fields, options) of a tiny build of each experiment
TINY = {"cifar": (cifar.RECIPE, "bn-star", {"batch_size": 20}, {"subset": (200, 100)}),
        "ptb": (ptb.RECIPE, "dn-star-lstm", {"hidden_size": 8, "batch_size": 4},
                {"max_tokens": 3000, "vocab": 50, "final_test_batch_size": None}),
        "sr": (sr.RECIPE, "fast-dn*", {"batch_size": 4}, {"sets": (), "curve_sets": ()})}
pytestmark = pytest.mark.usefixtures("one_thread")


def _need(name):
    if not HAVE[name]:
        pytest.skip(f"{name}: its data is not in DNLIB_DATA={MIRROR}")


def _schedule(name, steps=None, **fields):
    """``(planned steps, [(step, lr factor)] where the factor changes)`` of a run's trainer, as built."""
    recipe, config, tiny, options = TINY[name]
    cfg = recipe.config(config, steps=steps, **{**tiny, **fields})
    setup = build_setup(recipe, cfg, 0, "cpu", dict(options))
    tr = setup.make_trainer(evaluate=None)
    planned = int(setup.train.steps)
    return planned, [(k, tr.lr_factor(k)) for k in range(1, planned) if tr.lr_factor(k) != tr.lr_factor(k - 1)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar", "ptb", "sr"])
def test_steps_shortens_the_schedule_in_every_experiment(name):
    """``steps=N`` trains N steps of the whole schedule, its learning-rate decay at the same fractions of the run
    (before: PTB trained N minibatches of the 13-epoch schedule, so a short run never decayed)."""
    _need(name)
    full, decays = _schedule(name)
    assert decays, f"{name}: the full schedule has no learning-rate decay to scale"
    n = 120
    planned, short = _schedule(name, steps=n)
    assert planned == n
    assert [f for _, f in short] == [f for _, f in decays], f"{name}: the decays of the full schedule, in order"
    for (k, _), (kk, _) in zip(short, decays):
        assert abs(k / n - kk / full) <= 1.5 / n, f"{name}: decay at step {k}/{n}, the full run's at {kk}/{full}"


@pytest.mark.slow
def test_a_scaled_ptb_schedule_is_part_of_the_runs_identity():
    """A PTB run of a scaled schedule keeps steps and epochs in the identity its checkpoint must match (another
    length is another learning-rate schedule); a schedule of whole epochs still extends with more epochs."""
    _need("ptb")
    recipe, config, tiny, options = TINY["ptb"]
    info = lambda **f: build_setup(recipe, recipe.config(config, **tiny, **f), 0, "cpu", dict(options)).run_info  # noqa: E731
    assert info(epochs=2) == info(epochs=3)
    assert info(steps=40) != info(steps=50) and info(steps=40, epochs=2) != info(steps=40, epochs=3)


def _help(recipe, verb):
    with pytest.raises(SystemExit):
        commands.main(recipe, [verb, "--help"])


@pytest.mark.parametrize("verb", ["run", "sweep", "stack"])
def test_steps_and_stop_after_read_the_same_in_every_recipes_help(verb, capsys):
    """``--steps`` and ``--stop-after`` are one flag each, with one help text, in every experiment's ``run``,
    ``sweep`` (the flags it passes on) and ``stack``."""
    texts = {}
    for recipe in (cifar.RECIPE, ptb.RECIPE, sr.RECIPE):
        if verb not in ("run", "sweep") and verb not in recipe.commands():
            continue
        _help(recipe, verb)
        out = " ".join(capsys.readouterr().out.split())
        assert "--steps N the schedule's length: shortened (or lengthened) to N steps" in out, recipe.name
        assert "--stop-after N stop at step N with the schedule unchanged" in out, recipe.name
        texts[recipe.name] = out[out.index("--steps N"):].split("--", 2)[1]
    assert len(set(texts.values())) == 1, texts


def test_stop_after_on_the_command_line(tmp_path, capsys):
    """``run --stop-after N`` stops at step N with the schedule unchanged (the record says so; --resume goes on)."""
    _need("ptb")
    args = ["run", "base-lstm", "--max-tokens", "3000", "--vocab", "50", "--hidden-size", "8", "--batch-size", "4",
            "--epochs", "1", "--final-test-batch-size", "none", "--device", "cpu", "--out", str(tmp_path)]
    assert ptb.main([*args, "--stop-after", "3"]) == 0
    import json
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (row["steps"], row["stopped"]) == (3, "stop_after at step 3") and row["planned"] > 3


def _chunk(name, **options):
    """The steps per evaluation and checkpoint of a 120-step run as the runner takes them (``Run.chunk``)."""
    recipe, config, tiny, opts = TINY[name]
    setup = build_setup(recipe, recipe.config(config, steps=120, **tiny), 0, "cpu", {**opts, **options})
    assert setup.train.eval_every == setup.train.checkpoint_every
    return int(setup.chunk or setup.train.eval_every or setup.train.steps), setup


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar", "ptb", "sr"])
def test_eval_every_is_a_build_option_in_every_experiment(name):
    """``eval_every`` is a build option (``--eval-every``: an option flag; ``run(..., eval_every=N)``) of every
    experiment, never a config field; None: the experiment's default, 0: only at the end, N: every N steps (before:
    a field of SR's configurations, an option of CIFAR and PTB that took no None)."""
    _need(name)
    recipe, config, tiny, _ = TINY[name]
    assert recipe.flags["--eval-every"][0] == "option"
    with pytest.raises(ValueError, match="eval_every"):
        recipe.config(config, eval_every=3)
    assert _chunk(name, eval_every=7)[0] == 7
    assert _chunk(name, eval_every=0)[0] == 120
    default, setup = _chunk(name, eval_every=None)
    assert default == {"cifar": 500, "sr": 40, "ptb": setup.info.get("batches_per_epoch")}[name]
    assert setup.info["eval_every"] == default
    with pytest.raises(ValueError, match="eval_every"):
        _chunk(name, eval_every=-1)


@pytest.mark.parametrize("name", ["cifar", "ptb", "sr"])
def test_every_experiment_has_one_bench_built_on_the_runners(name, monkeypatch):
    """A configuration's training throughput is ``<experiment>.bench(config, ...)`` in every experiment: one
    configuration, one row, made by :func:`dnlib.experiments.bench.bench` and counted in the recipe's unit (before:
    ``cifar.benchmark``, a list from ``sr.bench``, and ``ptb.bench`` timed the cells alone, as ``make bench`` does)."""
    _need(name)
    from dnlib.experiments import bench as benches
    from dnlib.experiments import ptb_cells
    assert not hasattr(cifar, "benchmark") and not hasattr(ptb_cells, "bench")
    module = {"cifar": cifar, "ptb": ptb, "sr": sr}[name]
    recipe, config, tiny, options = TINY[name]
    calls, real = [], benches.bench
    monkeypatch.setattr(benches, "bench", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    load = {"cifar": {"subset": (200, 100)}, "ptb": {"max_tokens": 3000, "vocab": 50}, "sr": {}}[name]
    row = module.bench(config, steps=2, warmup=0, device="cpu", **tiny, **load)
    assert calls == [recipe] and row["config"] == recipe.config(config, **tiny).name and row["steps"] == 2
    unit, per_step = {"cifar": ("images", 20), "ptb": ("tokens", 4 * 20), "sr": ("patches", 4)}[name]
    assert recipe.unit == unit and row[f"{unit}_per_s"] == pytest.approx(row["steps_per_s"] * per_step)


def test_ptb_bench_verb_is_the_training_throughput(capsys):
    """``ptb bench`` is the runner's bench verb as in CIFAR and SR (configurations, --steps, --warmup, the data
    flags): one JSON row per configuration with tokens/s (before: the cells against nn.LSTM, --reps)."""
    _need("ptb")
    import json
    assert ptb.main(["bench", "base-lstm", "--steps", "2", "--warmup", "0", "--max-tokens", "3000", "--vocab", "50",
                     "--hidden-size", "8", "--batch-size", "4", "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["config"] == "base-lstm" and row["steps"] == 2 and row["tokens_per_s"] > 0


# ------------------------------------------------------------------------------ notebooks pass None, not sentinels
NONE_MEANS = {"02_activation_explorer": ["checkpoint"], "03_cifar": ["steps", "subset"],
              "04_language_model": ["max_tokens", "vocab", "hidden_size", "batch_size", "decay_after", "threads"],
              "05_super_resolution": ["steps", "eval_every"], "07_modern_networks": ["steps", "subset", "threads"]}


@pytest.mark.parametrize("stem", sorted(NONE_MEANS))
def test_notebooks_pass_none_for_the_default(stem):
    """A notebook parameter whose value can mean "the default" is declared ``"Optional[X]"``, says "None: ..." in its
    help, takes None from a profile and from the command line, and the full profile passes None where it wants the
    default (before: 0, -1, [] or "" that the library bent to: ``max_tokens or None``, ``batch_size or 20``)."""
    import re

    from dnlib.notebook import parameters
    path = parameters.NOTEBOOK_DIR / f"{stem}.ipynb"
    declared = parameters.declared_parameters(path)
    for name in NONE_MEANS[stem]:
        assert declared[name]["inferred_type_name"].startswith("Optional["), (stem, name)
        assert "None" in declared[name]["help"] \
            and not re.search(r"(^|; |\()(0|-1|\[\]|empty)\b", declared[name]["help"])
        assert parameters.resolve_parameters(path, "smoke", [(name, "None")])[name] is None
    full = parameters.resolve_parameters(path, "full")
    chosen = {("05_super_resolution", "steps")}    # 05's full profile trains 50,000 steps of the fast schedule
    assert all(full.get(n) is None for n in NONE_MEANS[stem] if (stem, n) not in chosen), full   # absent: the default
    code = "\n".join(parameters.cell_source(c) for c in parameters.read_notebook(path)["cells"]
                     if c["cell_type"] == "code")
    assert not re.search(r"\bor (None|\d+)\b", code), f"{stem}: a sentinel turned into the default in a cell"


def test_coerce_takes_none_only_where_declared():
    from dnlib.notebook.parameters import coerce
    assert coerce(None, "Optional[int]") is None and coerce("None", "Optional[int]", from_cli=True) is None
    assert coerce("7", "Optional[int]", from_cli=True) == 7 and coerce([1, 2], "Optional[list]") == [1, 2]
    with pytest.raises(TypeError, match="expects int"):
        coerce(None, "int")
    with pytest.raises(TypeError, match="expects int"):
        coerce("x", "Optional[int]", from_cli=True)


def test_the_library_takes_none_and_refuses_the_old_sentinels():
    """What the notebooks call takes None for "the default" and refuses the sentinels it used to bend to."""
    from dnlib.experiments import runner
    from dnlib.notebook import widgets
    base = str(ptb.config_table(["dn-star-lstm", "base-lstm"]))
    assert str(ptb.config_table(["dn-star-lstm", "base-lstm"], hidden_size=None, batch_size=None, decay_after=None,
                                lr=None)) == base
    for name, value in (("hidden_size", 0), ("batch_size", 0), ("decay_after", -1), ("lr", 0.0)):
        with pytest.raises(ValueError, match=name):
            ptb.config_table(["dn-star-lstm"], **{name: value})
    n = ptb.set_threads(None)
    assert n >= 1
    with pytest.raises(ValueError, match="threads"):
        ptb.set_threads(0)
    with pytest.raises(ValueError, match="steps"):        # 0 meant the configuration's schedule
        runner.run(cifar.RECIPE, "bn", steps=0, device="cpu")
    assert widgets.first_conv(None, 0).weight.shape == (32, 3, 5, 5)


def test_headline_means_a_runs_numbers_only():
    """``headline`` is a run's numbers (``Recipe.headline``, ``record["headline"]``); what a notebook saves is the
    experiment's ``summary`` (before: ``cifar.headline``, ``ptb_report.headline``, ``sr_report.headline``,
    ``analysis_report.headline`` meant that too)."""
    import importlib
    import inspect
    import pkgutil

    import dnlib.experiments
    from dnlib.notebook import parameters
    for info in pkgutil.iter_modules(dnlib.experiments.__path__):
        mod = importlib.import_module(f"dnlib.experiments.{info.name}")
        assert not inspect.isfunction(getattr(mod, "headline", None)), f"{info.name}.headline: a function"
    for name in ("cifar_report", "ptb_report", "sr_report", "analysis_report"):
        assert inspect.isfunction(importlib.import_module(f"dnlib.experiments.{name}").summary), name
    for path in sorted(parameters.NOTEBOOK_DIR.glob("0*.ipynb")):
        cells = parameters.read_notebook(path)["cells"]
        assert not any(".headline(" in parameters.cell_source(c) for c in cells if c["cell_type"] == "code"), path


def test_one_results_table_per_experiment_with_n_and_run_as(tmp_path):
    """Each experiment has one ``results_table`` (a Markdown table), and all three end with the same two columns,
    ``n`` (runs) and ``run as`` (what was run: steps of the paper's schedule, subset, batch), as the generic
    ``tables.table`` (before: CIFAR's and PTB's ended with ``runs`` and said not what was run; SR's returned dicts
    that ``format_table`` drew). Each lives in the experiment's ``<name>_report`` module beside its ``summary`` and
    ``report`` (before: CIFAR's three were in the recipe module ``cifar``, PTB's and SR's in ``ptb_report`` and
    ``sr_report``)."""
    import importlib

    from dnlib.experiments import cifar_report, ptb_report, sr_report
    from dnlib.experiments.records import find_runs
    for name in ("cifar", "ptb", "sr"):
        recipe, rep = (importlib.import_module(f"dnlib.experiments.{m}") for m in (name, f"{name}_report"))
        assert all(callable(getattr(rep, f, None)) for f in ("results_table", "summary", "report")), name
        assert not any(hasattr(recipe, f) for f in ("results_table", "summary", "report", "summarize")), name
    repo = Path(__file__).resolve().parent.parent / "results" / "records"
    for table in (cifar_report.results_table(find_runs([repo / "cifar"])),
                  ptb_report.results_table(find_runs([repo / "ptb"]))):
        head = str(table).splitlines()[0]
        assert head.rstrip(" |").endswith("| n | run as"), head
        assert "of the paper's" in str(table) or "(the paper's)" in str(table)
    assert not hasattr(sr_report, "format_table")
    _need("sr")
    run = sr.run("none", sr.get_config("smoke", channels=(4, 4), batch_size=4), steps=2, eval_sets=(), device="cpu",
                 progress=False)
    table = sr_report.results_table([run], sets=("Set5",), bicubic=False)
    assert str(table).splitlines()[0].rstrip(" |").endswith("| n | run as")
    assert table.rows[0]["n"] == 1 and table.rows[0]["run_as"].startswith("2 steps")
