"""Cache keys and a safe byte format for cached outputs (no pickle, ever)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import DataError

_MAGIC = b"NMC1"


def canonical(arr: np.ndarray) -> np.ndarray:
    """The array as contiguous little-endian bytes, so equal values give equal keys."""
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


class KeyMaker:
    """Cache keys for one model: blake2b over the model's content hash (hashed once) and each
    input's name, dtype (with byte order), shape and bytes. Nothing request-specific."""

    __slots__ = ("_base", "_headers")

    def __init__(self, model_hash: str) -> None:
        self._base = hashlib.blake2b(model_hash.encode(), digest_size=16)
        self._headers: dict[tuple[str, str, tuple[int, ...]], bytes] = {}

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> bytes:
        h = self._base.copy()
        for name in sorted(feeds) if len(feeds) > 1 else feeds:
            arr = feeds[name]
            if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
                arr = canonical(arr)
            spec = (name, arr.dtype.str, arr.shape)
            header = self._headers.get(spec)
            if header is None:
                if arr.dtype.hasobject:
                    raise DataError(
                        f"input '{name}' holds Python objects; cache keys need numeric arrays"
                    )
                header = f"{name}|{arr.dtype.str}|{arr.shape}".encode()
                if len(self._headers) < 4096:
                    self._headers[spec] = header
            h.update(header)
            h.update(arr.data)
        return h.digest()


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
