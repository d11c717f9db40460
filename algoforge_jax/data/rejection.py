"""Rejection sampling's bookkeeping for `algoforge build-data`: what a chunk of problems produced, which plans are
kept, the datasets' rows and the summary. Plain data in and out; no model and no sandbox here.

A chunk record is the JSON of one rollout over a chunk of problems: for each problem its statement, entry point
and every sampled plan with every program written from it and that program's verdict. Records are written
atomically to `D/chunks/chunk-<k>.json`, one per chunk, so a run killed at any point loses at most the chunks in
flight; `ChunkStore.load` returns a record only when it holds exactly the problems expected of that chunk.

A plan is *passing* when its text is non-empty and one of its programs PASSed. `keep="all"` keeps every distinct
passing plan of a problem (identical plan texts count once), `keep="first"` the first one; each kept plan gives a
Planner row `{task_id, problem, plan}` and a Coder row `{task_id, problem, plan, code}` whose code is the plan's
first passing program (exactly what the sandbox ran).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from eval.problems import Problem, Verdict
from eval.score import write_atomic

KEEP = ("all", "first")


def chunk_record(problems: Sequence[Problem], plans_PGp: np.ndarray, programs_PGpGc: np.ndarray,
                 judgements_PGpGc: np.ndarray) -> dict[str, Any]:
    """One chunk's rollout as JSON-able data (from a `RolloutResult`'s `plans`, `programs`, `judgements`)."""
    return {"task_ids": [p.task_id for p in problems], "problems": [
        {"task_id": p.task_id, "problem": p.prompt, "entry_point": p.entry_point, "plans": [
            {"plan": str(plans_PGp[k, i]), "programs": [
                {"code": str(programs_PGpGc[k, i, j]), "verdict": judgements_PGpGc[k, i, j].verdict.value}
                for j in range(programs_PGpGc.shape[2])]}
            for i in range(plans_PGp.shape[1])]}
        for k, p in enumerate(problems)]}


def passing_plans(problem: dict[str, Any]) -> list[tuple[str, str]]:
    """(plan, its first passing program) for each distinct non-empty plan of a problem record with a PASS, in
    sampled order."""
    out: dict[str, str] = {}
    for plan in problem["plans"]:
        text = plan["plan"].strip()
        code = next((p["code"] for p in plan["programs"] if p["verdict"] == Verdict.PASS.value), None)
        if text and code is not None and text not in out:
            out[text] = code
    return list(out.items())


def kept_rows(records: Sequence[dict[str, Any]], keep: str) -> list[dict[str, Any]]:
    """Coder rows (a superset of Planner rows: `datasets.write_rows` takes each agent's fields) of the kept plans."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    rows = []
    for record in records:
        for problem in record["problems"]:
            kept = passing_plans(problem)[: 1 if keep == "first" else None]
            rows += [{"task_id": problem["task_id"], "problem": problem["problem"], "plan": plan, "code": code,
                      "entry_point": problem["entry_point"]} for plan, code in kept]
    return rows


def summary(records: Sequence[dict[str, Any]], keep: str) -> dict[str, Any]:
    """Per problem: plans and programs tried, programs and plans that passed, rows kept; then the totals and the
    verdict counts over every program tried."""
    per_problem, verdicts = [], Counter()
    for record in records:
        for problem in record["problems"]:
            programs = [p for plan in problem["plans"] for p in plan["programs"]]
            verdicts.update(p["verdict"] for p in programs)
            passing = passing_plans(problem)
            per_problem.append({
                "task_id": problem["task_id"], "plans_tried": len(problem["plans"]),
                "programs_tried": len(programs),
                "programs_passed": sum(p["verdict"] == Verdict.PASS.value for p in programs),
                "plans_passed": len(passing), "kept": min(len(passing), 1) if keep == "first" else len(passing)})
    totals = {k: sum(p[k] for p in per_problem) for k in ("plans_tried", "programs_tried", "programs_passed",
                                                          "plans_passed", "kept")}
    return {"problems": len(per_problem), "problems_kept": sum(p["kept"] > 0 for p in per_problem), **totals,
            "verdicts": dict(sorted(verdicts.items())), "per_problem": per_problem}


class ChunkStore:
    """Chunk records under `root`, one JSON file per chunk, each written atomically."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, k: int) -> Path:
        return self.root / f"chunk-{k:05d}.json"

    def load(self, k: int, task_ids: Sequence[str]) -> dict[str, Any] | None:
        """Chunk k's record if it is there and covers exactly `task_ids` (a chunk cut short by an earlier `--limit`
        covers fewer, and is redone)."""
        path = self.path(k)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # not ours (writes are atomic): redo the chunk rather than trust it
            return None
        return record if isinstance(record, dict) and record.get("task_ids") == list(task_ids) else None

    def save(self, k: int, record: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(k), json.dumps(record))
        return self.path(k)
