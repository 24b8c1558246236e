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


class KeyMaker:
    """Cache keys for one model: keyed blake2b whose key is derived from the model's content
    hash and each input's name, dtype (byte order canonical) and shape, over the input's
    bytes; one C call for a single-input model. Nothing request-specific goes in."""

    __slots__ = ("_hash", "_keys")

    def __init__(self, model_hash: str) -> None:
        self._hash = model_hash.encode()
        self._keys: dict[tuple[str, np.dtype, tuple[int, ...]], bytes] = {}

    def _key_for(self, name: str, arr: np.ndarray) -> bytes:
        spec = (name, arr.dtype, arr.shape)
        key = self._keys.get(spec)
        if key is None:
            if arr.dtype.hasobject:
                raise DataError(
                    f"input '{name}' holds Python objects; cache keys need numeric arrays"
                )
            header = f"{name}|{canonical(arr[:0]).dtype.str}|{arr.shape}".encode()
            key = hashlib.blake2b(self._hash + b"\0" + header, digest_size=64).digest()
            if len(self._keys) < 4096:
                self._keys[spec] = key
        return key

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> bytes:
        if len(feeds) == 1:
            for name, arr in feeds.items():
                return hashlib.blake2b(
                    _data(arr), digest_size=16, key=self._key_for(name, arr)
                ).digest()
        h = hashlib.blake2b(self._hash, digest_size=16)
        for name in sorted(feeds):
            arr = feeds[name]
            h.update(self._key_for(name, arr))
            h.update(_data(arr))
        return h.digest()


def _data(arr: np.ndarray) -> Any:
    """The bytes to hash: the array's own buffer when it is little-endian and contiguous."""
    if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        arr = canonical(arr)
    return arr.data


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


def nbytes(outputs: Sequence[np.ndarray]) -> int:
    return sum(np.asarray(o).nbytes for o in outputs) + 64
