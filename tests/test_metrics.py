import numpy as np
import pytest
from sklearn import metrics as skm

from nimbleml.errors import AccuracyBudgetError
from nimbleml.metrics import evaluate, resolve


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 4, 50)
    return logits, y


def test_label_metrics_match_scikit_learn(scores):
    logits, y = scores
    pred = logits.argmax(1)
    assert evaluate(resolve("accuracy", None), [logits], y, None, None) == pytest.approx(
        skm.accuracy_score(y, pred)
    )
    assert evaluate(resolve("f1", None), [logits], y, None, None) == pytest.approx(
        skm.f1_score(y, pred, average="macro")
    )


def test_value_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y, p = rng.normal(size=40), rng.normal(size=(40, 1)).astype(np.float32)
    for name, fn in (
        ("mse", skm.mean_squared_error),
        ("mae", skm.mean_absolute_error),
        ("r2", skm.r2_score),
    ):
        assert evaluate(resolve(name, None), [p], y, None, "regression") == pytest.approx(
            fn(y, p[:, 0]), rel=1e-5
        )
    assert resolve("mse", None).drop(1.0, 1.5) == pytest.approx(0.5)
    assert resolve("accuracy", None).drop(0.9, 0.8) == pytest.approx(0.1)


def test_reference_metrics_need_no_labels(scores):
    logits, _ = scores
    assert evaluate(resolve("cosine", None), [logits], None, [logits], None) == pytest.approx(1.0)
    assert evaluate(resolve("agreement", None), [logits[:, ::-1]], None, [logits], None) < 0.5


def test_callable_metric_gets_labels_for_integer_targets(scores):
    logits, y = scores
    seen = {}

    def my_metric(y_true, y_pred):
        seen["pred"] = y_pred
        return 0.5

    assert evaluate(resolve(my_metric, None), [logits], y, None, None) == 0.5
    assert np.array_equal(seen["pred"], logits.argmax(1))


def test_metric_errors_say_what_to_do(scores):
    logits, _ = scores
    with pytest.raises(AccuracyBudgetError, match="choose one of: accuracy"):
        resolve("acc", None)
    with pytest.raises(AccuracyBudgetError, match="needs labels"):
        evaluate(resolve("accuracy", None), [logits], None, None, None)
    with pytest.raises(AccuracyBudgetError, match="rows"):
        evaluate(resolve("accuracy", None), [logits], np.zeros(3), None, None)


def test_default_metric_by_task():
    assert resolve(None, "classification").name == "accuracy"
    assert resolve(None, "regression").name == "r2"
    assert resolve(None, None).name == "cosine"


def test_value_metrics_on_class_scores_and_string_labels_say_what_is_wrong():
    """`--metric mse` on a classifier was a numpy reshape error; string labels against class
    indices gave accuracy 0.0 with no word (issue 11, item 4)."""
    import pytest

    from nimbleml.errors import AccuracyBudgetError
    from nimbleml.metrics import evaluate, resolve

    scores = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    y = np.array([0, 1, 2, 2])
    with pytest.raises(AccuracyBudgetError, match="3 scores per row for 1 target"):
        evaluate(resolve("mse", None), [scores], y, None, "classification")
    as_text = np.array(["0", "1", "2", "2"])
    assert evaluate(resolve("accuracy", None), [scores], as_text, None, None) == 0.75
    with pytest.raises(AccuracyBudgetError, match="labels are strings"):
        evaluate(resolve("accuracy", None), [scores], np.array(["a", "b", "c", "c"]), None, None)
    labels = np.array(["cat", "dog", "dog", "cat"], dtype=object)  # a classifier's own labels
    assert evaluate(resolve("accuracy", None), [labels], labels.astype(str), None, None) == 1.0
