"""ONNX converters that skl2onnx lacks, or gets wrong, on the versions nimbleml supports.

Registered with ``skl2onnx.update_registered_converter`` just before a conversion, for the
estimator types that conversion contains, so they also work inside Pipelines:

- ``HistGradientBoostingClassifier/Regressor``: skl2onnx 1.20's own converter cannot build its
  node on onnx 1.23 (protobuf 7 refuses a Python ``bool`` in an int attribute, and it writes
  ``missing = False`` for every leaf); it also ignores categorical splits and rounds float64
  thresholds to float32. This one reads the fitted ``_predictors`` directly.
- ``LGBMClassifier/Regressor``, ``XGBClassifier/Regressor`` through onnxmltools, imported only
  when the estimator holds one (they are the optional ``gbm`` extra; sklearn_gbm.py).
- ``StandardScaler``: scikit-learn's own arithmetic (see ``_convert_scaler``).
- ``SimpleImputer``: IsNaN/Where in the data's precision (sklearn_imputer.py), so a double
  graph loads and imputer -> scaler -> trees is exact.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ML_OPSET = 3  # the newest ai.onnx.ml opset skl2onnx 1.20 writes (it refuses 4 and 5)
_REGISTERED: set[str] = set()


def register_converters(estimator: Any) -> None:
    """Register the converters that ``estimator`` and the steps inside it need (idempotent).

    LightGBM, XGBoost and onnxmltools are imported only when a step is one of their models,
    so ``import nimbleml`` and plain scikit-learn conversions never pay for them."""
    packages = {type(e).__module__.split(".")[0] for e in _estimators(estimator)}
    if "sklearn" in packages:
        _register_sklearn()
    for library in ("lightgbm", "xgboost"):
        if library in packages:
            from .sklearn_gbm import register_onnxmltools

            register_onnxmltools(library)


def _estimators(estimator: Any) -> list[Any]:
    """The estimator and every estimator nested in it (pipeline steps, meta-estimators)."""
    found = [estimator]
    if hasattr(estimator, "get_params"):
        with contextlib.suppress(Exception):  # a third-party get_params may be unusual
            found += [v for v in estimator.get_params(deep=True).values() if hasattr(v, "fit")]
    return found


def missing_converter(estimator: Any, exc: BaseException) -> str:
    """Name the step skl2onnx has no converter for: "step 'clip' (ClipTransformer) has no
    ONNX converter". skl2onnx names only the class, and the final estimator is rarely it."""
    match = re.search(r"<class '([^']+)'>", str(exc))
    cls = match.group(1).rsplit(".", 1)[-1] if match else type(estimator).__name__
    if hasattr(estimator, "get_params") and type(estimator).__name__ != cls:
        with contextlib.suppress(Exception):
            for key, value in estimator.get_params(deep=True).items():
                if hasattr(value, "fit") and type(value).__name__ == cls:
                    return f"step '{key}' ({cls}) has no ONNX converter"
    return f"skl2onnx has no converter for {cls}"


# -- HistGradientBoosting -----------------------------------------------------------------


@dataclass
class Forest:
    """One ai.onnx.ml TreeEnsembleRegressor (opset 3) that sums the raw scores of all trees:
    ``nodes`` rows are (tree, node, feature, mode, value, true id, false id, NaN goes true),
    ``leaves`` rows are (tree, node, target, weight)."""

    n_targets: int
    base: np.ndarray
    nodes: list[tuple[int, int, int, str, float, int, int, int]] = field(default_factory=list)
    leaves: list[tuple[int, int, int, float]] = field(default_factory=list)

    def leaf(self, tree: int, node: int, target: int, weight: float) -> None:
        self.nodes.append((tree, node, 0, "LEAF", 0.0, 0, 0, 0))
        self.leaves.append((tree, node, target, weight))

    def attributes(self) -> dict[str, Any]:
        """Node attributes with float64 thresholds and weights (``*_as_tensor``): the ensemble
        compares the input cast to double, exactly as scikit-learn does."""
        from onnx import numpy_helper

        def doubles(values: Any) -> Any:
            return numpy_helper.from_array(np.asarray(values, dtype=np.float64))

        tree, node, feature, mode, value, true, false, missing = zip(*self.nodes, strict=True)
        l_tree, l_node, l_target, l_weight = zip(*self.leaves, strict=True)
        return {
            "n_targets": self.n_targets,
            "aggregate_function": "SUM",
            "post_transform": "NONE",
            "base_values_as_tensor": doubles(self.base),
            "nodes_treeids": list(tree),
            "nodes_nodeids": list(node),
            "nodes_featureids": list(feature),
            "nodes_modes": list(mode),
            "nodes_values_as_tensor": doubles(value),
            "nodes_truenodeids": list(true),
            "nodes_falsenodeids": list(false),
            "nodes_missing_value_tracks_true": list(missing),
            "target_treeids": list(l_tree),
            "target_nodeids": list(l_node),
            "target_ids": list(l_target),
            "target_weights_as_tensor": doubles(l_weight),
        }


def _bitset_codes(row: np.ndarray) -> np.ndarray:
    """The category codes set in one sklearn bitset row (8 x uint32, bit c = code c)."""
    bits = np.unpackbits(np.ascontiguousarray(row, dtype="<u4").view(np.uint8), bitorder="little")
    return np.flatnonzero(bits)


def _hgb_columns(est: Any) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """For each feature the trees index: the input column it reads, and for a categorical one
    the raw value of each category code.

    Since scikit-learn 1.4 a model with categorical features holds a ColumnTransformer
    (``_preprocessor``) that ordinal-encodes the categorical columns and moves them first;
    its trees see codes 0..k-1. Folding the encoder into the splits (``x == raw value``)
    keeps the ONNX input the user's own matrix, and an unseen value matches no code, which
    is what the encoder's ``unknown_value=nan`` gives: the missing-value branch."""
    n = int(est.n_features_in_)
    pre = getattr(est, "_preprocessor", None)
    # no categorical features, or scikit-learn < 1.4 where raw values are the codes (there,
    # a non-integral value differs: scikit-learn truncates it, the ONNX model calls it unknown)
    if pre is None:
        return np.arange(n), [None] * n
    is_cat = np.asarray(est.is_categorical_, dtype=bool)
    cat_cols, num_cols = np.flatnonzero(is_cat), np.flatnonzero(~is_cat)
    encoded = pre.output_indices_.get("encoder")
    if encoded is None or (encoded.start, encoded.stop) != (0, len(cat_cols)):
        raise ValueError(
            "this HistGradientBoosting model's preprocessor does not put the categorical "
            "columns first as scikit-learn 1.4-1.9 do; nimbleml cannot map its features"
        )
    values: list[np.ndarray | None] = []
    for cats in pre.named_transformers_["encoder"].categories_:
        cats = np.asarray(cats)
        if not np.issubdtype(cats.dtype, np.number):
            try:
                cats = cats.astype(np.float64)
            except (TypeError, ValueError):
                raise ValueError(
                    "categorical features with non-numeric categories (e.g. strings) cannot "
                    "be fed to the ONNX model as one float matrix; encode them as numbers"
                ) from None
        values.append(cats.astype(np.float64))
    return np.concatenate([cat_cols, num_cols]), values + [None] * len(num_cols)


def hgb_forest(est: Any) -> Forest:
    """The fitted trees of a HistGradientBoosting model as one tree ensemble of raw scores.

    Mirrors ``_predictor.pyx``: NaN follows ``missing_go_to_left``; a numeric split sends
    ``x <= num_threshold`` left; a categorical split sends codes in ``raw_left_cat_bitsets``
    left, other known codes right and unknown codes where missing values go. The set test
    (BRANCH_MEMBER) is ai.onnx.ml opset 5, which skl2onnx 1.20 refuses to write, so a
    categorical split becomes a chain of BRANCH_EQ nodes sharing one child (onnxmltools
    writes LightGBM's the same way): over the codes that go right when missing values go
    left, else over the left codes, so that NaN and unknown values fall through to the
    missing-value side."""
    columns, categories = _hgb_columns(est)
    k = int(est.n_trees_per_iteration_)
    forest = Forest(n_targets=k, base=np.asarray(est._baseline_prediction).ravel())
    known, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    for iteration, predictors in enumerate(est._predictors):
        for target, predictor in enumerate(predictors):
            tree = iteration * k + target
            nodes = predictor.nodes
            next_id = len(nodes)
            for i, node in enumerate(nodes):
                if node["is_leaf"]:
                    forest.leaf(tree, i, target, float(node["value"]))
                    continue
                f = int(node["feature_idx"])
                left, right = int(node["left"]), int(node["right"])
                missing_left = int(node["missing_go_to_left"])
                if not node["is_categorical"]:
                    threshold = float(node["num_threshold"])
                    row = (tree, i, int(columns[f]), "BRANCH_LEQ", threshold, left, right)
                    forest.nodes.append((*row, missing_left))
                    continue
                left_codes = _bitset_codes(predictor.raw_left_cat_bitsets[node["bitset_idx"]])
                if missing_left:
                    known_codes = _bitset_codes(known[f_idx_map[f]])
                    members, hit, miss = np.setdiff1d(known_codes, left_codes), right, left
                else:
                    members, hit, miss = left_codes, left, right
                raw = categories[f]
                values = [float(raw[c]) if raw is not None else float(c) for c in members]
                values = values or [float("nan")]  # an empty set: NaN equals nothing
                ids = [i, *range(next_id, next_id + len(values) - 1)]
                next_id += len(values) - 1
                for j, value in enumerate(values):
                    after = ids[j + 1] if j + 1 < len(ids) else miss
                    row = (tree, ids[j], int(columns[f]), "BRANCH_EQ", value, hit, after)
                    forest.nodes.append((*row, 0))
    return forest


def _convert_hgb(scope: Any, operator: Any, container: Any) -> None:
    """Raw scores from the tree ensemble, then what ``predict``/``predict_proba`` do with them:
    the loss's inverse link (sigmoid for binary, softmax for multiclass, exp for log-link
    regressors), and labels from the raw scores (``raw > 0``, or argmax)."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.common.utils_classifier import get_label_classes  # honours option nocl

    est = operator.raw_operator
    forest = hgb_forest(est)

    def emit(op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or scope.get_unique_variable_name(op.lower())
        name = scope.get_unique_operator_name(op)
        version = ML_OPSET if attrs.get("op_domain") == "ai.onnx.ml" else None
        container.add_node(op, inputs, [output], name=name, op_version=version, **attrs)
        return output

    as_double = emit("Cast", [operator.inputs[0].full_name], to=TensorProto.DOUBLE)
    # opset 3 sums in float64 here but returns float32 (its only output type): raw scores
    # then carry float32 rounding, 1e-7 relative, well inside the 1e-5 asked of probabilities
    trees = forest.attributes()
    raw = emit("TreeEnsembleRegressor", [as_double], None, op_domain="ai.onnx.ml", **trees)
    out = operator.outputs[-1]
    dtype = TensorProto.DOUBLE if isinstance(out.type, DoubleTensorType) else TensorProto.FLOAT
    scores = emit("Cast", [raw], to=dtype)
    if not hasattr(est, "classes_"):
        link = type(getattr(getattr(est, "_loss", None), "link", None)).__name__
        if link not in ("IdentityLink", "LogLink"):
            raise ValueError(f"nimbleml cannot convert a HistGradientBoostingRegressor {link}")
        emit("Identity" if link == "IdentityLink" else "Exp", [scores], out.full_name)
        return
    if forest.n_targets == 1:
        p = emit("Sigmoid", [scores])
        real = np.float64 if dtype == TensorProto.DOUBLE else np.float32
        one = _const(scope, container, np.array([1.0], real))
        emit("Concat", [emit("Sub", [one, p]), p], out.full_name, axis=1)
        zero = _const(scope, container, np.array([0.0], np.float32))
        positive = emit("Greater", [raw, zero])
        flat = _const(scope, container, np.array([-1], np.int64))
        index = emit("Reshape", [emit("Cast", [positive], to=TensorProto.INT64), flat])
    else:
        emit("Softmax", [scores], out.full_name, axis=1)
        index = emit("ArgMax", [raw], axis=1, keepdims=0)
    classes = _const(scope, container, _class_labels(get_label_classes(scope, est)))
    emit("Gather", [classes, index], operator.outputs[0].full_name, axis=0)


def _class_labels(classes: np.ndarray) -> np.ndarray:
    """Labels as skl2onnx types them: int64 for numbers (integral floats too), else strings."""
    classes = np.asarray(classes)
    if classes.dtype == np.bool_ or np.issubdtype(classes.dtype, np.integer):
        return classes.astype(np.int64)
    if np.issubdtype(classes.dtype, np.floating):
        if not np.all(classes == np.round(classes)):
            raise ValueError(f"class labels {classes.tolist()} are not integers or strings")
        return classes.astype(np.int64)
    return np.array([str(c) for c in classes], dtype=object)


def _const(scope: Any, container: Any, value: np.ndarray) -> str:
    from onnx import TensorProto, helper

    name = scope.get_unique_variable_name("const")
    if value.dtype == object:
        data = [str(v).encode("utf-8") for v in value]
        container.add_initializer(name, TensorProto.STRING, list(value.shape), data)
    else:
        onnx_type = helper.np_dtype_to_tensor_dtype(value.dtype)
        container.add_initializer(name, onnx_type, list(value.shape), value.ravel().tolist())
    return name


def _convert_scaler(scope: Any, operator: Any, container: Any) -> None:
    """``(x - mean) / scale`` as scikit-learn 1.9 computes it: in the data's own precision
    (float32 data: mean and scale cast to float32 first). skl2onnx's Scaler node multiplies by
    ``1 / scale`` instead, one float32 step off on ~42% of values, and a tree that splits
    exactly on data values (XGBoost) then sends some rows down the other branch."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType

    est = operator.raw_operator
    double = isinstance(operator.outputs[0].type, DoubleTensorType)
    real, to = (np.float64, TensorProto.DOUBLE) if double else (np.float32, TensorProto.FLOAT)

    def node(op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or scope.get_unique_variable_name(op.lower())
        name = scope.get_unique_operator_name(op)
        # the oldest version with today's semantics, so the graph needs no newer opset
        version = {"Sub": 14, "Div": 14}.get(op, 13)
        container.add_node(op, inputs, [output], name=name, op_version=version, **attrs)
        return output

    x = node("Cast", [operator.inputs[0].full_name], to=to)
    if est.with_mean:
        x = node("Sub", [x, _const(scope, container, np.asarray(est.mean_, real))])
    if est.with_std:
        x = node("Div", [x, _const(scope, container, np.asarray(est.scale_, real))])
    node("Identity", [x], operator.outputs[0].full_name)


def _register_sklearn() -> None:
    if "sklearn" in _REGISTERED:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from skl2onnx.shape_calculators.scaler import calculate_sklearn_scaler_output_shapes
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.preprocessing import StandardScaler

    update_registered_converter(
        StandardScaler, "SklearnScaler", calculate_sklearn_scaler_output_shapes, _convert_scaler
    )
    from .sklearn_imputer import register as register_imputer

    register_imputer(update_registered_converter)

    update_registered_converter(
        HistGradientBoostingClassifier,
        "SklearnHistGradientBoostingClassifier",
        calculate_linear_classifier_output_shapes,
        _convert_hgb,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )
    update_registered_converter(
        HistGradientBoostingRegressor,
        "SklearnHistGradientBoostingRegressor",
        calculate_linear_regressor_output_shapes,
        _convert_hgb,
    )
    _REGISTERED.add("sklearn")
