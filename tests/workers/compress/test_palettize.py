"""The histogram palettizer: optimal, equal to coremltools' k-means error, and careful with odd tensors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from workers.compress.palettize import histogram_kmeans


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


def _quadratic_dp_sse(x: np.ndarray, w: np.ndarray, k: int) -> float:
    """Least weighted squared error of sorted x in k contiguous clusters, by the plain O(k·n²) recurrence."""
    n = len(x)

    def cost(a: int, b: int) -> float:
        xs, ws = x[a:b], w[a:b]
        return float(np.sum(ws * (xs - np.average(xs, weights=ws)) ** 2))

    table = np.full((k + 1, n + 1), np.inf)
    table[0, 0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, n + 1):
            table[j, i] = min(table[j - 1, m] + cost(m, i) for m in range(j - 1, i))
    return float(table[k, n])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 7, 16])
def test_solver_matches_the_plain_recurrence(seed: int, k: int) -> None:
    from workers.compress import kmeans1d

    rng = np.random.RandomState(seed)
    x = np.sort(np.unique(np.round(rng.standard_t(3, size=60), 2)))
    w = rng.randint(1, 50, size=len(x)).astype(np.float64)
    if seed == 0:
        w[:] = 1.0  # equal weights make ties between splits
    starts = kmeans1d.solve(x - np.average(x, weights=w), w, k)
    bounds = list(starts) + [len(x)]
    ours = sum(float(np.sum(w[a:b] * (x[a:b] - np.average(x[a:b], weights=w[a:b])) ** 2))
               for a, b in zip(bounds[:-1], bounds[1:]))
    assert list(starts) == sorted(set(starts)) and starts[0] == 0
    assert ours <= _quadratic_dp_sse(x, w, k) * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("nbits", [6, 8])
def test_many_distinct_values_match_coremltools_optimum(nbits: int) -> None:
    """~25,000 distinct values, where coremltools runs its own exact 1-D k-means (kmeans1d)."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    rng = np.random.RandomState(nbits)
    weight = (rng.standard_t(4, size=(320, 320, 3, 3)) * 0.02).astype(np.float16)
    assert len(np.unique(weight)) > 20_000
    lut, indices = histogram_kmeans(weight, nbits)
    theirs_lut, theirs_indices = _get_kmeans_lookup_table_and_weight(nbits, weight)
    theirs = _sse(weight, theirs_lut.reshape(-1).astype(np.float16), theirs_indices.reshape(-1).astype(int))
    assert _sse(weight, lut, indices) <= theirs * 1.0001


def test_package_palettizes_every_matrix_and_keeps_vectors_float16(tmp_path) -> None:
    """coremltools never palettizes rank-1 constants: a 3,000-element bias stays float16 and passes the check."""
    import torch

    from workers.convert.program import convert_module, save_package
    from workers.compress.palettize import palettize_package
    from workers.convert.features import TensorSpec
    from workers.validate.readback import read_package
    from workers.validate.checks import structure_check

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 3000), torch.nn.ReLU(), torch.nn.Linear(3000, 8)).eval()
    inputs, outputs = [TensorSpec("x", (1, 8), "float32", "x")], [TensorSpec("y", (1, 8), "float32", "y")]
    model = convert_module(module, {"x": torch.randn(1, 8)}, inputs, outputs, component="mlp", target="iOS17")
    save_package(model, tmp_path / "mlp.mlpackage")
    save_package(palettize_package(tmp_path / "mlp.mlpackage", bits=4, component="mlp"), tmp_path / "p.mlpackage")
    contents = read_package(tmp_path / "p.mlpackage")
    assert contents.lut_ops == 2 and contents.lut_sizes == {16}
    assert any(v.ndim == 1 and v.size == 3000 and v.dtype == np.float16 for v in contents.weights.values())
    assert structure_check(contents, inputs, outputs, bits=4).status == "passed"


def test_one_thread_and_two_give_the_same_palette_and_the_setting_is_restored() -> None:
    import numba

    from workers.compress.palettize import ONE_THREAD_BELOW

    rng = np.random.default_rng(7)
    small = rng.standard_normal(4096).astype(np.float16)
    large = rng.standard_normal(ONE_THREAD_BELOW + 3).astype(np.float16)  # two threads (histogram, lookup, layers)
    before = numba.get_num_threads()
    answers = []
    for threads in (1, before):
        numba.set_num_threads(threads)
        answers.append([histogram_kmeans(w, 6) for w in (small, large)])
        assert numba.get_num_threads() == threads  # a small tensor's one thread is not left behind
    numba.set_num_threads(before)
    for (lut1, idx1), (lut2, idx2) in zip(*answers):
        assert np.array_equal(lut1, lut2) and np.array_equal(idx1, idx2)
