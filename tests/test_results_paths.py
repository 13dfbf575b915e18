"""The results and report paths say what they show: dnlib's own PTB runs are drawn by epoch (and a run
``curve_bands`` cannot place is named, not dropped unseen); the paper's tables take only the runs that measured
what the paper reports; the authors'-code rows get no paper number; the records README's snippet runs."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from dnlib.experiments import aggregate
from dnlib.experiments import records as R

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _ptb_runs(out: Path, seeds=(0, 1)) -> list[Path]:
    """Runs made by dnlib's PTB recipe (2 epochs of 4 minibatches on random streams): curves.csv logs
    ``step,lr,time,train_loss,valid_ppl,test_ppl``, no ``epoch``."""
    from dnlib.experiments.ptb import run
    g = torch.Generator().manual_seed(0)
    data = ({k: torch.randint(0, 50, (n,), generator=g) for k, n in (("train", 1700), ("valid", 500),
                                                                      ("test", 500))}, 50)
    return [run("base-lstm", data=data, epochs=2, hidden_size=8, device="cpu", final_test_batch_size=None, seed=s,
                out=out, threads=1, progress=False).run_dir for s in seeds]


def test_dnlibs_own_ptb_runs_are_drawn_by_epoch_and_a_run_without_one_is_named(tmp_path):
    """results_figures.py's ptb_curves.png and notebook 06 ask for x="epoch": only converted records log it, so
    every PTB run dnlib made was dropped without a word and the figure said "no runs"."""
    runs = _ptb_runs(tmp_path / "ptb")
    assert "epoch" not in R.read_curves(runs[0])[0]
    per_epoch = R.read_record(runs[0])["config"]["setup"]["batches_per_epoch"]
    bands = aggregate.curve_bands(tmp_path / "ptb", "valid_ppl", x="epoch")
    assert list(bands) == ["base-lstm"] and bands["base-lstm"]["n"] == 2
    assert list(bands["base-lstm"]["x"]) == [1.0, 2.0] and list(bands["base-lstm"]["count"]) == [2, 2]
    by_step = aggregate.curve_bands(tmp_path / "ptb", "valid_ppl")["base-lstm"]      # the same points
    assert list(by_step["x"]) == [per_epoch, 2 * per_epoch]
    assert list(by_step["mean"]) == list(bands["base-lstm"]["mean"])
    # a run that logs neither the column nor what derives it (no batches_per_epoch) is named, and not counted
    old = tmp_path / "ptb" / "old-s2"
    shutil.copytree(runs[0], old)
    rec = json.loads((old / R.RECORD_FILE).read_text())
    del rec["config"]["setup"]["batches_per_epoch"]
    rec["name"] = "old-lstm"
    (old / R.RECORD_FILE).write_text(json.dumps(rec))
    with pytest.warns(aggregate.CurveWarning, match=r"old-s2.*logs valid_ppl but no 'epoch'.*batches_per_epoch"):
        bands = aggregate.curve_bands(tmp_path / "ptb", "valid_ppl", x="epoch")
    assert list(bands) == ["base-lstm"] and bands["base-lstm"]["n"] == 2


def test_ptb_curves_figure_draws_dnlibs_own_runs(tmp_path):
    import importlib.util

    import matplotlib.pyplot as plt
    _ptb_runs(tmp_path / "ptb")
    spec = importlib.util.spec_from_file_location("_results_figures", ROOT / "scripts" / "results_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    made = mod._figures(str(tmp_path / "ptb"))
    fig = made["ptb_curves.png"]
    for ax in fig.axes:
        assert [t.get_text() for t in ax.texts] == [] and len(ax.get_lines()) == 1, ax.get_title()
        assert ax.get_legend().get_texts()[0].get_text().endswith("(n=2)")
    for f in made.values():
        plt.close(f)


def _cifar(base: Path, name: str, seed: int, acc: float, *, eval_split: str | None = "test",
           dataset: str | None = "cifar10") -> Path:
    """A CIFAR run folder as the recipe writes it (``--validation``: ``eval_split`` "val", 45K/5K); ``eval_split``
    None: a record without it (the converted H100 runs), ``dataset`` None: one without ``config.dataset``."""
    from dnlib.experiments import cifar_configs as C
    cfg = C.get_config(name, dataset or "cifar10").as_dict()
    n_train, n_eval = (45000, 5000) if eval_split == "val" else (50000, 10000)
    cfg["setup"] = {"data": "CIFAR-10 (JPEG copy)", "eval_split": eval_split, "subset": None, "train_images": n_train,
                    "eval_images": n_eval, "eval_every": 500, "mode": "eager", "card": "cpu"}
    if eval_split is None:
        del cfg["setup"]["eval_split"]
    if dataset is None:
        del cfg["dataset"]
    d = base / f"{name}-{dataset}-{eval_split}-s{seed}"
    d.mkdir(parents=True)
    R.write_record(d, R.make_record("cifar", cfg, seed, started=1.8e9, ended=1.8e9 + 5, stopped="completed",
                                    steps_planned=cfg["steps"], steps_done=cfg["steps"],
                                    headline={"final_acc": acc}, paper={"final_acc": C.TABLE7[name][0]},
                                    prov={"git": None, "versions": {}, "device": {"name": "cpu"}, "host": None}))
    return d


def _row(table: str, label: str) -> list[str]:
    return [x for x in str(table).splitlines() if x.startswith(f"| {label} ")]


def test_table7_takes_test_set_runs_only_and_names_the_validation_fold_runs(tmp_path):
    """Runs evaluated on the 45K/5K validation fold (--validation) filled "Table 7: CIFAR-10 test accuracy"
    unmarked: PAPER.md §2.3 reports the final test accuracy."""
    from dnlib.experiments import tables
    for s in (0, 1):
        _cifar(tmp_path, "bn-star", s, 0.84 + s / 100, eval_split="val")
    t = str(tables.compare(tmp_path, "table7"))
    assert _row(t, "BN*") == ["| BN* | not run | 0.8179 | 0 | — |"], t
    takes = "- not shown (this table takes dataset cifar10, eval_split test): "
    assert takes + "bn-star (eval_split val; 2 runs)" in t.splitlines(), t
    _cifar(tmp_path, "bn-star", 0, 0.81)
    t = str(tables.compare(tmp_path, "table7"))
    assert len(_row(t, "BN*")) == 1 and _row(t, "BN*")[0].startswith("| BN* | 0.8100 | 0.8179 | 1 | 80,000 steps"), t
    assert "bn-star (eval_split val; 2 runs)" in t
    fig = tables.compare_figure(tmp_path, "table3")               # the figure: the same runs (Table 3 is Table 7's)
    import matplotlib.pyplot as plt
    assert "0.81" in [x.get_text() for x in fig.axes[0].texts]
    captions = [x.get_text().replace("\n", " ") for x in fig.texts]  # before: the figure left the val runs unsaid
    assert captions == [takes[2:] + "bn-star (eval_split val; 2 runs)"], captions
    plt.close(fig)
    # records from before setup.eval_split (the converted H100 runs) evaluated on the test set: they count
    _cifar(tmp_path, "dn-star", 0, 0.80, eval_split=None)
    t = str(tables.compare(tmp_path, "table7"))
    assert _row(t, "DN*")[0].startswith("| DN* | 0.8000 | 0.8122 | 1 |"), t
    committed = str(tables.compare(ROOT / "results" / "records", "table7"))
    assert [_row(committed, x)[0].split(" | ")[1] for x in ("Baseline", "BN", "BN*", "DN*")] == \
        ["0.7464", "0.7621", "0.7941", "0.7792"] and "not shown" not in committed


def test_table7_counts_a_cifar_record_without_config_dataset_as_cifar10_as_cifar_report_does(tmp_path):
    """cifar_report counts a record without ``config.dataset`` (from before the field) as CIFAR-10; compare's
    Table 7 showed it "not run". Another data set is named under the table."""
    from dnlib.experiments import cifar_report, tables
    _cifar(tmp_path, "bn-star", 0, 0.81, dataset=None)
    t = str(tables.compare(tmp_path, "table7"))
    assert _row(t, "BN*")[0].startswith("| BN* | 0.8100 | 0.8179 | 1 |") and "not shown" not in t, t
    assert "| **BN*** | 0.8100 |" in str(cifar_report.results_table(tmp_path))
    _cifar(tmp_path, "bn-star", 0, 0.51, dataset="cifar100")
    t = str(tables.compare(tmp_path, "table7"))
    assert _row(t, "BN*")[0].startswith("| BN* | 0.8100 | 0.8179 | 1 |"), t
    takes = "- not shown (this table takes dataset cifar10, eval_split test): "
    assert takes + "bn-star (dataset cifar100; 1 run)" in t.splitlines(), t


def test_sr_report_gives_the_authors_code_row_no_paper_number(tmp_path):
    """``sr report`` looked the paper's numbers up by the row label cut at " (": "DN* (code)" (the authors' code's
    variant) got DN*'s Table 5 numbers; Table 5 (compare) and the run's own record give it none."""
    from dnlib.data import data_root
    from dnlib.experiments import sr_report, tables
    from dnlib.experiments.sr import RECIPE
    if not (data_root() / "sr" / "Set14").is_dir() and not (data_root() / "Set14").is_dir():
        pytest.skip("Set14 is not under the data root")
    for name, label in (("fast-dn*", "DN*"), ("fast-dn*-code", "DN* (code)")):
        cfg = RECIPE.config(name)
        d = {**RECIPE.config_dict(cfg), "setup": {"data": "T91 x3", "label": label, "card": "cpu", "sets": ["Set14"],
                                                   "curve_sets": [], "missing_sets": [], "root": None,
                                                   "eval_every": 2500}}
        rec = R.make_record("sr", d, 0, steps_planned=cfg.steps, steps_done=cfg.steps, stopped="completed",
                            headline={"set14_psnr": 28.7, "set14_ssim": 0.80}, paper=RECIPE.paper(cfg),
                            prov={"git": None, "versions": {"torch": "x"}, "device": {"name": "cpu"}, "host": None})
        (tmp_path / name).mkdir()
        R.write_record(tmp_path / name, rec)
    assert R.read_record(tmp_path / "fast-dn*-code")["paper"]["set14_psnr"] is None
    rows = sr_report.report(tmp_path, sets=("Set14",))["table"]["Set14"]
    assert (rows["DN*"]["paper_psnr"], rows["DN*"]["paper_ssim"]) == (29.34, 0.8219)
    assert rows["DN* (code)"].get("paper_psnr") is None and rows["DN* (code)"].get("paper_ssim") is None
    assert rows["Bicubic"]["paper_psnr"] == 27.54
    code = [x for x in str(tables.compare(tmp_path, "table5")).splitlines() if "authors' code" in x]
    assert len(code) == 1 and code[0].split(" | ")[2] == "—", code


def test_the_records_readmes_python_commands_run(monkeypatch, capsys):
    """results/records/README.md showed ``from dnlib import aggregate; aggregate.compare(...)``: an ImportError
    (``compare`` is ``dnlib.experiments.tables.compare``). Each of its ``python -c`` and ``python -m dnlib``
    commands runs here, in the repository, as the README shows it."""
    import re
    import shlex

    from dnlib.__main__ import main
    readme = ROOT / "results" / "records" / "README.md"
    lines = [x.split("#")[0].strip() for x in re.findall(r"^ {4}(\S.*)$", readme.read_text(), re.M)]
    commands = [shlex.split(x) for x in lines if re.match(r"(\.venv/bin/)?python -[cm]", x)]
    assert any(c[1] == "-c" for c in commands) and any(c[1:3] == ["-m", "dnlib"] for c in commands), lines
    monkeypatch.chdir(ROOT)
    for c in commands:
        assert re.match(r"\.venv/bin/python$", c[0]), f"{readme}: {shlex.join(c)} does not say it runs in the venv"
        if c[1] == "-c":
            exec(compile(c[2], f"{readme.name}: {c[2]}", "exec"), {})
        elif c[1:3] == ["-m", "dnlib"]:
            assert main(c[3:]) == 0, shlex.join(c)
        out = capsys.readouterr().out
        assert "| model |" in out or "| name |" in out, (shlex.join(c), out[:500])
