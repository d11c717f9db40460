"""Chat prompts for the three inference modes: `direct`, `cot` (reason, then code) and `planner-coder`.

Each builder returns a list of `{"role", "content"}` messages that a tokenizer's chat template renders (written for
Qwen2.5-Instruct, whose template takes a system message). The planner turns a problem into a plan; the coder turns
problem + plan into a program. Every answer that holds code is asked for in one ```python block, which is what
`eval.extract.extract_program` takes. Sampling and few-shot examples are deliberately not here.
"""

from __future__ import annotations

from eval.problems import Problem

MODES = ("direct", "cot", "planner-coder")

CODER_SYSTEM = "You are an expert Python programmer. You write correct, efficient and readable code."
PLANNER_SYSTEM = (
    "You are an expert algorithm designer. You read a programming problem and write a clear plan for solving it; "
    "a programmer will turn your plan into code."
)


def interface(problem: Problem) -> str:
    """One sentence on how the program is run: a named function, or a script on standard input and output."""
    if problem.tests and all(t.type == "stdio" for t in problem.tests):
        return "The program reads from standard input and writes to standard output."
    if problem.entry_point:
        return f"The program must define the function `{problem.entry_point}`."
    return "The program must define the function the problem asks for."


def _statement(problem: Problem) -> str:
    return f"{problem.prompt.strip()}\n\n{interface(problem)}"


def _answer_format() -> str:
    return "Give the complete program, with the imports it needs, in one ```python code block."


def direct_messages(problem: Problem) -> list[dict[str, str]]:
    """Ask for the program straight away."""
    user = f"{_statement(problem)}\n\n{_answer_format()} Do not explain it."
    return [{"role": "system", "content": CODER_SYSTEM}, {"role": "user", "content": user}]


def cot_messages(problem: Problem) -> list[dict[str, str]]:
    """Ask for brief step-by-step reasoning, then the program."""
    user = (f"{_statement(problem)}\n\nFirst think step by step: restate the task, choose an algorithm and check it "
            f"on the examples and edge cases. Then write the code. {_answer_format()}")
    return [{"role": "system", "content": CODER_SYSTEM}, {"role": "user", "content": user}]


def planner_messages(problem: Problem, compact: bool = False) -> list[dict[str, str]]:
    """Ask the Planner for a numbered plan, and no code. `compact`: the embedded default's wording (no system
    message, a one-line request), since a tiny model trained from scratch pays for every prompt token."""
    if compact:
        return [{"role": "user", "content": f"{_statement(problem)}\nWrite a plan."}]
    user = (f"{_statement(problem)}\n\nWrite a short numbered plan for solving this problem: the algorithm, the data "
            "structures, and the edge cases to handle. Do not write code.")
    return [{"role": "system", "content": PLANNER_SYSTEM}, {"role": "user", "content": user}]


def coder_messages(problem: Problem, plan: str, compact: bool = False) -> list[dict[str, str]]:
    """Ask the Coder for the program that implements the Planner's plan (`compact` as for `planner_messages`)."""
    if compact:
        return [{"role": "user", "content": f"{_statement(problem)}\nPlan:\n{plan.strip()}\nWrite the code."}]
    user = f"{_statement(problem)}\n\nPlan:\n{plan.strip()}\n\nImplement this plan. {_answer_format()}"
    return [{"role": "system", "content": CODER_SYSTEM}, {"role": "user", "content": user}]
