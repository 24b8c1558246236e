"""LightGBM and XGBoost models inside scikit-learn conversions, through onnxmltools (the
optional ``gbm`` extra), imported only when an estimator holds one of their models.

LightGBM's float64 thresholds are rounded down to float32 so float32 inputs split as
LightGBM does (``exact_thresholds``); in a double graph their input is cast to float32 just
before the trees (``as_float``), which is what XGBoost does itself with float64 data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from .._deps import require
from .sklearn_converters import ML_OPSET

REGISTERED: set[str] = set()


@contextlib.contextmanager
def _ml_opset(container: Any) -> Iterator[None]:
    """onnxmltools leaves the ai.onnx.ml version to the container, which (no target given
    for that domain) takes onnx's newest, 5, where TreeEnsemble* are deprecated; skl2onnx
    then refuses the model ("version 5 of domain 'ai.onnx.ml' not supported"). Pin 3."""
    targets = container.target_opset_all
    if not isinstance(targets, dict) or "ai.onnx.ml" in targets:
        yield
        return
    targets["ai.onnx.ml"] = ML_OPSET
    try:
        yield
    finally:
        del targets["ai.onnx.ml"]


def _gbm(module: str) -> Any:
    return require(module, f"converting {module} models to ONNX")


def register_onnxmltools(library: str) -> None:
    """Register onnxmltools' converter for the scikit-learn API models of ``library``, with
    skl2onnx's shape calculators, as onnxmltools documents for use inside pipelines."""
    if library in REGISTERED:
        return
    module = _gbm(library)
    _gbm("onnxmltools")
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    if library == "lightgbm":
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        classifier, regressor = module.LGBMClassifier, module.LGBMRegressor
        aliases = ("LightGbmLGBMClassifier", "LightGbmLGBMRegressor")
        convert = _through_onnxmltools(convert_lightgbm, library)
    else:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        classifier, regressor = module.XGBClassifier, module.XGBRegressor
        aliases = ("XGBoostXGBClassifier", "XGBoostXGBRegressor")
        convert = _through_onnxmltools(convert_xgboost, library)
    update_registered_converter(
        classifier,
        aliases[0],
        calculate_linear_classifier_output_shapes,
        convert,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        regressor,
        aliases[1],
        calculate_linear_regressor_output_shapes,
        convert,
        options={"split": None} if library == "lightgbm" else None,
    )
    REGISTERED.add(library)


def _through_onnxmltools(convert: Any, library: str) -> Any:
    def converter(scope: Any, operator: Any, container: Any) -> None:
        from skl2onnx.common.data_types import DoubleTensorType

        if isinstance(operator.inputs[0].type, DoubleTensorType):
            # its tree nodes read and return float32 whatever skl2onnx declared: in a double
            # graph (float64 preprocessing, as scikit-learn computes it) the model gets its
            # input cast to float32, which is what XGBoost itself does with float64 data
            with as_float(scope, operator, container):
                converter(scope, operator, container)
            return
        start = len(container.nodes)
        with _ml_opset(container):
            convert(scope, operator, container)
        if library == "lightgbm":
            exact_thresholds(container.nodes[start:], operator.raw_operator.booster_)
        # XGBoost itself splits float32 inputs on float32 thresholds (x < t): nothing to fix

    return converter


@contextlib.contextmanager
def as_float(scope: Any, operator: Any, container: Any) -> Iterator[None]:
    """Run a float32-only converter inside a double graph: its input cast down, its float
    outputs cast back up to the double variables skl2onnx declared."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    outputs = list(operator.outputs)
    x = operator.inputs[0]
    small = scope.declare_local_variable("float_input", FloatTensorType(x.type.shape))
    container.add_node("Cast", [x.full_name], [small.full_name], to=TensorProto.FLOAT,
                       name=scope.get_unique_operator_name("Cast"))  # fmt: skip
    operator.inputs.set_element(0, small)
    for i, out in enumerate(outputs):
        if isinstance(out.type, DoubleTensorType):
            operator.outputs.set_element(i, scope.declare_local_variable(
                out.raw_name + "_float", FloatTensorType(out.type.shape)
            ))  # fmt: skip
    try:
        yield
    finally:
        operator.inputs.set_element(0, x)
        for i, out in enumerate(outputs):
            if operator.outputs[i] is not out:
                container.add_node("Cast", [operator.outputs[i].full_name], [out.full_name],
                                   to=TensorProto.DOUBLE,
                                   name=scope.get_unique_operator_name("Cast"))  # fmt: skip
                operator.outputs.set_element(i, out)


def _lightgbm_thresholds(booster: Any) -> dict[tuple[int, float], set[float]]:
    """(feature, threshold rounded to float32) -> the float64 thresholds of numeric splits."""
    found: dict[tuple[int, float], set[float]] = {}
    stack = [t["tree_structure"] for t in booster.dump_model()["tree_info"]]
    while stack:
        node = stack.pop()
        if "split_feature" not in node:
            continue
        if node.get("decision_type") == "<=":
            t = float(node["threshold"])
            found.setdefault((int(node["split_feature"]), _f32(t)), set()).add(t)
        stack += [node["left_child"], node["right_child"]]
    return found


def exact_thresholds(nodes: list[Any], booster: Any) -> int:
    """Make onnxmltools' float32 thresholds split float32 inputs as LightGBM does.

    LightGBM compares ``double(x) <= t`` with a float64 ``t``; onnxmltools stores
    ``float32(t)`` rounded to nearest, which sends an input equal to it left when ``t`` was
    rounded up (LightGBM places thresholds just above bin midpoints, so this happens):
    measured on breast_cancer, inputs at the thresholds moved probabilities by 0.14. The
    largest float32 <= ``t`` splits every float32 input exactly like ``t``. Returns the
    number of thresholds changed."""
    table = _lightgbm_thresholds(booster)
    changed = 0
    for node in nodes:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values" not in attrs:
            continue
        modes, features = attrs["nodes_modes"].strings, attrs["nodes_featureids"].ints
        values = attrs["nodes_values"].floats
        for i, mode in enumerate(modes):
            if mode != b"BRANCH_LEQ":
                continue
            candidates = table.get((int(features[i]), _f32(values[i])), set())
            floors = {_lightgbm_floor32(t) for t in candidates}
            if len(floors) == 1 and (new := floors.pop()) != values[i]:
                values[i] = new
                changed += 1
    return changed


def _lightgbm_floor32(t: float) -> float:
    """The float32 threshold that splits float32 inputs as LightGBM splits them at ``t``.

    LightGBM reads any |x| <= kZeroThreshold (1e-35f) as 0 before comparing, so a threshold
    in [-1e-35f, 0) (its "negatives | zero" split) sends those tiny values right."""
    zero = _f32(1e-35)
    if -zero <= t < 0:
        return float(np.nextafter(np.float32(-zero), np.float32(-np.inf)))
    return _floor32(t)


def _f32(t: float) -> float:
    with np.errstate(over="ignore"):  # LightGBM writes +-1e300 for "all finite values"
        return float(np.float32(t))


def _floor32(t: float) -> float:
    """The largest float32 not above ``t``; beyond float32's range, +-inf as onnxmltools
    writes it (LightGBM sends +inf inputs left of its 1e300 thresholds, as inf <= inf does)."""
    f = np.float32(_f32(t))
    if np.isfinite(f) and float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)
