"""ChatML rendering to token ids with the mask of assistant tokens, and what each agent is shown and must answer.

`render_chat` is the one renderer for every tokenizer: `<|im_start|>role\\ncontent<|im_end|>\\n` per message, a
generation prompt `<|im_start|>assistant\\n`, and the tokenizer's default system message when the conversation has
none (Qwen2.5's template adds one; the embedded default's tokenizer has none). Each content is encoded on its own,
after its role header: that is how the sampler sees an answer (the prompt ends at `assistant\\n` and the model
writes the content from there), and for Qwen2.5 it equals the template's own tokenization because its
pre-tokenizer splits at those newlines anyway (tests/test_chat.py checks it).

Prompts come from `eval.prompts` (`planner_messages`, `coder_messages`; `compact` is the embedded default's short
wording); the Planner answers with the plan, the Coder with the program in one ```python block.
"""

from __future__ import annotations

from typing import Any

from algoforge_jax.tokenizer import Tokenizer
from eval.problems import Problem
from eval.prompts import coder_messages, planner_messages

AGENTS = ("planner", "coder")


def render_chat(tokenizer: Tokenizer, messages: list[dict[str, str]],
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, mask): the ChatML ids of `messages`, and 1 exactly on the tokens of every assistant content and its
    closing `<|im_end|>` (what the model must learn to emit), 0 elsewhere."""
    if tokenizer.default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": tokenizer.default_system}, *messages]
    ids: list[int] = []
    mask: list[int] = []
    for message in messages:
        head = [tokenizer.im_start_id, *tokenizer.encode(message["role"] + "\n")]
        body = [*tokenizer.encode(message["content"]), tokenizer.eos_id]
        tail = tokenizer.encode("\n")
        ids += head + body + tail
        mask += [0] * len(head) + [int(message["role"] == "assistant")] * len(body) + [0] * len(tail)
    if add_generation_prompt:
        head = [tokenizer.im_start_id, *tokenizer.encode("assistant\n")]
        ids += head
        mask += [0] * len(head)
    return ids, mask


def row_problem(row: dict[str, Any]) -> Problem:
    """The problem of a dataset row, as the prompt builders take it (no tests: the prompts only need the text and
    the entry point)."""
    return Problem(str(row["task_id"]), row["problem"], (), entry_point=row.get("entry_point"))


def problem_messages(agent: str, problem: Problem, plan: str | None = None,
                     compact: bool = False) -> list[dict[str, str]]:
    """The prompt `agent` is given for a problem (the Coder's holds the plan)."""
    if agent == "planner":
        return planner_messages(problem, compact)
    if agent == "coder":
        return coder_messages(problem, plan, compact)
    raise ValueError(f"agent must be one of {AGENTS}, got {agent!r}")


def agent_messages(agent: str, row: dict[str, Any], compact: bool = False) -> list[dict[str, str]]:
    """The prompt `agent` is given for a dataset row."""
    return problem_messages(agent, row_problem(row), row.get("plan"), compact)


def prompt_ids(tokenizer: Tokenizer, agent: str, problem: Problem, plan: str | None = None,
               compact: bool = False) -> list[int]:
    """The ids a sampler starts `agent` from: its prompt and the generation prompt, exactly the prefix of the
    training example before the answer."""
    return render_chat(tokenizer, problem_messages(agent, problem, plan, compact), add_generation_prompt=True)[0]


def code_answer(code: str) -> str:
    """The Coder's answer: the program in one ```python block (what eval.extract.extract_program takes)."""
    return f"```python\n{code.rstrip()}\n```"


def agent_answer(agent: str, row: dict[str, Any]) -> str:
    """What `agent` must answer for a dataset row: the plan, or the fenced program."""
    return row["plan"].strip() if agent == "planner" else code_answer(row["code"])


def sft_example(tokenizer: Tokenizer, agent: str, row: dict[str, Any],
                compact: bool = False) -> tuple[list[int], list[int]]:
    """(ids, mask) of one supervised example: the agent's prompt, then its answer, the mask on the answer."""
    messages = [*agent_messages(agent, row, compact), {"role": "assistant", "content": agent_answer(agent, row)}]
    return render_chat(tokenizer, messages)
