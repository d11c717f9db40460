"""Pull the program out of a model's raw answer, as the SPEC says: the last fenced Python block, else the whole text.

Fences are paired in order (an opening line, then the next fence line closes it), so a ```text block never lends its
closing fence to a Python block. A Python fence left open at the end of the answer (generation hit its length
limit) runs to the end of the text. Nothing here judges whether the program is any good.
"""

from __future__ import annotations

import re

# A fence line: optional indentation, three or more backticks, an optional info string.
_FENCE = re.compile(r"^[ \t]*(`{3,})[ \t]*([\w+.#-]*)[^\n`]*$", re.MULTILINE)
_PYTHON_TAGS = frozenset({"", "python", "py", "python3", "py3"})


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every fenced block, in order; an unclosed last fence runs to the end."""
    blocks, opening = [], None
    for m in _FENCE.finditer(text):
        if opening is None:
            opening = m
        elif not m.group(2) and len(m.group(1)) >= len(opening.group(1)):
            blocks.append((opening.group(2).lower(), text[opening.end() + 1 : m.start()]))
            opening = None
    if opening is not None:
        blocks.append((opening.group(2).lower(), text[opening.end() + 1 :]))
    return blocks


def extract_program(completion: str) -> str | None:
    """The program in `completion`: the last non-blank ```python (```py, untagged) block, else the whole text;
    None if there is no code."""
    python = [body for tag, body in _blocks(completion) if tag in _PYTHON_TAGS]
    if python:  # fenced code wins over prose; all-blank fences mean "no code", not the fence markers as code
        return next((body for body in reversed(python) if body.strip()), None)
    return completion if completion.strip() else None
