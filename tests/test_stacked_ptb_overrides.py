"""Resuming a stacked PTB group (dnlib.experiments.stacked_ptb) with other overrides than it was started with is refused
naming each field that differs, the group's value (stored in its run.json) and the one given, and what is allowed;
not with the internal build option ``overridden``. The same overrides (or the folder alone) resume it."""
import pytest

from dnlib.experiments import stacked_ptb
from dnlib.experiments.commands import main
from dnlib.experiments.ptb import RECIPE

TINY = {"hidden_size": 8, "batch_size": 4, "num_steps": 5, "epochs": 2, "decay_after": 1, "clip_norm": 0.5}
CONFIGS = ["base-lstm", "dn-star-lstm"]
KW = dict(steps=4, device="cpu", options={"max_tokens": 200, "vocab": 40}, progress=False)
ALLOWED = ("A stacked group resumes only with the overrides it was started with (every copy trained with them): give "
           "the same ones, or resume it by its folder alone (--resume DIR without configurations, which applies "
           "them), or start a new group in another folder (--out, out=)")


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    """A group of two configurations started with the overrides TINY and lr=0.5 (prepared: its run.json written)."""
    run = stacked_ptb.prepare(RECIPE, CONFIGS, [0], out=tmp_path_factory.mktemp("stack"),
                              overrides={**TINY, "lr": 0.5}, **KW)
    return run.run_dir


def _refusal(group, diffs: str) -> str:
    return f"overrides: the stacked group in {group} was started with other overrides than this resume gives: {diffs}. "


@pytest.mark.parametrize("configs,overrides,diffs", [
    (None, {"sigma": 0.3},                                    # the folder alone, a field the group left alone
     "sigma: the group has no sigma override (each configuration's own sigma: base-lstm None, dn-star-lstm 1.0), "
     "this resume gives sigma=0.3"),
    (CONFIGS, TINY,                                           # configurations named, the group's lr left out
     "lr: the group has lr=0.5 (every copy's), this resume gives none (each configuration's own lr: base-lstm 0.1, "
     "dn-star-lstm 1.0)"),
    (CONFIGS, {**TINY, "lr": 0.3, "hidden_size": 16, "sigma": 2.0},   # several: each named, in order
     "hidden_size: the group has hidden_size=8 (every copy's), this resume gives hidden_size=16; lr: the group has "
     "lr=0.5 (every copy's), this resume gives lr=0.3; sigma: the group has no sigma override (each configuration's "
     "own sigma: base-lstm None, dn-star-lstm 1.0), this resume gives sigma=2.0"),
])
def test_a_resume_with_other_overrides_names_each_field_both_values_and_what_is_allowed(group, configs, overrides,
                                                                                       diffs):
    with pytest.raises(ValueError) as refused:
        stacked_ptb.prepare(RECIPE, configs, [0] if configs else None, resume=group, overrides=overrides, **KW)
    message = str(refused.value)
    assert message == _refusal(group, diffs) + ALLOWED
    assert "overridden" not in message


@pytest.mark.parametrize("configs,overrides", [(None, None), (None, {"lr": 0.5}), (CONFIGS, {**TINY, "lr": 0.5})])
def test_the_same_overrides_or_the_folder_alone_resume_the_group(group, configs, overrides):
    again = stacked_ptb.prepare(RECIPE, configs, [0] if configs else None, resume=group, overrides=overrides, **KW)
    assert [c.lr for c in again.copy_cfgs] == [0.5, 0.5] and [c.hidden_size for c in again.copy_cfgs] == [8, 8]


def test_the_stack_verb_says_it_in_one_line_and_exits_2(group, capsys):
    with pytest.raises(SystemExit) as e:
        main(RECIPE, ["stack", "--resume", str(group), "--lr", "0.3", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert err.endswith(_refusal(group, "lr: the group has lr=0.5 (every copy's), this resume gives lr=0.3") + ALLOWED)
