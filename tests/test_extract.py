"""extract_program: the last fenced Python block, else the whole text; None when there is no code."""

import pytest

from eval.extract import extract_program


def test_last_python_block_wins():
    text = "First try:\n```python\nx = 1\n```\nBetter:\n```python\nx = 2\n```\nDone."
    assert extract_program(text) == "x = 2\n"


@pytest.mark.parametrize("tag", ["python", "py", "Python", "python3", ""])
def test_accepted_tags(tag):
    assert extract_program(f"Here:\n```{tag}\nprint(1)\n```\n") == "print(1)\n"


def test_non_python_blocks_are_skipped_and_do_not_steal_fences():
    text = "```python\na = 1\n```\nOutput:\n```text\n3\n```\nShell:\n```bash\npython a.py\n```\n"
    assert extract_program(text) == "a = 1\n"


def test_closing_fence_of_a_text_block_is_not_an_opening():
    # Pairing fences left to right: a regex that restarted at the text block's closing fence would return "print(1)".
    text = "```text\nsample\n```\nprint(1)\n```python\nx = 2\n```\n"
    assert extract_program(text) == "x = 2\n"


def test_empty_last_block_falls_back_to_the_last_non_empty_one():
    assert extract_program("```python\nx = 1\n```\nand\n```python\n\n```\n") == "x = 1\n"


def test_whole_text_when_no_fence():
    assert extract_program("def f():\n    return 1\n") == "def f():\n    return 1\n"


def test_unclosed_fence_runs_to_the_end():
    assert extract_program("Sure.\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_indented_fences_and_longer_fences():
    assert extract_program("  ```python\n  x = 1\n  ```\n") == "  x = 1\n"
    assert extract_program("````python\ns = '```'\n````\n") == "s = '```'\n"


@pytest.mark.parametrize("text", ["", "   \n\t", "```python\n```", "```python\n   \n```\n"])
def test_empty_is_none(text):
    assert extract_program(text) is None


def test_only_non_python_fence_gives_whole_text():
    text = "```text\nhello\n```"
    assert extract_program(text) == text
