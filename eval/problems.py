"""The data model shared by loaders, the sandbox and the metrics: problems, tests, verdicts, judgements.

Every benchmark loader turns its upstream format into `Problem`s; the sandbox judges a program against a
`Problem` and returns a `Judgement`. Nothing here runs code.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Verdict(str, enum.Enum):
    """Outcome of one test (and, by the first non-PASS test, of a whole sample), as in the SPEC."""

    PASS = "PASS"
    WA = "WA"  # wrong answer or failed assert
    TLE = "TLE"  # CPU-time or wall-clock limit
    MLE = "MLE"  # memory limit
    OLE = "OLE"  # output limit
    RE = "RE"  # runtime error, or killed by a signal
    CE = "CE"  # does not compile
    NO_CODE = "NO_CODE"  # the completion holds no program
    SANDBOX_ERROR = "SANDBOX_ERROR"  # our fault, never the program's


@dataclasses.dataclass(frozen=True)
class Test:
    """One test. `type` is "assert" (code), "call" (fn_name, args, expected) or "stdio" (input, output)."""

    type: str
    code: str | None = None
    fn_name: str | None = None
    args: tuple[Any, ...] | list[Any] | None = None
    expected: Any = None
    input: str | None = None
    output: str | None = None

    def __post_init__(self):
        required = {"assert": ("code",), "call": ("fn_name", "args"), "stdio": ("input", "output")}
        if self.type not in required:
            raise ValueError(f"test type must be one of {sorted(required)}, got {self.type!r}")
        for name in required[self.type]:
            if getattr(self, name) is None:
                raise ValueError(f"a {self.type!r} test needs the field {name!r}")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A programming problem with its tests, in the SPEC's generic form."""

    task_id: str
    prompt: str
    tests: tuple[Test, ...]
    entry_point: str | None = None
    setup_code: str = ""
    time_limit_s: float = 2.0
    memory_limit_mb: int = 512
    float_tolerance: float = 1e-6
    reference_solution: str | None = None  # upstream's canonical program, when the benchmark ships one
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


@dataclasses.dataclass(frozen=True)
class TestOutcome:
    verdict: Verdict
    time_s: float  # CPU time of the program on this test
    peak_mem_mb: float
    wall_s: float = 0.0
    detail: str = ""  # short human-readable reason (exception line, diff), never used for judging

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.value, "time_s": self.time_s, "peak_mem_mb": self.peak_mem_mb}


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The verdict of one program on one problem: PASS only if every test passed. `tests` holds the outcomes of
    the tests judged, in order: all of them, or up to the first failure when the sandbox stops there (the
    default for scoring); `n_tests` is how many tests the problem has, so `tests_passed / n_tests` is a reward."""

    verdict: Verdict
    tests: tuple[TestOutcome, ...]
    n_tests: int = 0

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    @property
    def tests_passed(self) -> int:
        return sum(t.verdict is Verdict.PASS for t in self.tests)

    @property
    def time_s(self) -> float:
        return sum(t.time_s for t in self.tests)

    @property
    def peak_mem_mb(self) -> float:
        return max((t.peak_mem_mb for t in self.tests), default=0.0)
