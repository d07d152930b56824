"""Safe reading and atomic writing of the AttnGAN metadata pickles (reference §2.4).

    keys = load_filenames("data/birds/train/filenames.pickle")    # ['002.Laysan_.../...', ...]
    train, test, ixtoword, wordtoix = load_captions("data/birds/captions.pickle")

The released files are Python-2 pickles (protocol 2, byte strings), read here with
encoding='latin1'; byte strings that arrive as `bytes` are decoded too. Loading goes through
a restricted unpickler: plain containers, strings and numbers need no globals at all, so the
only globals allowed are set/frozenset, `_codecs.encode` for Latin-1 (how Python 3 writes
`bytes` at protocol 2) and the three numpy names an ndarray needs (class_info is sometimes an
array). Anything else, such as `os.system`, raises ForbiddenGlobalError naming the file.
"""
import codecs
import importlib
import os
import pickle

import numpy as np

from t2i_fast.errors import DataError, DataNotFound
from t2i_fast.fileio import atomic_write


class ForbiddenGlobalError(DataError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


def _latin1_encode(text, encoding="latin1", errors="strict"):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, 'latin1'); nothing else
    # may go through this door.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode is allowed only for str -> latin1 bytes, "
                                     f"got {type(text).__name__} with {encoding!r}")
    return codecs.encode(text, "latin1", errors)


def _numpy_reconstruct():
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)._reconstruct
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy's multiarray._reconstruct was not found")


_ALLOWED = {
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module, name):
        # fix_imports has already mapped Python 2 names (__builtin__ -> builtins).
        make = _ALLOWED.get((module, name))
        if make is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
            raise ForbiddenGlobalError(f"{self.path}: refusing to load the global "
                                       f"{module}.{name}; allowed globals: {allowed}")
        return make()


def load(path):
    """The object in the pickle at `path`, through the restricted unpickler."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataNotFound(f"pickle file {path} not found")
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except ForbiddenGlobalError:
            raise
        except Exception as e:  # truncation and corruption surface as many exception types
            raise DataError(f"{path}: truncated or corrupt pickle "
                             f"({type(e).__name__}: {e})") from e


def _text(value, path, what):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise DataError(f"{path}: {what} must be a string, got {type(value).__name__}")


def _int(value, path, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{path}: {what} must be an int, got {type(value).__name__}")
    return int(value)


def _sequence(obj, path, what):
    if isinstance(obj, np.ndarray):
        if obj.ndim != 1 or obj.dtype.kind not in "iu":
            raise DataError(f"{path}: {what} must be a 1-d integer array, "
                             f"got shape {obj.shape} dtype {obj.dtype}")
        return obj.tolist()
    if not isinstance(obj, (list, tuple)):
        raise DataError(f"{path}: {what} must be a list, got {type(obj).__name__}")
    return obj


def load_filenames(path):
    """filenames.pickle -> list of str keys (image paths without extension)."""
    keys = _sequence(load(path), path, "filenames")
    return [_text(k, path, f"filename {i}") for i, k in enumerate(keys)]


def load_class_info(path, count=None):
    """class_info.pickle -> list of int class labels; `count` checks the length."""
    labels = _sequence(load(path), path, "class_info")
    labels = [_int(c, path, f"class_info[{i}]") for i, c in enumerate(labels)]
    if count is not None and len(labels) != count:
        raise DataError(f"{path}: {len(labels)} class labels, expected {count} (one per "
                         f"filename)")
    return labels


def load_captions(path):
    """captions.pickle -> (train, test, ixtoword, wordtoix).

    train, test: lists of token-id lists (flat, K per image in filename order)
    ixtoword: {int: str} with 0 = '<end>'; wordtoix: {str: int}, its inverse
    """
    obj = load(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 4:
        raise DataError(f"{path}: expected a 4-list [train_captions, test_captions, ixtoword, "
                         f"wordtoix], got {type(obj).__name__}"
                         + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else ""))
    splits = []
    for name, caps in zip(("train", "test"), obj[:2]):
        caps = _sequence(caps, path, f"{name} captions")
        splits.append([[_int(t, path, f"{name} caption {i}")
                        for t in _sequence(c, path, f"{name} caption {i}")]
                       for i, c in enumerate(caps)])
    for name, d in zip(("ixtoword", "wordtoix"), obj[2:]):
        if not isinstance(d, dict):
            raise DataError(f"{path}: {name} must be a dict, got {type(d).__name__}")
    ixtoword = {_int(k, path, "ixtoword key"): _text(v, path, "ixtoword word")
                for k, v in obj[2].items()}
    wordtoix = {_text(k, path, "wordtoix word"): _int(v, path, "wordtoix id")
                for k, v in obj[3].items()}
    if wordtoix != {w: i for i, w in ixtoword.items()}:
        raise DataError(f"{path}: wordtoix is not the inverse of ixtoword")
    return splits[0], splits[1], ixtoword, wordtoix


def dump(path, obj, protocol=2):
    """Pickle `obj` to `path` atomically: a temporary file in the same folder, fsync, then
    os.replace, so readers (other ranks, a crash) never see a partial file."""
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=protocol))


def write_captions(path, train, test, ixtoword, wordtoix):
    """Write captions.pickle as AttnGAN does: [train, test, ixtoword, wordtoix], protocol 2."""
    dump(path, [train, test, ixtoword, wordtoix], protocol=2)
