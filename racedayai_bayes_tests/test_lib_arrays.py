import numpy as np
import pytest

from racedayai_bayes.lib import arrays


@pytest.mark.parametrize(
    "keys",
    [
        np.random.default_rng(0).integers(0, 50, 10_000),  # counted
        np.random.default_rng(1).integers(0, 10**9, 1_000),  # too wide a range: sorted
        np.random.default_rng(2).integers(-5, 5, 1_000),  # negative keys: sorted
        np.array([7], dtype=np.int32),
        np.array([3, 3, 0, 9, 0], dtype=np.uint16),
        np.array([3, 3, 0, 9, 0], dtype=np.uint64),
        np.array([], dtype=np.int64),
    ],
    ids=["counted", "wide", "negative", "one", "unsigned", "uint64", "empty"],
)
@pytest.mark.parametrize("counts", [False, True])
def test_unique_inverse_equals_numpy(keys, counts):
    got = arrays.unique_inverse(keys, return_counts=counts)
    want = np.unique(keys, return_inverse=True, return_counts=counts)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype or g.dtype.kind == w.dtype.kind
    np.testing.assert_array_equal(got[0][got[1]], keys)  # the keys back from the inverse


def test_the_counted_path_is_taken_for_a_narrow_range(monkeypatch):
    def no_sort(*_a, **_k):
        raise AssertionError("sorted")

    monkeypatch.setattr(arrays.np, "unique", no_sort)
    uniques, inverse = arrays.unique_inverse(np.array([5, 1, 5, 2]))
    np.testing.assert_array_equal(uniques, [1, 2, 5])
    np.testing.assert_array_equal(inverse, [2, 0, 2, 1])
