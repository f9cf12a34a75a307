"""The histogram palettizer: optimal, equal to coremltools' k-means error, and careful with odd tensors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from workers.palettize import histogram_kmeans


def _sse(weight: np.ndarray, lut: np.ndarray, indices: np.ndarray) -> float:
    return float(np.sum((lut[indices].astype(np.float64) - weight.astype(np.float64).reshape(-1)) ** 2))


def _brute_force_sse(weight: np.ndarray, k: int) -> float:
    """Every assignment of elements to k clusters, each cluster at its float16-rounded mean."""
    values = weight.astype(np.float64).reshape(-1)
    best = np.inf
    for labels in itertools.product(range(k), repeat=len(values)):
        labels = np.array(labels)
        centres = np.array([values[labels == c].mean() if (labels == c).any() else 0.0 for c in range(k)])
        best = min(best, float(np.sum((centres.astype(np.float16).astype(np.float64)[labels] - values) ** 2)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_exact_optimum_on_small_cases(seed: int) -> None:
    weight = np.random.RandomState(seed).randn(8).astype(np.float16)
    lut, indices = histogram_kmeans(weight, nbits=1)
    assert _sse(weight, lut, indices) <= _brute_force_sse(weight, 2) * (1 + 1e-3) + 1e-9


@pytest.mark.parametrize("nbits", [1, 2, 4, 6, 8])
def test_error_equals_coremltools_kmeans(nbits: int) -> None:
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    weight = (np.random.RandomState(nbits).randn(40, 30, 3, 3) * 0.05).astype(np.float16)  # 10,800 elements
    lut, indices = histogram_kmeans(weight, nbits)
    theirs_lut, theirs_indices = _get_kmeans_lookup_table_and_weight(nbits, weight)
    theirs = _sse(weight, theirs_lut.reshape(-1).astype(np.float16), theirs_indices.reshape(-1).astype(int))
    assert lut.shape == (2 ** nbits,) and lut.dtype == np.float16
    assert indices.shape == (weight.size,) and indices.dtype == np.uint8 and indices.max() < 2 ** nbits
    assert _sse(weight, lut, indices) <= theirs * 1.0001


def test_constant_tiny_and_few_distinct_tensors() -> None:
    constant = np.full((3, 5), 0.25, dtype=np.float16)
    lut, indices = histogram_kmeans(constant, 6)
    assert lut[indices].tolist() == constant.reshape(-1).tolist()
    few = np.array([0.5, -0.5, 0.5, 0.0, -0.0, 2.0], dtype=np.float16)  # 4 distinct values (+0 == -0)
    lut, indices = histogram_kmeans(few, 6)
    assert _sse(few, lut, indices) == 0.0 and len(set(indices.tolist())) == 4
    single = np.array([3.0], dtype=np.float16)
    lut, indices = histogram_kmeans(single, 2)
    assert lut[indices[0]] == np.float16(3.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_with_a_message(bad: float) -> None:
    weight = np.array([0.1, bad, 0.2], dtype=np.float16)
    with pytest.raises(ValueError, match="NaN or infinite values"):
        histogram_kmeans(weight, 4)


def test_float32_input_is_clustered_as_its_float16_values() -> None:
    weight = np.random.RandomState(3).randn(500).astype(np.float32)
    lut, indices = histogram_kmeans(weight, 4)
    assert _sse(weight.astype(np.float16), lut, indices) <= _sse(weight.astype(np.float16), *histogram_kmeans(
        weight.astype(np.float16), 4))
