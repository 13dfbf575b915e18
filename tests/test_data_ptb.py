"""Penn Treebank: the real mirror's counts, the TF ptb_reader vocabulary and batching, the download path."""

import dataclasses
import hashlib
import io
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from dnlib.data import DatasetNotFoundError, DataWarning, data_root, load_ptb, ptb_batches, ptb_epoch_size
from dnlib.data import ptb as P

MIRROR = data_root()
needs_ptb = pytest.mark.skipif(not (MIRROR / "ptb" / "ptb.train.txt").is_file(),
                               reason=f"PTB not in DNLIB_DATA={MIRROR}")

TOY = {"train": " b a c \n a b \n a \n", "valid": " c a \n", "test": " b \n zz \n"}


def _write_toy(folder: Path, texts=TOY):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (folder / f"ptb.{split}.txt").write_text(text)


def test_vocab_and_streams_like_tf_reader(tmp_path):
    _write_toy(tmp_path / "ptb", {**TOY, "test": " b \n <unk> \n"})
    (tmp_path / "ptb" / "ptb.train.txt").write_text(TOY["train"] + " <unk> \n")
    d = load_ptb(tmp_path, download=False)
    # sorted by decreasing count, ties alphabetically; each newline is <eos>
    assert d.vocab == ["<eos>", "a", "b", "<unk>", "c"]
    assert d.decode(d.train) == "b a c <eos> a b <eos> a <eos> <unk> <eos>"
    assert d.train.dtype == torch.int64 and d.oov == {"valid": 0, "test": 0}


def test_oov_without_unk_is_an_error(tmp_path):
    _write_toy(tmp_path / "ptb")
    with pytest.raises(ValueError, match="ptb.test.txt"):
        load_ptb(tmp_path, download=False)


def test_batches_match_tf_ptb_producer():
    ids = torch.arange(103)
    b = ptb_batches(ids, batch_size=4, num_steps=5)
    batch_len = 103 // 4  # 25
    assert len(b) == (batch_len - 1) // 5 == ptb_epoch_size(103, 4, 5) == 4
    data = ids[: 4 * batch_len].reshape(4, batch_len)
    got = list(b)
    assert len(got) == 4
    for i, (x, y) in enumerate(got):
        assert torch.equal(x, data[:, i * 5:(i + 1) * 5]) and torch.equal(y, data[:, i * 5 + 1:(i + 1) * 5 + 1])
    # rows are contiguous streams: batch i+1 continues batch i
    assert torch.equal(got[1][0][:, 0], got[0][0][:, -1] + 1)
    with pytest.raises(ValueError, match="num_steps"):
        ptb_batches(ids, 4, 0)
    with pytest.raises(ValueError, match="too few"):
        ptb_batches(torch.arange(10), 4, 5)


def test_download_from_official_layout_archive(tmp_path, monkeypatch):
    archive = tmp_path / "simple-examples.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for split, text in TOY.items():
            data = text.replace("zz", "a").encode()
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.{split}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(P, "PTB_SOURCE", dataclasses.replace(P.PTB_SOURCE, url=archive.as_uri(), md5=md5))
    d = load_ptb(tmp_path / "root", progress=False)
    assert d.path == tmp_path / "root" / "simple-examples" / "data" and len(d.train) == 9


def test_missing_ptb_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_ptb(tmp_path, download=False)
    msg = str(e.value)
    for part in ("Penn Treebank", str(tmp_path / "ptb"), str(tmp_path / "simple-examples" / "data"),
                 "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz", "DNLIB_DATA"):
        assert part in msg


@needs_ptb
def test_real_ptb_counts():
    d = load_ptb(MIRROR, download=False)
    assert (len(d.train), len(d.valid), len(d.test)) == (929589, 73760, 82430)
    assert d.vocab_size == 10000 and d.oov == {"valid": 0, "test": 0}
    assert "<eos>" in d.word_to_id and "<unk>" in d.word_to_id
    assert len(ptb_batches(d.train, 20, 20)) == (929589 // 20 - 1) // 20 == 2323
    x, y = next(iter(ptb_batches(d.train, 20, 20)))
    assert x.shape == y.shape == (20, 20)


# ------------------------------------------------------- checksums and known counts (issue 11, part 4)
def _real_copy(root: Path, sums: bool = True) -> Path:
    import shutil
    (root / "ptb").mkdir(parents=True)
    rels = [f"ptb/ptb.{s}.txt" for s in ("train", "valid", "test")]
    for rel in rels:
        shutil.copy(MIRROR / rel, root / rel)
    if sums:
        lines = [ln for ln in (MIRROR / "SHA256SUMS").read_text().splitlines() if ln[66:] in rels]
        assert len(lines) == 3
        (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return root / "ptb"


def _change_one_byte(path: Path):
    b = bytearray(path.read_bytes())
    i = b.index(b" the ") + 1
    b[i] = ord("T")  # "the" -> "The": one more word in the vocabulary
    path.write_bytes(bytes(b))


def _truncate_half(path: Path):
    b = path.read_bytes()
    path.write_bytes(b[: len(b) // 2])


@needs_ptb
@pytest.mark.parametrize("split, damage", [("train", _change_one_byte), ("valid", _truncate_half)])
def test_ptb_checked_against_sha256sums(tmp_path, monkeypatch, split, damage):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _real_copy(tmp_path / "root")
    d = load_ptb(tmp_path / "root", download=False)
    assert (len(d.train), len(d.valid), len(d.test), d.vocab_size) == (929589, 73760, 82430, 10000)
    damage(folder / f"ptb.{split}.txt")
    with pytest.raises(ValueError, match="SHA256SUMS") as e:
        load_ptb(tmp_path / "root", download=False)
    assert str(folder / f"ptb.{split}.txt") in str(e.value)


@needs_ptb
def test_ptb_verdict_cached_until_a_file_changes(tmp_path, monkeypatch):
    from dnlib.data import root as R
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _real_copy(tmp_path / "root")
    load_ptb(tmp_path / "root", download=False)
    hash_file = R.hash_file
    with monkeypatch.context() as m:
        m.setattr(R, "hash_file", lambda *a: pytest.fail("hashed again although nothing changed"))
        load_ptb(tmp_path / "root", download=False)
    assert R.hash_file is hash_file
    b = bytearray((folder / "ptb.test.txt").read_bytes())  # same size, one byte changed
    b[-3] = ord("x") if b[-3] != ord("x") else ord("y")
    (folder / "ptb.test.txt").write_bytes(bytes(b))
    with pytest.raises(ValueError, match="ptb.test.txt"):
        load_ptb(tmp_path / "root", download=False)


@needs_ptb
@pytest.mark.parametrize("split, damage, message", [("train", _change_one_byte, "vocabulary 10,001"),
                                                     ("valid", _truncate_half, "valid tokens 37,")])
def test_ptb_without_checksums_warns_on_known_counts(tmp_path, monkeypatch, split, damage, message):
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _real_copy(tmp_path / "root", sums=False)
    damage(folder / f"ptb.{split}.txt")
    with pytest.warns(DataWarning, match=message):
        load_ptb(tmp_path / "root", download=False)


def _swap_words(path: Path):
    """Three words changed for words of the vocabulary: same token counts, same vocabulary, other text."""
    b = path.read_bytes()
    path.write_bytes(b.replace(b" the ", b" a ", 3))


@needs_ptb
def test_ptb_of_standard_sizes_but_other_words_is_not_canonical(tmp_path, monkeypatch):
    """Without SHA256SUMS, files of the standard sizes but other text loaded silently; they load (a custom corpus),
    but warn, and PTB.canonical says so (the PTB recipe records it)."""
    monkeypatch.setenv("DNLIB_CACHE", str(tmp_path / "cache"))
    folder = _real_copy(tmp_path / "root", sums=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert load_ptb(tmp_path / "root", download=False).canonical
    _swap_words(folder / "ptb.test.txt")
    with pytest.warns(DataWarning, match=r"not the canonical files: ptb.test.txt differ"):
        d = load_ptb(tmp_path / "root", download=False)
    assert (len(d.train), len(d.valid), len(d.test), d.vocab_size) == (929589, 73760, 82430, 10000)
    assert not d.canonical


def test_ptb_file_digests_are_the_canonical_md5s():
    """The md5s torchtext (and others) pin for Mikolov's files; the sha256s are the mirror's (data/README.md: md5
    equal to the canonical files)."""
    from dnlib.data.ptb import PTB_FILE_DIGESTS
    assert {f: md5 for f, (md5, _) in PTB_FILE_DIGESTS.items()} == {
        "ptb.train.txt": "f26c4b92c5fdc7b3f8c7cdcb991d8420", "ptb.valid.txt": "aa0affc06ff7c36e977d7cd49e3839bf",
        "ptb.test.txt": "8b80168b89c18661a38ef683c0dc3721"}
    if (MIRROR / "ptb").is_dir():
        for f, (md5, sha) in PTB_FILE_DIGESTS.items():
            raw = (MIRROR / "ptb" / f).read_bytes()
            assert hashlib.md5(raw).hexdigest() == md5 and hashlib.sha256(raw).hexdigest() == sha
