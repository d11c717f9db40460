"""JSON-lines text: reading with the location (file:line) every error message names, and writing."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from algoforge_jax.errors import UserError


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """Yields ("name:line", value) for every non-blank line of a .jsonl (or .jsonl.gz) file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path.name}:{lineno}: not valid JSON ({e.msg})") from None
            yield f"{path.name}:{lineno}", value


def jsonl_text(rows: Iterable[Any]) -> str:
    """The JSON-lines text of `rows`: one JSON value per line."""
    return "".join(json.dumps(r) + "\n" for r in rows)
