"""Open Inference Protocol (KServe v2) tensors: JSON bodies and the binary tensor extension.

Binary extension (the one Triton and tritonclient speak): the request body is a JSON header
followed by raw tensor bytes; the header's length is in ``Inference-Header-Content-Length``;
each binary input carries ``parameters.binary_data_size``; BYTES elements are a 4-byte
little-endian length then the bytes. A client asks for binary outputs with
``parameters.binary_data_output`` (all) or per output with ``parameters.binary_data``.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from ..errors import ProtocolError

V2_TYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
    "FP32": "float32", "FP64": "float64", "BYTES": "object",
}  # fmt: skip
NP_TO_V2 = {v: k for k, v in V2_TYPES.items()}
HEADER_LENGTH = b"inference-header-content-length"  # as ASGI gives header names


def loads(raw: bytes | memoryview) -> Any:
    import orjson

    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:  # Python's json also reads the NaN / Infinity literals some clients send;
            return json.loads(bytes(raw))  # the finite-values check then names the input
        except ValueError:
            raise ProtocolError(f"the body is not valid JSON ({exc})") from exc
        except RecursionError:
            raise ProtocolError("the body nests JSON arrays or objects too deeply") from None


def dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def split_body(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """(JSON header, binary tail) of a v2 request; the tail is empty for plain JSON."""
    if header_length is None:
        body, tail = loads(raw), memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(raw):
            raise ProtocolError(
                f"Inference-Header-Content-Length {header_length!r} is not a length within "
                f"the {len(raw)}-byte body"
            )
        view = memoryview(raw)
        body, tail = loads(view[:n]), view[n:]
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    return body, tail


def input_tensors(
    body: dict[str, Any], tail: memoryview, missing_ok: bool = False
) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, checked (name, datatype, shape, size, finite).
    ``missing_ok``: the model was verified on missing numbers (a table model with an imputer),
    so NaN (and JSON null) stand for a missing value; infinities are still refused."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("'inputs' must be a non-empty list of tensors")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(inputs):
        name, arr, used = _tensor(item, i, tail, offset, missing_ok)
        offset += used
        if name in feeds:
            raise ProtocolError(f"inputs[{i}]: input '{name}' is given twice")
        feeds[name] = arr
    if offset != len(tail):
        raise ProtocolError(
            f"the binary part holds {len(tail)} bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    return feeds


def _tensor(
    item: Any, index: int, tail: memoryview, offset: int, missing_ok: bool = False
) -> tuple[str, np.ndarray, int]:
    where = f"inputs[{index}]"
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object with name, shape, datatype and data")
    name = item.get("name")
    if not isinstance(name, str):
        raise ProtocolError(f"{where}.name is missing or not a string")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TYPES:
        raise ProtocolError(f"{where}.datatype {datatype!r} is not one of {', '.join(V2_TYPES)}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"{where}.shape must be a list of non-negative integers, got {shape!r}")
    size = parameters_of(item.get("parameters"), f"{where}.parameters").get("binary_data_size")
    used = 0
    try:
        if size is not None:
            if (not isinstance(size, int) or isinstance(size, bool) or size < 0
                    or offset + size > len(tail)):  # fmt: skip
                raise ProtocolError(
                    f"{where} ('{name}'): binary_data_size {size!r} runs past the body's "
                    f"{len(tail)} binary bytes"
                )
            chunk, used = tail[offset : offset + size], size
            arr = _from_binary(chunk, datatype, shape)
        elif "data" in item:
            data = item["data"]
            if missing_ok and datatype.startswith("FP"):
                data = nulls_to_nan(data)
            with np.errstate(over="raise", invalid="raise"):
                arr = np.asarray(data, dtype=V2_TYPES[datatype]).reshape(shape)
        else:
            raise ProtocolError(f"{where}.data is missing (or parameters.binary_data_size)")
    except FloatingPointError:
        raise ProtocolError(
            f"{where} ('{name}') holds values outside the range of {datatype}"
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ProtocolError(  # OverflowError: 300 as UINT8; RecursionError: absurd nesting
            f"{where} ('{name}'): data does not fit shape {shape} as {datatype} ({str(exc)[:200]})"
        ) from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        if not missing_ok:
            raise ProtocolError(f"{where} ('{name}') holds NaN or infinite values")
        if np.isinf(arr).any():
            raise ProtocolError(f"{where} ('{name}') holds infinite values")
    return name, arr, used


WIDENS = {("FP32", "FP64"), ("FP16", "FP64"), ("FP16", "FP32"), ("INT32", "INT64"),
          ("INT16", "INT64"), ("INT8", "INT64"), ("UINT8", "INT64")}  # fmt: skip


def check_datatypes(feeds: dict[str, np.ndarray], specs: Any, model: str) -> None:
    """Each input's declared datatype must be the one the model's metadata gives: an INT64
    or FP64 tensor into an FP32 input is the client's mistake, not ours to guess at. A
    narrower type that widens exactly (FP32 or FP16 into FP64, INT32 into INT64: a
    scikit-learn package takes FP64, most clients send FP32) is widened in place."""
    for spec in specs:
        arr = feeds.get(spec.name)
        if arr is None:
            continue
        want = NP_TO_V2.get(spec.dtype, "BYTES")
        got = v2_datatype(arr)
        if (got, want) in WIDENS:
            feeds[spec.name] = arr.astype(spec.dtype)
        elif got != want:
            raise ProtocolError(
                f"input '{spec.name}' was sent as {got}, but the model takes {want} (GET "
                f"/v2/models/{model} lists every input's datatype): send it as {want}"
            )


def nulls_to_nan(data: Any) -> Any:
    """JSON nulls (None) in a nested list of numbers as NaN: a missing value."""
    if isinstance(data, list):
        return [nulls_to_nan(v) for v in data]
    return float("nan") if data is None else data


def _from_binary(chunk: memoryview, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        items, pos, raw = [], 0, bytes(chunk)
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ValueError("a BYTES element's 4-byte length is cut off")
            (n,) = struct.unpack_from("<I", raw, pos)
            items.append(raw[pos + 4 : pos + 4 + n].decode("utf-8", "replace"))
            pos += 4 + n
        return np.array(items, dtype=object).reshape(shape)
    dtype = np.dtype(V2_TYPES[datatype]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if count * dtype.itemsize != len(chunk):
        raise ValueError(f"{len(chunk)} bytes for {count} elements of {dtype.itemsize} bytes")
    # a copy: the request's buffer goes away, and the batcher may concatenate it
    return np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


_V2_OF_DTYPE = {np.dtype(v): k for k, v in V2_TYPES.items()}  # str(dtype) is slow


def v2_datatype(arr: np.ndarray) -> str:
    kind = _V2_OF_DTYPE.get(arr.dtype)
    if kind is None:
        kind = "BYTES" if arr.dtype.kind in "OUS" else "FP32"
    return kind


def parameters_of(value: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` field: absent or null is none; anything but a JSON object is the
    client's mistake (a list reached ``.get`` and was a 500)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object, got {kind_of(value)}")
    return value


def _flag(params: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):  # "false" would have been true
        raise ProtocolError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def kind_of(value: Any) -> str:
    """A JSON value's type in words, for an error message."""
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", str: "text", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip


def request_id(body: dict[str, Any]) -> str | None:
    """The request's ``id`` (a string in the protocol), None when it has none."""
    pid = body.get("id")
    if pid is None or pid == "":
        return None
    if not isinstance(pid, str):
        raise ProtocolError(f"'id' must be a string, got {kind_of(pid)}")
    return pid


def requested_outputs(body: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The request's 'outputs' by name (empty: all), checked against the model's outputs;
    the request's and each output's ``parameters`` checked too (before the work)."""
    binary_output(body)
    requested = body.get("outputs")
    if requested is None:
        requested = []
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    for i, o in enumerate(requested):
        _flag(parameters_of(o.get("parameters"), f"outputs[{i}].parameters"), "binary_data",
              f"outputs[{i}].parameters")  # fmt: skip
    wanted = {o["name"]: o for o in requested}
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ProtocolError(
            f"outputs: the model has no output {', '.join(repr(u) for u in unknown)}; it "
            f"gives {', '.join(names)}"
        )
    return wanted


def binary_output(body: dict[str, Any]) -> bool:
    """Whether the request asks for every output as binary (parameters.binary_data_output)."""
    params = parameters_of(body.get("parameters"), "'parameters'")
    return _flag(params, "binary_data_output", "parameters")


def feedback(body: dict[str, Any]) -> tuple[str, Any]:
    """(prediction id, label) of a feedback body: the id a prediction was answered with,
    and a label the monitor's store can hold and compare with an output."""
    if "id" not in body or "label" not in body:
        raise ProtocolError("feedback needs 'id' (the prediction id) and 'label'")
    pid, label = request_id(body), body["label"]
    if pid is None:
        raise ProtocolError("'id' must be the prediction id (X-Prediction-Id), got an empty one")
    ok = isinstance(label, str | bool) or (
        isinstance(label, int) and -(2**63) <= label < 2**63
    ) or (isinstance(label, float) and np.isfinite(label))  # fmt: skip
    if not ok:
        raise ProtocolError(
            f"'label' must be a number (a 64-bit integer or a finite number), text or "
            f"true/false, got {kind_of(label) if not isinstance(label, int) else label}"
        )
    return pid, label


def output_tensors(
    names: list[str], outputs: list[np.ndarray], body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """(output objects, binary chunks) for a response: the requested outputs only, binary
    where the request asked for it."""
    wanted = requested_outputs(body, names)
    all_binary = binary_output(body)
    out, chunks = [], []
    for name, arr in zip(names, outputs, strict=True):
        if wanted and name not in wanted:
            continue
        arr = np.asarray(arr)
        kind = v2_datatype(arr)
        item: dict[str, Any] = {"name": name, "datatype": kind, "shape": list(arr.shape)}
        asked = (wanted.get(name) or {}).get("parameters") or {}
        if _flag(asked, "binary_data", "", all_binary):
            data = _to_binary(arr, kind)
            item["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif kind == "BYTES":
            item["data"] = arr.astype(str).reshape(-1).tolist()
        elif kind == "FP16":
            item["data"] = arr.astype(np.float32).reshape(-1)
        else:
            item["data"] = np.ascontiguousarray(arr).reshape(-1)
        out.append(item)
    return out, chunks


def _to_binary(arr: np.ndarray, kind: str) -> bytes:
    if kind == "BYTES":
        parts = []
        for v in arr.reshape(-1).tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
