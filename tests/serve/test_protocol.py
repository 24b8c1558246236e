"""The binary tensor extension, and a client written for the protocol (tritonclient) used
unchanged against nimbleml serve."""

import json
import struct

import httpx
import numpy as np
import pytest

import nimbleml
from nimbleml.serve import ServeConfig, create_app

from .conftest import ServerThread


@pytest.fixture(scope="module")
def served(digits_package):
    app = create_app({"digits": digits_package}, ServeConfig(max_wait_ms=1))
    with ServerThread(app) as s:
        yield s


def binary_request(x: np.ndarray, **params) -> tuple[bytes, dict[str, str]]:
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": params,
    }
    head = json.dumps(header).encode()
    return head + x.astype("<f4").tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def test_binary_inputs_and_outputs(served, digits_package, digits):
    x = digits[1][:5]
    ref = nimbleml.load(digits_package).predict(x)
    body, headers = binary_request(x, binary_data_output=True)
    r = httpx.post(f"{served.url}/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    out = head["outputs"][0]
    size = out["parameters"]["binary_data_size"]
    assert out["datatype"] == "FP32" and out["shape"] == [5, 10]
    got = np.frombuffer(r.content[n : n + size], dtype="<f4").reshape(out["shape"])
    assert np.allclose(got, ref, atol=1e-5)
    # the same request as JSON gives the same numbers
    body, headers = binary_request(x)
    as_json = httpx.post(f"{served.url}/v2/models/digits/infer", content=body, headers=headers)
    data = as_json.json()["outputs"][0]["data"]
    assert np.allclose(np.asarray(data).reshape(5, 10), got, atol=1e-6)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h, b: (h, b[:-4]), "binary_data_size"),
        (lambda h, b: (h, b + b"\0\0\0\0"), "add up to"),
        (lambda h, b: ({"Inference-Header-Content-Length": "999999"}, b), "not a length"),
        (lambda h, b: ({"Inference-Header-Content-Length": "x"}, b), "not a length"),
    ],
    ids=["short", "extra-bytes", "header-too-long", "header-not-a-number"],
)
def test_broken_binary_bodies_are_refused_with_the_reason(served, digits, mutate, message):
    body, headers = binary_request(digits[1][:2])
    headers, body = mutate(headers, body)
    r = httpx.post(f"{served.url}/v2/models/digits/infer", content=body, headers=headers)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_bytes_tensors_in_binary_form():
    from nimbleml.serve.protocol import _from_binary, _to_binary

    arr = np.array(["a", "héllo", ""], dtype=object)
    raw = _to_binary(arr, "BYTES")
    assert raw[:4] == struct.pack("<I", 1)
    back = _from_binary(memoryview(raw), "BYTES", [3])
    assert back.tolist() == ["a", "héllo", ""]


def test_tritonclient_works_unchanged(served, digits_package, digits):
    httpclient = pytest.importorskip("tritonclient.http")
    x = digits[1][:3].astype(np.float32)
    ref = nimbleml.load(digits_package).predict(x)
    client = httpclient.InferenceServerClient(url=served.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"][0]["name"] == "input"
        out_name = meta["outputs"][0]["name"]
        for binary in (True, False):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            wanted = httpclient.InferRequestedOutput(out_name, binary_data=binary)
            result = client.infer("digits", [inp], outputs=[wanted], request_id="req-1")
            assert np.allclose(result.as_numpy(out_name), ref, atol=1e-5)
            assert result.get_response()["id"] == "req-1"
    finally:
        client.close()
