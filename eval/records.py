"""Reading upstream problem files record by record, with the location every error message names.

`read_records` yields `Record`s from .jsonl(.gz), .json arrays and .parquet files; `Record.get` checks a field's
type and raises `UserError("file:line: field 'x': ...")`. Nothing here knows any benchmark's schema.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import read_jsonl
from eval.problems import Problem, Test

MISSING = object()
OPT_STR = (str, type(None))


class Record:
    """One upstream record plus where it came from, so every error names the file, line and field."""

    def __init__(self, data: Any, where: str):
        self.data, self.where = data, where
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")

    def error(self, field: str, message: str) -> UserError:
        return UserError(f"{self.where}: field {field!r}: {message}")

    def get(self, field: str, kind: type | tuple[type, ...], default: Any = MISSING) -> Any:
        """The field's value, checked to be of `kind`; a missing field is an error unless a default is given."""
        value = self.data.get(field, default)
        if value is MISSING:
            raise self.error(field, "missing")
        if value is default:
            return value
        wrong_bool = isinstance(value, bool) and bool not in _kinds(kind)  # JSON true is no integer
        if wrong_bool or not isinstance(value, kind):
            raise self.error(field, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def json_field(self, field: str, default: Any = MISSING) -> Any:
        """A field that upstream stores as a JSON string (APPS `input_output`, LiveBench test cases)."""
        text = self.get(field, (str, dict, list), default)
        if not isinstance(text, str):
            return text
        try:
            return json.loads(text) if text.strip() else default
        except json.JSONDecodeError as e:
            raise self.error(field, f"not valid JSON ({e.msg})") from None


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {list: "a list", dict: "an object", str: "a string", int: "an integer", float: "a number",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _kinds(kind))


def read_records(path: pathlib.Path) -> Iterator[Record]:
    """Records of a .jsonl(.gz) file (located by line), a .json array (by item) or a .parquet file (by row)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
    elif path.suffix == ".json":
        yield from _json_array_records(path)
    else:
        yield from _jsonl_records(path)


def _jsonl_records(path: pathlib.Path) -> Iterator[Record]:
    for where, data in read_jsonl(path):
        yield Record(data, where)


def _json_array_records(path: pathlib.Path) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path.name}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{path.name}: expected a JSON array of problems, got {type(data).__name__}")
    for i, item in enumerate(data):
        yield Record(item, f"{path.name}: item {i}")


def _parquet_records(path: pathlib.Path) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow); or convert it to .jsonl") from None
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield Record(row, f"{path.name}: row {i}")


def make_problem(rec: Record, **fields: Any) -> Problem:
    """A Problem, turning its validation errors and an empty test list into errors that name the record."""
    if not fields.get("tests"):
        raise rec.error("tests", "the problem has no tests")
    fields["metadata"] = {**fields.get("metadata", {}), "source": rec.where}
    try:
        return Problem(**fields)
    except (TypeError, ValueError) as e:
        raise UserError(f"{rec.where}: {e}") from None


def make_test(rec: Record, field: str, **kwargs: Any) -> Test:
    try:
        return Test(**kwargs)
    except ValueError as e:
        raise rec.error(field, str(e)) from None
