"""Reading a :class:`~dnlib.training.trainer.Trainer` checkpoint safely: ``torch.load(weights_only=True)`` on the
CPU, and a :class:`CheckpointError` that says what the file is when it cannot be resumed (empty, no torch checkpoint
at all, a pickle of objects other than tensors and plain values, or lacking a checkpoint's keys).

Layer: training (the trainer writes checkpoints with :func:`dnlib.io.atomic_save`; this module reads them).
"""
from __future__ import annotations

import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "CHECKPOINT_KEYS", "load_checkpoint", "first_line"]

#: What every checkpoint the trainer writes holds.
CHECKPOINT_KEYS = ("step", "model", "optimizer", "history", "elapsed", "config", "batches", "rng", "identity")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: unreadable, not a dnlib checkpoint, or written by another run."""


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (its type's name when it has none), at most 240 characters."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 240 else line[:237] + "..."


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` holds one whole pickle (decoded by :func:`pickletools.genops`, which runs nothing)."""
    try:
        return any(op.name == "STOP" for op, _, _ in pickletools.genops(path.read_bytes()))
    except Exception:  # noqa: BLE001  an unknown opcode, a truncated argument, ...: no pickle
        return False


def load_checkpoint(path) -> dict:
    """Read a :class:`Trainer` checkpoint safely (``torch.load(weights_only=True)``, on the CPU).

    Raises :class:`CheckpointError` naming ``path`` when the file is empty, is no torch checkpoint at all
    (unreadable: garbage, a truncated copy, another format), holds objects other than tensors and plain values (a
    crafted pickle is refused before any of it runs), or lacks a checkpoint's keys."""
    path = Path(path)
    what_to_do = "delete it to start fresh, or use another output folder"
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes; an interrupted copy?); {what_to_do}")
    try:
        with warnings.catch_warnings():  # torch's note on a pickle that torch.save did not write (a crafted one)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # noqa: BLE001  torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        # torch's weights-only error reads the same for bytes that are no pickle at all and for a pickle of objects
        # it refuses: what the file is tells them apart (parsed, never run: pickletools only decodes the opcodes)
        archive, bare = zipfile.is_zipfile(path), False
        if not archive:
            bare = _is_pickle(path)
        if not archive and not bare:
            raise CheckpointError(f"checkpoint {path} is not a torch checkpoint (unreadable: neither the archive that "
                                  f"torch.save writes nor a pickle; garbage, a truncated copy or another format); "
                                  f"{what_to_do}") from e
        refused = isinstance(e, pickle.UnpicklingError) and any(w in str(e).lower() for w in ("weights only",
                                                                                            "weights_only"))
        if refused and archive:
            raise CheckpointError(
                f"checkpoint {path} refused: it holds objects that are not tensors or plain Python values, so it "
                f"was not written by this dnlib (a crafted file, or one from before checkpoints were weights-only) "
                f"and was not loaded; {what_to_do}") from e
        if refused:
            raise CheckpointError(f"checkpoint {path} refused: it is a bare pickle, not the archive that torch.save "
                                  f"writes, so it was not written by this dnlib (a crafted file?) and was not loaded; "
                                  f"{what_to_do}") from e
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {first_line(e)}): it is "
                              f"damaged or not a checkpoint; {what_to_do}") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not a dnlib checkpoint (no {', '.join(missing)}); {what_to_do}")
    return state
