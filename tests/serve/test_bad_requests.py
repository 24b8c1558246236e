"""Every HTTP route fed careless input: a 4xx with {"error": "..."} naming the problem, never a
500, never FastAPI's {"detail": ...} shape (issue 11, "Make it systematic"). Then generated
JSON bodies (hypothesis) find what the table missed."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimbleml.serve import ServeConfig, create_app

from .conftest import ServerThread

ROW = [0.0] * 64


def infer(inputs=None, **extra):
    body = {"inputs": inputs if inputs is not None else [
        {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}  # fmt: skip
    body.update(extra)
    return body


def tensor(**changes):
    item = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": ROW}
    item.update(changes)
    return item


NESTED = "[" * 100_000 + "]" * 100_000
# (method, path, body (dict -> JSON, str/bytes -> raw), expected status, words in the error)
CASES = [
    ("POST", "/v2/models/digits/infer", b"{not json", 400, "not valid JSON"),
    ("POST", "/v2/models/digits/infer", [], 400, "JSON object"),
    ("POST", "/v2/models/digits/infer", {}, 400, "'inputs'"),
    ("POST", "/v2/models/digits/infer", NESTED, 400, "nests"),
    ("POST", "/v2/models/digits/infer", infer([tensor(name="x")]), 422, "input"),
    (
        "POST",
        "/v2/models/digits/infer",
        infer([tensor(datatype="INT64", data=[0] * 64)]),
        400,
        "sent as INT64",
    ),
    ("POST", "/v2/models/digits/infer", infer([tensor(datatype="FP64")]), 400, "takes FP32"),
    (
        "POST",
        "/v2/models/digits/infer",
        infer([tensor(datatype="BOOL", data=[True] * 64)]),
        400,
        "sent as BOOL",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        infer([tensor(datatype="UINT8", data=[300] * 64)]),
        400,
        "UINT8",
    ),
    ("POST", "/v2/models/digits/infer", infer([tensor(datatype="FLOAT")]), 400, "datatype"),
    ("POST", "/v2/models/digits/infer", infer([tensor(shape=[2, 64])]), 400, "does not fit shape"),
    ("POST", "/v2/models/digits/infer", infer([tensor(shape=[64])]), 422, "shape"),
    ("POST", "/v2/models/digits/infer", infer([tensor(shape="1x64")]), 400, "shape"),
    ("POST", "/v2/models/digits/infer", infer([tensor(data=["a"] * 64)]), 400, "does not fit"),
    ("POST", "/v2/models/digits/infer", infer([tensor(data=[1e300] * 64)]), 400, "input"),
    (
        "POST",
        "/v2/models/digits/infer",
        '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [NaN]}]}',
        400,
        "NaN",
    ),
    ("POST", "/v2/models/digits/infer", infer([tensor(shape=[0, 64], data=[])]), 422, "no samples"),
    (
        "POST",
        "/v2/models/digits/infer",
        infer([tensor(shape=[1025, 64], data=ROW * 1025)]),
        413,
        "--max-queue",
    ),
    ("POST", "/v2/models/digits/infer", infer(outputs=[{"name": "nope"}]), 400, "no output 'nope'"),
    ("POST", "/v2/models/digits/infer", infer(outputs="all"), 400, "'outputs'"),
    ("POST", "/v2/models/nope/infer", infer(), 404, "unknown model 'nope'"),
    ("POST", "/v2/models/digits/versions/xyz/infer", infer(), 404, "no version 'xyz'"),
    ("GET", "/v2/models/digits/infer", None, 405, "takes POST"),
    ("GET", "/v2/models/digits/versions/xyz", None, 404, "no version 'xyz'"),
    ("GET", "/v2/models/digits/versions/xyz/ready", None, 404, "no version 'xyz'"),
    ("GET", "/v2/models/nope", None, 404, "unknown model"),
    ("GET", "/v2/nothing/here", None, 404, "no route GET /v2/nothing/here"),
    ("DELETE", "/v2/health/ready", None, 405, "does not take DELETE"),
    ("POST", "/v1/models/digits:predict", {"instances": "x"}, 400, "'instances'"),
    ("POST", "/v1/models/digits:predict", {"instances": []}, 400, "'instances'"),
    ("POST", "/v1/models/digits:predict", {"instances": [[0.0] * 63]}, 422, "input"),
    ("POST", "/v1/models/digits:predict", {"instances": [{"x": ROW}]}, 400, "inputs are ['input']"),
    ("POST", "/v1/models/digits:predict", {"instances": [["a"] * 64]}, 400, "instances"),
    ("POST", "/v1/models/digits:predict", {"instances": [[[[0.0]]], [0.0]]}, 400, "instances"),
    ("POST", "/v1/models/digits:predict", b"\xff\xfe", 400, "not valid JSON"),
    ("GET", "/v1/models/digits:predict", None, 405, "takes POST"),
    ("POST", "/v2/models/digits/feedback", {"label": 1}, 400, "'id'"),
    ("POST", "/v2/models/digits/feedback", b"nope", 400, "not valid JSON"),
    ("POST", "/v2/models/digits/feedback", [1, 2], 400, "JSON object"),
    ("POST", "/v2/repository/models/digits/load", {}, 403, "model control is off"),
    ("GET", "/dashboard/data?since=yesterday", None, 422, "since"),
    # a JSON field of the wrong type reached code that assumed its type: 500s (issue 22)
    ("POST", "/v2/models/digits/infer", infer(parameters=[1]), 400, "'parameters' must be a JSON object"),
    ("POST", "/v2/models/digits/infer", infer(parameters="abc"), 400, "'parameters' must be a JSON object"),
    ("POST", "/v2/models/digits/infer", infer(parameters={"binary_data_output": "no"}), 400,
     "parameters.binary_data_output must be true or false"),
    ("POST", "/v2/models/digits/infer", infer([tensor(parameters=[1])]), 400,
     "inputs[0].parameters must be a JSON object"),
    ("POST", "/v2/models/digits/infer", infer([tensor(parameters={"binary_data_size": True})]), 400,
     "binary_data_size"),
    ("POST", "/v2/models/digits/infer", infer(outputs=[{"name": "output", "parameters": [1]}]), 400,
     "outputs[0].parameters must be a JSON object"),
    ("POST", "/v2/models/digits/infer", infer(outputs=[{"name": "output", "parameters": "x"}]), 400,
     "outputs[0].parameters must be a JSON object"),
    ("POST", "/v2/models/digits/infer",
     infer(outputs=[{"name": "output", "parameters": {"binary_data": "yes"}}]), 400,
     "outputs[0].parameters.binary_data must be true or false"),
    ("POST", "/v2/models/digits/infer", infer(outputs={}), 400, "'outputs' must be a list"),
    ("POST", "/v2/models/digits/infer", infer(outputs={"name": "output"}), 400, "'outputs' must be a list"),
    ("POST", "/v2/models/digits/infer", infer(id=5), 400, "'id' must be a string"),
    ("POST", "/v2/models/digits/infer", infer(id=[1]), 400, "'id' must be a string"),
    ("POST", "/v2/models/digits/infer", infer(id={"a": 1}), 400, "'id' must be a string"),
    ("POST", "/v1/models/digits:predict", {"instances": [ROW], "id": 7}, 400, "'id' must be a string"),
    ("POST", "/v2/models/digits/feedback", {"id": 5, "label": 1}, 400, "'id' must be a string"),
    ("POST", "/v2/models/digits/feedback", {"id": "a", "label": [1, 2]}, 400, "'label' must be"),
    ("POST", "/v2/models/digits/feedback", {"id": "a", "label": {"y": 1}}, 400, "'label' must be"),
    ("POST", "/v2/models/digits/feedback", {"id": "a", "label": 2**64 - 1}, 400, "'label' must be"),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(digits_package):
    app = create_app({"digits": digits_package}, ServeConfig(max_wait_ms=0))
    with ServerThread(app) as s:
        yield s


def send(client: httpx.Client, method: str, path: str, body) -> httpx.Response:
    if body is None:
        return client.request(method, path)
    raw = (
        body
        if isinstance(body, bytes)
        else body.encode()
        if isinstance(body, str)
        else json.dumps(body).encode()
    )
    return client.request(method, path, content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("method, path, body, status, words", CASES,
                         ids=[f"{c[0]} {c[1][:40]} {i}" for i, c in enumerate(CASES)])  # fmt: skip
def test_bad_request_is_a_4xx_naming_the_problem(server, method, path, body, status, words):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = send(c, method, path, body)
    assert r.status_code == status, r.text[:500]
    error = r.json().get("error")
    assert isinstance(error, str) and words in error, r.text[:500]
    assert "Traceback" not in error and "detail" not in r.json()


def test_the_good_forms_still_answer(server, digits):
    x = digits[1][:2].astype(np.float32)
    with httpx.Client(base_url=server.url) as c:
        ok = c.post(
            "/v2/models/digits/infer", json=infer([tensor(shape=[2, 64], data=x.ravel().tolist())])
        )
        assert ok.status_code == 200, ok.text
        version = ok.json()["model_version"]
        assert c.get(f"/v2/models/digits/versions/{version}").status_code == 200
        versioned = c.post(f"/v2/models/digits/versions/{version}/infer",
                           json=infer([tensor(data=x[0].tolist())]))  # fmt: skip
        assert versioned.status_code == 200, versioned.text
        names = [o["name"] for o in ok.json()["outputs"]]
        one = c.post("/v2/models/digits/infer", json=infer(outputs=[{"name": names[0]}]))
        assert [o["name"] for o in one.json()["outputs"]] == names[:1]
        # v1: a list of rows, or rows as objects keyed by input name
        plain = c.post("/v1/models/digits:predict", json={"instances": x.tolist()})
        keyed = c.post("/v1/models/digits:predict",
                       json={"instances": [{"input": row} for row in x.tolist()]})  # fmt: skip
        assert plain.status_code == keyed.status_code == 200, keyed.text
        assert plain.json()["predictions"] == keyed.json()["predictions"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
NEAR_MISS = st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries({
        "name": st.sampled_from(["input", "x", ""]) | JSON,
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "FP16"]) | JSON,
        "shape": st.lists(st.integers(-2, 70), max_size=3) | JSON,
        "data": st.lists(st.floats(allow_nan=False, width=32) | st.integers(-300, 300), max_size=70) | JSON,
    }), max_size=2)},
    optional={"outputs": JSON, "parameters": JSON, "id": JSON},
)  # fmt: skip


@pytest.fixture(scope="module")
def client(server):
    """One client (one connection) for every generated body: a new httpx.Client costs 70 ms
    (its SSL context), 10 s over 150 examples."""
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=JSON | NEAR_MISS,
    route=st.sampled_from(
        ["/v2/models/digits/infer", "/v1/models/digits:predict", "/v2/models/digits/feedback"]
    ),
)
def test_generated_bodies_never_get_a_500(client, body, route):
    r = client.post(
        route, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    assert r.status_code < 500, (body, r.text[:300])
    if r.status_code >= 400:
        assert isinstance(r.json().get("error"), str)


# the load route with model control on (a repository)
LOAD_CASES = [
    ({"parameters": "abc"}, 400, "'parameters' must be a JSON object, got text"),
    ({"parameters": [1, 2]}, 400, "'parameters' must be a JSON object, got a list"),
    ({"parameters": {"path": 5}}, 400, "parameters.path must be a package path"),
    ({"parameters": {"path": ["a"]}}, 400, "parameters.path must be a package path"),
    ({"parameters": {"path": ""}}, 400, "parameters.path must be a package path"),
    ([1], 400, "JSON object"),
    (b"{oops", 400, "not valid JSON"),
]


@pytest.mark.parametrize("body, status, words", LOAD_CASES)
def test_bad_load_request_is_a_4xx_naming_the_problem(
    tmp_path, digits_package, body, status, words
):
    app = create_app({"digits": digits_package}, ServeConfig(repository=str(tmp_path)))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        r = send(c, "POST", "/v2/repository/models/digits/load", body)
        assert r.status_code == status, r.text[:500]
        assert words in r.json()["error"], r.text[:500]
        ok = c.post("/v2/models/digits/infer", json=infer())  # still serving the first version
        assert ok.status_code == 200


def test_reload_with_other_inputs_is_refused(tmp_path, digits_package, digits):
    """A new version that takes other inputs would break every client: 409, the old one
    keeps serving (issue 11)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import nimbleml

    X, y = load_iris(return_X_y=True)
    other = nimbleml.compress(LogisticRegression(max_iter=500).fit(X, y), quantize=None,
                              val=(X.astype(np.float32), y), benchmark_time_s=0.01)  # fmt: skip
    other.save(tmp_path / "iris.nimble")
    app = create_app({"digits": digits_package}, ServeConfig(repository=str(tmp_path)))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        r = c.post("/v2/repository/models/digits/load",
                   json={"parameters": {"path": str(tmp_path / "iris.nimble")}})  # fmt: skip
        assert r.status_code == 409, r.text
        assert "takes inputs" in r.json()["error"] and "new model name" in r.json()["error"]
        ok = c.post("/v2/models/digits/infer", json=infer([tensor(data=digits[1][0].tolist())]))
        assert ok.status_code == 200
        # under a new name it loads
        r = c.post("/v2/repository/models/iris/load",
                   json={"parameters": {"path": str(tmp_path / "iris.nimble")}})  # fmt: skip
        assert r.status_code == 200, r.text
