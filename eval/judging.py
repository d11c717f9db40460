"""From model completions to judgements, for every caller: `algoforge score`, the Planner->Coder loop, GRPO.

    program = program_for(problem, completion)                  # the code to run ("" -> NO_CODE)
    judgements = judge_samples(sandbox, samples, on_batch=save)  # in batches; `save` sees each as it completes

No files, flags or progress bars here (`eval/score.py` adds those); the sandbox is the caller's, so one pool of
warm workers serves a whole training run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from eval.extract import extract_program
from eval.problems import Judgement, Problem

if TYPE_CHECKING:  # imported by whoever makes the sandbox
    from eval.sandbox import Sandbox

BATCH = 256  # samples judged between two `on_batch` calls


@dataclasses.dataclass(frozen=True)
class Sample:
    problem: Problem
    sample_index: int  # position among the samples of its task, in file order
    program: str  # "" when the completion holds no code (the sandbox answers NO_CODE)

    @property
    def key(self) -> tuple[str, int]:
        return (self.problem.task_id, self.sample_index)


def program_for(problem: Problem, completion: str) -> str:
    """The program to run: the extracted code, behind the given prefix of completion tasks (LiveBench)."""
    program = extract_program(completion) or ""
    prefix = problem.metadata.get("partial_solution", "")
    if program and prefix and not program.startswith(prefix):
        program = f"{prefix}\n{program}"
    return program


def judge_samples(sandbox: Sandbox, samples: Sequence[Sample], *, batch: int = BATCH,
                  on_batch: Callable[[Sequence[Sample], list[Judgement]], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> list[Judgement]:
    """One Judgement per sample, in order, judged `batch` at a time; `on_batch(samples, judgements)` after each
    batch (say, to append results to a file, so a crash loses at most one batch)."""
    judgements: list[Judgement] = []
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        found = sandbox.judge([(s.problem, s.program) for s in chunk], progress=progress)
        if on_batch:
            on_batch(chunk, found)
        judgements.extend(found)
    return judgements


def result_line(sample: Sample, judgement: Judgement) -> dict[str, Any]:
    """One results line, with exactly the SPEC's fields."""
    return {
        "task_id": sample.problem.task_id, "sample_index": sample.sample_index,
        "verdict": judgement.verdict.value, "passed": judgement.passed,
        "tests": [t.to_json() for t in judgement.tests],
        "time_s": judgement.time_s, "peak_mem_mb": judgement.peak_mem_mb,
    }
