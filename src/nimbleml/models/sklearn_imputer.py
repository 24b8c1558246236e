"""SimpleImputer as ``Where(IsNaN(x), statistics, x)`` in the data's own precision.

skl2onnx writes an ``ai.onnx.ml.Imputer`` node, whose fill values are float32 attributes and
for which ONNX Runtime has no double kernel (``NOT_IMPLEMENTED: Imputer(1)``). So a pipeline
imputer -> scaler -> trees over float64 data had no exact path: the float graph rounds the
imputed mean and the scaled values, and a row near a tree threshold goes down the other
branch (issue 22). This converter fills with scikit-learn's own float64 statistics when the
graph is double, so double runs end to end and matches scikit-learn bit for bit; in a float
graph it fills with the statistics cast to float32, as scikit-learn does for float32 data.

Anything it does not cover (string columns, ``add_indicator``, a column dropped because it
was all missing) goes to skl2onnx's own converter.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def convert_simple_imputer(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    est = operator.raw_operator
    out_type = operator.outputs[0].type
    stats = np.asarray(getattr(est, "statistics_", []), dtype=object)
    numeric = isinstance(out_type, DoubleTensorType | FloatTensorType)
    missing = est.missing_values
    plain = (
        numeric
        and not getattr(est, "add_indicator", False)
        and stats.size == len(getattr(est, "statistics_", []))
        and all(isinstance(v, int | float | np.number) for v in stats)
        and not np.isnan(np.asarray(stats, dtype=np.float64)).any()
        and (missing is None or _is_nan(missing) or isinstance(missing, int | float))
    )
    if not plain:
        convert_sklearn_imputer(scope, operator, container)
        return
    double = isinstance(out_type, DoubleTensorType)
    real, to = (np.float64, TensorProto.DOUBLE) if double else (np.float32, TensorProto.FLOAT)

    def node(op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or scope.get_unique_variable_name(op.lower())
        container.add_node(
            op, inputs, [output], name=scope.get_unique_operator_name(op), op_version=13, **attrs
        )
        return output

    def const(value: np.ndarray) -> str:
        from onnx import helper

        name = scope.get_unique_variable_name("const")
        onnx_type = helper.np_dtype_to_tensor_dtype(value.dtype)
        container.add_initializer(name, onnx_type, list(value.shape), value.ravel().tolist())
        return name

    names = [v.full_name for v in operator.inputs]
    x = names[0] if len(names) == 1 else node("Concat", names, axis=1)
    x = node("Cast", [x], to=to)
    if missing is None or _is_nan(missing):
        where = node("IsNaN", [x])
    else:
        where = node("Equal", [x, const(np.array([missing], real))])
    fill = const(np.asarray(est.statistics_, dtype=np.float64).astype(real).reshape(1, -1))
    node("Where", [where, fill, x], operator.outputs[0].full_name)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def register(update_registered_converter: Any) -> None:
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes
    from sklearn.impute import SimpleImputer

    update_registered_converter(
        SimpleImputer, "SklearnImputer", calculate_sklearn_imputer_output_shapes,
        convert_simple_imputer,
    )  # fmt: skip
