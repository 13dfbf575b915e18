"""Penn Treebank, Mikolov's word-level split (PAPER.md §3.3), read as the TF ``ptb_reader`` does.

Each newline becomes ``<eos>``; the vocabulary (10,000 words) is built from the training file,
sorted by decreasing count then alphabetically; batches are contiguous streams so that the RNN
state can be carried from one batch to the next within an epoch.
"""

from __future__ import annotations

import collections
import hashlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .fetch import DatasetSource, find_or_fetch
from .root import DataWarning, check_known_sizes, check_regular_file, data_root, open_regular, verify_checksums

__all__ = ["PTB", "PTBBatches", "load_ptb", "ptb_batches", "ptb_epoch_size", "PTB_SOURCE", "PTB_SIZES",
           "PTB_FILE_DIGESTS"]

PTB_SOURCE = DatasetSource(
    name="Penn Treebank (Mikolov's simple-examples)",
    folders=("ptb", "simple-examples/data"),
    check=("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    url="http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz",
    md5="30177ea32e27c525793142b6bf2c8e2d",
    archive="simple-examples.tgz",
)
EOS = "<eos>"
#: Sizes of the standard PTB (Mikolov's split, each newline an ``<eos>``), checked on every load.
PTB_SIZES = {"train tokens": 929589, "valid tokens": 73760, "test tokens": 82430, "vocabulary": 10000}
_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")
#: ``{file: (md5, sha256)}`` of the canonical files (Mikolov's simple-examples ``data/``; the md5s are those that
#: torchtext and others pin for them). A load compares both digests of each file it reads with these: other files
#: still load (a custom corpus), but :attr:`PTB.canonical` is False, a :class:`~dnlib.data.root.DataWarning` names
#: them and the PTB recipe's run record says so.
PTB_FILE_DIGESTS = {
    "ptb.train.txt": ("f26c4b92c5fdc7b3f8c7cdcb991d8420",
                      "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
    "ptb.valid.txt": ("aa0affc06ff7c36e977d7cd49e3839bf",
                      "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
    "ptb.test.txt": ("8b80168b89c18661a38ef683c0dc3721",
                     "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
}


def _read_words(path: Path) -> tuple[list[str], tuple[str, str]]:
    """The words of PTB file ``path`` (each newline an ``<eos>``) and the ``(md5, sha256)`` of its bytes."""
    try:
        with open_regular(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")   # universal newlines, as text mode
        digests = (hashlib.md5(raw, usedforsecurity=False).hexdigest(), hashlib.sha256(raw).hexdigest())
        return text.replace("\n", f" {EOS} ").split(), digests
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read PTB file {path}: {e}") from e


@dataclass
class PTB:
    """Penn Treebank as id streams (int64 tensors) and the vocabulary.

    ``vocab[i]`` is the word with id ``i``; ``word_to_id`` is its inverse. ``oov`` counts the
    valid/test words absent from the training vocabulary (mapped to ``<unk>``; 0 for real PTB). ``canonical``:
    the three files are byte for byte the canonical ones (:data:`PTB_FILE_DIGESTS`).
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]
    word_to_id: dict[str, int]
    path: Path
    oov: dict[str, int]
    canonical: bool = False

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids) -> str:
        """Words of an id sequence, space-separated."""
        return " ".join(self.vocab[int(i)] for i in ids)


def load_ptb(root: str | os.PathLike | None = None, *, download: bool = True,
             progress: bool = True) -> PTB:
    """Load PTB: vocabulary from ``ptb.train.txt`` and int64 id streams for train/valid/test.

    Looks for ``ptb/`` or ``simple-examples/data/`` in the data root; else downloads Mikolov's
    ``simple-examples.tgz`` (md5-verified) when ``download`` is true. Real PTB gives
    929,589 / 73,760 / 82,430 tokens and 10,000 words.

    The three files are checked against the data root's ``SHA256SUMS`` when it lists them (once;
    the verdict is cached until a file changes), and a :class:`~dnlib.data.root.ChecksumError` names
    a file that differs. Token counts or a vocabulary that differ from :data:`PTB_SIZES`, or files of the standard
    sizes whose bytes are not the canonical ones (md5 or sha256 not :data:`PTB_FILE_DIGESTS`'s: e.g. a few words
    changed), raise a :class:`~dnlib.data.root.DataWarning` (a custom corpus loads, but is not the paper's PTB). A
    file that is not a regular file (a FIFO, a device, a folder; symlinks are resolved) raises
    :class:`~dnlib.data.root.NotRegularFileError` naming it, before anything is opened.
    """
    folder = find_or_fetch(PTB_SOURCE, root, download=download, progress=progress)
    for f in _FILES:
        check_regular_file(folder / f)  # a FIFO would block the hashing or the reading below
    verify_checksums(data_root(root), folder, [folder / f for f in _FILES], what="Penn Treebank",
                     accept=_FILES.__contains__)
    train_words, digests_train = _read_words(folder / "ptb.train.txt")
    digests = {"ptb.train.txt": digests_train}
    counter = collections.Counter(train_words)
    vocab = [w for w, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]
    word_to_id = {w: i for i, w in enumerate(vocab)}
    unk = word_to_id.get("<unk>")
    streams, oov = {}, {}
    for split, words in (("train", train_words), ("valid", None), ("test", None)):
        if words is None:
            words, digests[f"ptb.{split}.txt"] = _read_words(folder / f"ptb.{split}.txt")
        ids = list(map(word_to_id.get, words))   # one C-level pass (with the array: 0.155 -> 0.066 s for the 3 files)
        missing = ids.count(None)
        if missing and unk is None:
            raise ValueError(f"{folder / f'ptb.{split}.txt'} has {missing} words outside the training "
                             f"vocabulary and the vocabulary has no <unk>")
        if missing:
            ids = [unk if i is None else i for i in ids]
        oov[split] = missing
        streams[split] = torch.from_numpy(np.array(ids, dtype=np.int64))
    standard = check_known_sizes("Penn Treebank", folder, {**{f"{k} tokens": len(v) for k, v in streams.items()},
                                                           "vocabulary": len(vocab)}, PTB_SIZES)
    differ = [f for f in _FILES if digests[f] != PTB_FILE_DIGESTS[f]]
    if standard and differ:   # (other sizes were just warned about)
        got = "; ".join(f"md5 {digests[f][0]}, sha256 {digests[f][1]}" for f in differ)
        warnings.warn(f"Penn Treebank in {folder} has the standard sizes but is not the canonical files: "
                      f"{', '.join(differ)} differ ({got}; see "
                      f"dnlib.data.ptb.PTB_FILE_DIGESTS). Results on it are not comparable with the paper's; restore "
                      f"the original files (data/README.md) if this is unintended.", DataWarning, stacklevel=2)
    return PTB(train=streams["train"], valid=streams["valid"], test=streams["test"], vocab=vocab,
               word_to_id=word_to_id, path=folder, oov={k: v for k, v in oov.items() if k != "train"},
               canonical=not differ)


def ptb_epoch_size(num_tokens: int, batch_size: int = 20, num_steps: int = 20) -> int:
    """Batches per epoch, as TF's ``ptb_producer``: ``(num_tokens // batch_size - 1) // num_steps``."""
    return (num_tokens // batch_size - 1) // num_steps


class PTBBatches:
    """Contiguous batches of an id stream, as TF's ``ptb_producer``; ``len()`` is the number per epoch. The one
    PTB batch pipeline: training (:mod:`dnlib.experiments.ptb`) and evaluation both read it.

    The stream is truncated to ``batch_size * batch_len`` tokens and reshaped to
    ``[batch_size, batch_len]`` (row ``b`` is the ``b``-th contiguous slice); batch ``i`` (:meth:`batch`) is
    ``x = data[:, i*num_steps:(i+1)*num_steps]`` and ``y`` the same shifted by one token, so row
    ``b`` of batch ``i+1`` continues row ``b`` of batch ``i`` and the RNN state can be carried.

    Two ways to read it:

    * ``for x, y in batches``: one epoch in order (evaluation);
    * ``next(batches)``: the resumable training stream for :class:`dnlib.training.trainer.Trainer`: ``(x, y, reset)``
      forever, epoch after epoch, ``reset`` True on the first batch of an epoch (the state is zeroed there);
      :meth:`state_dict` / :meth:`load_state_dict` save and restore its position ``{"epoch", "pos"}``
      (``pos``: batches of the current epoch already given).
    """

    def __init__(self, ids, batch_size: int = 20, num_steps: int = 20, device=None) -> None:
        for pname, v in (("batch_size", batch_size), ("num_steps", num_steps)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{pname} must be a positive int, got {v!r}")
        ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
        batch_len = len(ids) // batch_size
        self.batch_size, self.num_steps = batch_size, num_steps
        self.epoch_size = (batch_len - 1) // num_steps
        if self.epoch_size < 1:
            raise ValueError(f"{len(ids)} tokens are too few for batch_size={batch_size} and "
                             f"num_steps={num_steps}: epoch size would be {self.epoch_size}")
        self.data = ids[: batch_size * batch_len].reshape(batch_size, batch_len).to(device)
        self.epoch, self.pos = 0, 0

    def __len__(self) -> int:
        return self.epoch_size

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of an epoch: ``(x, y)``, each ``(batch_size, num_steps)``."""
        n = self.num_steps
        return self.data[:, i * n:(i + 1) * n], self.data[:, i * n + 1:(i + 1) * n + 1]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(self.epoch_size):
            yield self.batch(i)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if self.pos >= self.epoch_size:
            self.epoch, self.pos = self.epoch + 1, 0
        i = self.pos
        self.pos += 1
        return (*self.batch(i), i == 0)

    @property
    def steps_done(self) -> int:
        """Training batches given so far (``epoch * len + pos``)."""
        return self.epoch * self.epoch_size + self.pos

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if not 0 <= state["pos"] <= self.epoch_size:
            raise ValueError(f"state: pos must be in [0, {self.epoch_size}], got {state['pos']}")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def ptb_batches(ids, batch_size: int = 20, num_steps: int = 20, device=None) -> PTBBatches:
    """Contiguous ``(x, y)`` int64 batches of shape ``(batch_size, num_steps)``: one epoch in order when
    iterated, the resumable training stream with ``next()`` (:class:`PTBBatches`). Matches TF's ``ptb_producer``;
    ``len()`` gives the batches per epoch.
    """
    return PTBBatches(ids, batch_size, num_steps, device)
