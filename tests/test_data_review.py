"""Small items of the data-layer review: what a PTB run records as its data (a subset only when it is one)."""
import os

import pytest
import torch

ptb_dir = os.path.join(os.environ.get("DNLIB_DATA", "data"), "ptb")
needs_ptb = pytest.mark.skipif(not os.path.exists(os.path.join(ptb_dir, "ptb.train.txt")), reason="PTB not found")


def _data_label(data, **kw):
    from dnlib.experiments.ptb import RECIPE
    cfg = RECIPE.config("base-lstm", hidden_size=4, batch_size=2, num_steps=5)
    return RECIPE.build(cfg, data, 0, "cpu", mode="eager", final_test_batch_size=None, **kw).info["data"]


def test_ptb_run_is_labelled_a_subset_only_when_it_is_one():
    """vocab=10000 (the full vocabulary, all tokens) was recorded as "(smoke subset)" (the label asked only whether
    max_tokens or vocab was given)."""
    from dnlib.data.ptb import PTB_SIZES
    from dnlib.experiments.ptb import PTBSplits
    ids = torch.arange(400) % 50
    data = (PTBSplits({"train": ids, "valid": ids, "test": ids}, canonical=True), 50)
    full = PTB_SIZES["vocabulary"]
    assert "subset" not in _data_label(data)
    assert "subset" not in _data_label(data, vocab=full)
    assert "(smoke subset)" in _data_label(data, vocab=full - 1)
    assert "(smoke subset)" in _data_label(data, max_tokens=400)
    assert "(smoke subset)" in _data_label(data, max_tokens=400, vocab=full)


@needs_ptb
def test_full_vocabulary_of_real_ptb_is_not_a_subset():
    from dnlib.experiments.ptb import load_data
    data = load_data(vocab=10000)
    assert data[1] == 10000 and len(data[0]["train"]) == 929_589
    label = _data_label(data, vocab=10000)
    assert label == "PTB (Mikolov), 929,589 training tokens, 10,000 words", label


@needs_ptb
def test_ptb_load_compares_the_pinned_md5s_too(monkeypatch):
    """PTB_FILE_DIGESTS pins (md5, sha256) per file; a load compared only the sha256, so a file whose md5 is not the
    pinned one still counted as canonical."""
    import warnings

    import dnlib.data.ptb as P
    from dnlib.data import DataWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert P.load_ptb(download=False, progress=False).canonical
    md5, sha = P.PTB_FILE_DIGESTS["ptb.valid.txt"]
    monkeypatch.setitem(P.PTB_FILE_DIGESTS, "ptb.valid.txt", ("0" * 32, sha))
    with pytest.warns(DataWarning, match=rf"not the canonical files: ptb.valid.txt differ \(md5 {md5}"):
        assert not P.load_ptb(download=False, progress=False).canonical
