"""Metrics: pass@k against its combinatorial definition, k > n handling, verdict counts, runtime and maintainability."""

import itertools
import math

import pytest

from eval.metrics import maintainability_index, mean_pass_at_k, pass_at_k, summarize


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # comb(200, 100) overflows a float; the product form does not.
    expected = 1 - math.comb(150, 100) / math.comb(200, 100)
    assert pass_at_k(200, 50, 100) == pytest.approx(expected, rel=1e-9)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)


def test_pass_at_k_rejects_k_above_n_and_bad_counts():
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_mean_pass_at_k_omits_k_above_smallest_n():
    counts = {"a": (10, 3), "b": (5, 0)}
    out = mean_pass_at_k(counts, (1, 5, 10))
    assert set(out) == {"pass@1", "pass@5"}
    assert out["pass@1"] == pytest.approx((0.3 + 0.0) / 2)


def _result(task, verdict, time_s=0.1, mem=10.0, program=None):
    r = {"task_id": task, "verdict": verdict, "passed": verdict == "PASS", "time_s": time_s, "peak_mem_mb": mem}
    if program is not None:
        r["program"] = program
    return r


def test_summarize_counts_and_means():
    results = [
        _result("t1", "PASS", 0.2, 20.0, "def f(x):\n    return x + 1\n"),
        _result("t1", "WA", 0.5, 50.0, "def f(x):\n    return x\n"),
        _result("t2", "TLE", 2.0, 5.0, "while True: pass\n"),
        _result("t2", "PASS", 0.4, 40.0, "def g():\n    return 2\n"),
        _result("t3", "CE", 0.0, 0.0, "def (:\n"),
        _result("t3", "NO_CODE", 0.0, 0.0),
    ]
    s = summarize(results, ks=(1, 2, 5))
    assert s["n_tasks"] == 3 and s["n_samples"] == 6
    assert s["pass@1"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s["pass@2"] == pytest.approx((1 + 1 + 0) / 3)
    assert "pass@5" not in s
    assert s["verdicts"]["PASS"] == 2 and s["verdicts"]["CE"] == 1 and s["verdicts"]["NO_CODE"] == 1
    assert s["verdicts"]["RE"] == 0 and set(s["verdicts"]) >= {"MLE", "OLE", "SANDBOX_ERROR"}
    assert s["passing_mean_time_s"] == pytest.approx(0.3)
    assert s["passing_mean_peak_mem_mb"] == pytest.approx(30.0)
    mis = [maintainability_index(r["program"]) for r in results[:4]]
    assert s["maintainability_index"] == pytest.approx(sum(mis) / 4, abs=1e-4)  # the CE sample does not count
    assert s["maintainability_index_passing"] == pytest.approx((mis[0] + mis[3]) / 2, abs=1e-4)


def test_summarize_without_passes_has_null_means():
    s = summarize([_result("t", "WA")], ks=(1,))
    assert s["pass@1"] == 0.0 and s["passing_mean_time_s"] is None and s["maintainability_index"] is None


def test_maintainability_index_orders_simple_above_tangled():
    simple = "def add(a, b):\n    return a + b\n"
    tangled = "def f(a):\n" + "".join(f"    if a > {i}:\n        a = a * {i} + {i} - a // {i + 1}\n" for i in range(40))
    assert 0 <= maintainability_index(tangled) < maintainability_index(simple) <= 100
    assert maintainability_index("def (:") is None
