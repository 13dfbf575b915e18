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
