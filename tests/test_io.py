"""dnlib.io: every atomic writer takes the path first (issue 24 item 5: ``atomic_write_json(obj, path)`` and
``atomic_save(obj, path)`` beside ``atomic_write_text(path, text)`` and ``atomic_save_npy(path, a)``); the old order
is a TypeError that names it, before anything is written."""
import inspect
import json

import numpy as np
import pytest
import torch

from dnlib import io

WRITERS = {"atomic_write": lambda f: f.write(b"x"), "atomic_write_text": "text", "atomic_write_json": {"a": 1},
           "atomic_save": {"w": torch.ones(2)}, "atomic_save_npy": np.arange(3)}


def test_every_writer_takes_the_path_first():
    assert set(WRITERS) == set(io.__all__)
    for name in io.__all__:
        assert list(inspect.signature(getattr(io, name)).parameters)[0] == "path", name


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_path_first_writes_and_the_old_order_is_refused(name, tmp_path):
    fn, what = getattr(io, name), WRITERS[name]
    assert fn(tmp_path / "f", what) == tmp_path / "f" and (tmp_path / "f").stat().st_size > 0
    if name == "atomic_write_json":
        assert json.loads((tmp_path / "f").read_text()) == {"a": 1}
    if name in ("atomic_write", "atomic_write_text"):
        return                 # path-first before too (a str text cannot be told from a path: nothing to refuse)
    with pytest.raises(TypeError, match=rf"{name}\(path, \.\.\.\): the path comes first"):
        fn(what, tmp_path / "g")
    assert not (tmp_path / "g").exists() and [p.name for p in tmp_path.iterdir()] == ["f"]
