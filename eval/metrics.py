"""The numbers reported on judged samples: pass@k, verdict counts, runtime and memory, maintainability.

`summarize` takes result records in the SPEC's results-line form (`task_id`, `verdict`, `passed`, `time_s`,
`peak_mem_mb`), each optionally carrying its `program` text for the maintainability index. It does not judge
anything and does not read files.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from eval.problems import Verdict


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021 for one task: 1 - C(n-c, k) / C(n, k), from n samples with c correct.

    Computed as 1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the huge binomials. Only defined for k <= n.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Sequence[int]) -> dict[str, float]:
    """Task-averaged pass@k from {task_id: (n, c)}, for each k in `ks` that is <= every task's n (others omitted)."""
    if not counts:
        return {}
    min_n = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()]))
        for k in sorted(set(ks))
        if k <= min_n
    }


def maintainability_index(program: str) -> float | None:
    """radon's maintainability index (0-100, higher is easier to maintain); None if the program does not parse."""
    from radon.metrics import mi_visit  # radon is only needed here; keep `import eval.metrics` light

    try:
        with warnings.catch_warnings():  # programs may hold invalid escape sequences; not our business here
            warnings.simplefilter("ignore", SyntaxWarning)
            return float(mi_visit(program, multi=True))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values, to 4 decimals (timings and memory are not more precise than that); None if none."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(values)), 4) if values else None


def task_counts(results: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """{task_id: (samples, passing samples)} of judged samples, tasks in first-seen order."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in results:
        counts[r["task_id"]][0] += 1
        counts[r["task_id"]][1] += bool(r["passed"])
    return {t: (n, c) for t, (n, c) in counts.items()}


def summarize(results: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
    """Summary JSON of judged samples: pass@k (k <= n only), verdict counts, runtime, memory, maintainability."""
    counts = task_counts(results)
    verdicts = collections.Counter(r["verdict"] for r in results)
    passing = [r for r in results if r["passed"]]
    mi = [(maintainability_index(r["program"]), r["passed"]) for r in results if r.get("program")]
    mi_all, mi_pass = [m for m, _ in mi], [m for m, passed in mi if passed]
    n_per_task = [n for n, _ in counts.values()]
    return {
        "n_tasks": len(counts),
        "n_samples": len(results),
        "samples_per_task": {"min": min(n_per_task, default=0), "max": max(n_per_task, default=0)},
        **mean_pass_at_k(counts, ks),
        "verdicts": {v.value: verdicts.get(v.value, 0) for v in Verdict},
        "passing_mean_time_s": _mean(r["time_s"] for r in passing),
        "passing_mean_peak_mem_mb": _mean(r["peak_mem_mb"] for r in passing),
        "maintainability_index": _mean(mi_all),
        "maintainability_index_passing": _mean(mi_pass),
    }
