"""Datasets of the paper: CIFAR-10/100 (§3.1), Penn Treebank (§3.3) and super-resolution sets (§3.4).

Every loader reads from one data root (``root=``, else ``$DNLIB_DATA``, else ``../shared/data`` beside
the clone, else ``data/`` in the clone: :func:`data_root`; see ``data/README.md``) and checks what it
reads against the root's ``SHA256SUMS`` once (:func:`verify_checksums`); it opens only regular files
(a FIFO or device in the root raises :class:`NotRegularFileError`), and unpickles the official CIFAR pickles
only after checking their published digests, with a restricted unpickler. Nothing is read or downloaded
at import time.

Entry points: :func:`load_cifar`, :func:`load_ptb`, :func:`load_sr`.
"""

from .cifar import CIFAR, load_cifar, mean_image, stratified_subset, validation_split
from .fetch import download_url, extract_archive
from .loader import GPULoader
from .ptb import PTB, PTBBatches, load_ptb, ptb_batches, ptb_epoch_size
from .root import (
    ChecksumError,
    DatasetNotFoundError,
    DataWarning,
    DownloadError,
    NotRegularFileError,
    SourceUnreachableError,
    cache_dir,
    data_root,
    verify_checksums,
)
from .sr import SRCNNPatches, SRSet, imresize, load_sr, luma, modcrop, rgb2ycbcr_y, sr_test_pair

__all__ = [
    "load_cifar", "load_ptb", "load_sr",
    "CIFAR", "PTB", "SRSet",
    "GPULoader", "PTBBatches", "SRCNNPatches",
    "validation_split", "stratified_subset", "mean_image",
    "ptb_batches", "ptb_epoch_size",
    "rgb2ycbcr_y", "luma", "modcrop", "imresize", "sr_test_pair",
    "data_root", "cache_dir", "download_url", "extract_archive",
    "verify_checksums",
    "DatasetNotFoundError", "DownloadError", "SourceUnreachableError", "ChecksumError", "DataWarning",
    "NotRegularFileError",
]
