import numpy as np
import pytest

from nimbleml.errors import ConversionError
from nimbleml.verify import check, compare_outputs, cosine_rows, variants


def test_compare_outputs_measures_errors_labels_and_cosine():
    ref = np.array([[1.0, 2.0], [3.0, 1.0]], np.float32)
    got = ref + np.array([[0.0, 0.5], [0.0, 0.0]], np.float32)
    a = compare_outputs([ref], [got])
    assert a.max_abs_err == pytest.approx(0.5)
    assert a.max_rel_err == pytest.approx(0.5 / 3)
    assert a.label_agreement == 1.0
    assert 0.99 < a.cosine < 1.0
    flipped = compare_outputs([ref], [ref[:, ::-1].copy()])
    assert flipped.label_agreement == 0.0


def test_integer_outputs_compare_by_equality():
    a = compare_outputs([np.array([1, 2, 3, 4])], [np.array([1, 2, 0, 4])])
    assert a.label_agreement == 0.75


def test_nan_mismatch_is_total_disagreement():
    a = compare_outputs([np.array([[1.0, np.nan]])], [np.array([[1.0, 2.0]])])
    assert a.max_abs_err == float("inf")


def test_cosine_rows_of_identical_zero_rows_is_one():
    z = np.zeros((2, 3))
    assert cosine_rows(z, z) == 1.0


def test_variants_cover_batch_sizes_and_padding():
    feeds = {
        "input_ids": np.ones((20, 10), np.int64),
        "attention_mask": np.ones((20, 10), np.int64),
    }
    cases = dict(variants(feeds))
    assert cases["batch=1"]["input_ids"].shape == (1, 10)
    assert cases["batch=16"]["input_ids"].shape == (16, 10)
    assert cases["seq=5"]["attention_mask"].shape == (4, 5)
    padded = next(v for k, v in cases.items() if "padded" in k)
    assert padded["input_ids"].shape[1] > 10
    assert padded["attention_mask"][:, 10:].sum() == 0


def test_check_refuses_disagreement_and_shows_it():
    feeds = {"x": np.ones((3, 2), np.float32)}

    def original(f):
        return [f["x"] * 2]

    def wrong(f):
        return [f["x"] * 2 + (f["x"].shape[0] > 1)]

    with pytest.raises(ConversionError, match=r"batch=3: max abs err 1"):
        check(original, wrong, variants(feeds))
    report = check(original, original, variants(feeds))
    assert [r["case"] for r in report] == ["batch=1", "batch=3"]


def test_check_reports_a_candidate_that_crashes():
    def boom(f):
        raise RuntimeError("shape mismatch")

    with pytest.raises(ConversionError, match="failed to run: shape mismatch"):
        check(lambda f: [f["x"]], boom, [("b", {"x": np.ones((1, 1))})])
