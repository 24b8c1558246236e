"""Cache keys and a safe byte format for cached outputs (no pickle, ever)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataError

_MAGIC = b"NMC1"


def canonical(arr: np.ndarray) -> np.ndarray:
    """The array as contiguous little-endian bytes, so equal values give equal keys."""
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


SMALL_INPUT_BYTES = 256  # one-input requests up to this size are their own key


class KeyMaker:
    """Cache keys for one model. Each input's name, dtype (byte order canonical) and shape,
    with the model's content hash, give a per-spec prefix; then the input's canonical bytes.
    A one-input request of at most SMALL_INPUT_BYTES is keyed by prefix + its bytes (exact:
    no hash to compute, no collision possible); larger or several inputs by keyed blake2b.
    Nothing request-specific goes in. Lower tiers shorten long keys (see ``short_key``)."""

    __slots__ = ("_hash", "_last", "_specs")

    def __init__(self, model_hash: str) -> None:
        self._hash = model_hash.encode()
        self._specs: dict[tuple[str, np.dtype, tuple[int, ...]], _Spec] = {}
        self._last: _Spec = ("", None, None, b"", b"", None)  # one-input fast path

    def _spec(self, name: str, arr: np.ndarray) -> _Spec:
        key = (name, arr.dtype, arr.shape)
        spec = self._specs.get(key)
        if spec is None:
            little = canonical(arr[:0]).dtype
            header = f"{name}|{little.str}|{arr.shape}".encode()
            secret = hashlib.blake2b(self._hash + b"\0" + header, digest_size=64).digest()
            prefix = hashlib.blake2b(secret, digest_size=16, person=b"exact").digest()
            swap: Any = (
                _OBJECTS if arr.dtype.hasobject else (little if little != arr.dtype else None)
            )
            spec = (name, arr.dtype, arr.shape, secret, prefix, swap)
            if len(self._specs) < 4096:
                self._specs[key] = spec
        return spec

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> bytes:
        if len(feeds) == 1:
            for name, arr in feeds.items():
                spec = self._last
                if arr.dtype is not spec[1] or arr.shape != spec[2] or name != spec[0]:
                    spec = self._last = self._spec(name, arr)
                if spec[5] is not None:
                    if spec[5] is _OBJECTS:  # strings (text models, categorical columns)
                        return hashlib.blake2b(
                            object_bytes(arr, name), digest_size=16, key=spec[3]
                        ).digest()
                    arr = arr.astype(spec[5])
                if arr.nbytes <= SMALL_INPUT_BYTES:
                    return spec[4] + arr.tobytes()  # tobytes is C order for any layout
                return hashlib.blake2b(_data(arr), digest_size=16, key=spec[3]).digest()
        h = hashlib.blake2b(self._hash, digest_size=16)
        for name in sorted(feeds):
            arr = feeds[name]
            h.update(self._spec(name, arr)[3])
            h.update(_data(arr))
        return h.digest()


# (name, dtype, shape, 64-byte hash key, 16-byte exact-key prefix, little-endian dtype to
# cast to, _OBJECTS for an array of Python objects, or None)
_Spec = tuple[str, Any, Any, bytes, bytes, Any]


def short_key(key: bytes) -> bytes:
    """A key of at most 32 bytes for tiers outside the process (file names, Redis)."""
    return key if len(key) <= 32 else hashlib.blake2b(key, digest_size=32).digest()


_OBJECTS = "objects"  # marks an input of Python objects in a spec's last field


def object_bytes(arr: np.ndarray, name: str = "") -> bytes:
    """The content of an object array (strings, bytes, None, floats such as a missing NaN)
    as unambiguous bytes: a type tag, a length, the value, per element in C order."""
    parts = []
    for v in arr.reshape(-1).tolist():
        if isinstance(v, str):
            b = v.encode("utf-8", "surrogatepass")
            parts.append(b"s" + struct.pack("<I", len(b)) + b)
        elif isinstance(v, bytes):
            parts.append(b"b" + struct.pack("<I", len(v)) + v)
        elif v is None:
            parts.append(b"n")
        elif isinstance(v, bool | int | float):
            parts.append(b"f" + struct.pack("<d", float(v)))
        else:
            raise DataError(
                f"input '{name}' holds a {type(v).__name__}; object inputs may hold strings, "
                "bytes, numbers or None"
            )
    return b"".join(parts)


def _data(arr: np.ndarray) -> Any:
    """The bytes to hash: the array's own buffer when it is little-endian and contiguous."""
    if arr.dtype.hasobject:
        return object_bytes(arr)
    if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        arr = canonical(arr)
    return arr


def cache_key(model_hash: str, feeds: Mapping[str, np.ndarray]) -> bytes:
    """A one-off cache key (see KeyMaker for the per-model fast path)."""
    return KeyMaker(model_hash)(feeds)


def encode(outputs: Sequence[np.ndarray]) -> bytes:
    """Outputs as bytes: a JSON header (dtype, shape per array; strings as JSON) + raw data."""
    header, blobs = [], []
    for out in outputs:
        arr = np.asarray(out)
        if arr.dtype.kind in ("U", "S", "O"):
            header.append({"json": arr.tolist(), "shape": list(arr.shape)})
            continue
        arr = canonical(arr)
        header.append({"dtype": arr.dtype.str, "shape": list(arr.shape), "nbytes": arr.nbytes})
        blobs.append(arr.tobytes())
    head = json.dumps(header).encode()
    return _MAGIC + struct.pack("<I", len(head)) + head + b"".join(blobs)


def decode(data: bytes) -> list[np.ndarray]:
    if data[:4] != _MAGIC:
        raise ValueError("not a nimbleml cache entry")
    (size,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + size])
    offset = 8 + size
    out = []
    for item in header:
        if "json" in item:
            out.append(np.asarray(item["json"]).reshape(item["shape"]))
            continue
        dtype, n = np.dtype(item["dtype"]), item["nbytes"]
        arr = np.frombuffer(data, dtype=dtype, count=n // dtype.itemsize, offset=offset)
        out.append(arr.reshape(item["shape"]))
        offset += n
    return out
