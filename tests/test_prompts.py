"""Prompt builders: message structure, the interface sentence, and rendering through the Qwen2.5 chat template."""

import pytest

from algoforge_jax.tokenizer import BUNDLED_QWEN25
from eval.benchmarks import load_benchmark
from eval.problems import Problem
from eval.problems import Test as T  # not named Test, so pytest does not try to collect it
from eval.prompts import coder_messages, cot_messages, direct_messages, interface, planner_messages

CALL = Problem("t", "Write add(a, b).", (T("assert", code="assert add(1, 2) == 3"),), entry_point="add")
STDIO = Problem("s", "Print the sum of two integers.", (T("stdio", input="1 2", output="3"),))


@pytest.mark.parametrize("build", [direct_messages, cot_messages, planner_messages, lambda p: coder_messages(p, "1. add")])
def test_messages_are_system_then_user_with_the_problem(build):
    messages = build(CALL)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert all(isinstance(m["content"], str) and m["content"] for m in messages)
    assert "Write add(a, b)." in messages[1]["content"] and "`add`" in messages[1]["content"]


def test_interface_sentence():
    assert "standard input" in interface(STDIO)
    assert "`add`" in interface(CALL)
    assert "function" in interface(Problem("x", "p", (T("assert", code="assert g()"),)))


def test_planner_asks_for_no_code_and_coder_gets_the_plan():
    plan_user = planner_messages(STDIO)[1]["content"]
    assert "Do not write code" in plan_user and "```python" not in plan_user
    coder_user = coder_messages(STDIO, "  1. read a, b\n2. print a + b  ")[1]["content"]
    assert "Plan:\n1. read a, b\n2. print a + b\n" in coder_user and "```python" in coder_user


def test_direct_and_cot_differ_in_reasoning():
    assert "step by step" in cot_messages(CALL)[1]["content"]
    assert "step by step" not in direct_messages(CALL)[1]["content"]


def test_renders_through_the_bundled_qwen25_chat_template():
    """The messages as the Qwen2.5 tokenizer we ship renders them: our system prompt replaces Qwen's default,
    the turns come out in order and the prompt ends ready for the assistant's answer."""
    from transformers import AutoTokenizer  # (load_tokenizer would also import JAX, for model directories)

    tokenizer = AutoTokenizer.from_pretrained(str(BUNDLED_QWEN25))
    problem = load_benchmark("humaneval")[0]
    for messages in (direct_messages(problem), planner_messages(problem), coder_messages(problem, "1. loop")):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        system, user = messages[0]["content"], messages[1]["content"]
        assert text == (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                        "<|im_start|>assistant\n")
        assert "def has_close_elements" in text and "You are Qwen" not in text
    no_system = tokenizer.apply_chat_template(direct_messages(problem)[1:], tokenize=False)
    assert "You are Qwen" in no_system  # the template's default, which our system message must replace
