"""The wire format for values crossing the trust boundary: tagged JSON that keeps Python's type distinctions.

`encode` runs in the untrusted child and turns whatever the program returned into plain data: exact built-in
types only, read through the base-class methods so that a subclass's `__eq__`, `__iter__` or `__str__` cannot
change what is sent. `decode` runs in the parent and rebuilds plain Python values from that data; whatever bytes
the child wrote, the parent only ever holds ints, floats, strings, containers of those, and two marker types.
Nothing here executes code from the data.

Tags: {"t": [...]} tuple, {"s": [...]} set, {"f": [...]} frozenset, {"d": [[k, v], ...]} dict, {"b": hex} bytes,
{"c": [re, im]} complex, {"I": hex} an int too long for JSON's decimal limit, {"it": [...]} an iterator or other
lazy iterable (never equal to a list), {"nd": [...]} a numpy array, {"o": "TypeName"} anything else.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 200
MAX_ITEMS = 1_000_000
_BIG_INT_BITS = 8000  # below Python's 4300-digit int<->str limit, so json round-trips it


class Iterated(list):
    """The items of an iterator or other lazy iterable the program returned; equal to no literal."""


class NdArray(list):
    """A numpy array's items; like Python, `array == list` is not a plain truth value, so it equals no literal."""


class Opaque(str):
    """An object of a type the wire format does not carry; holds the type's name, equal to nothing."""


# ---------------------------------------------------------------- child side


def encode(value: Any) -> bytes:
    return json.dumps(_plain(value, 0), separators=(",", ":"), allow_nan=True).encode()


def _plain(x: Any, depth: int) -> Any:  # noqa: C901 - a flat type dispatch reads best in one place
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if x is None or x is True or x is False:
        return x
    if isinstance(x, str):
        return str.__str__(x)  # an exact str copy, whatever the subclass overrides
    if isinstance(x, int):
        n = int.__index__(x)
        return n if n.bit_length() < _BIG_INT_BITS else {"I": hex(n)}
    if isinstance(x, float):
        return float.__float__(x)
    if isinstance(x, complex):
        return {"c": [complex.__complex__(x).real, complex.__complex__(x).imag]}
    if isinstance(x, (bytes, bytearray)):
        return {"b": bytes(memoryview(x)).hex()}
    if isinstance(x, list):
        return [_plain(v, depth + 1) for v in list.__iter__(x)]
    if isinstance(x, tuple):
        return {"t": [_plain(v, depth + 1) for v in tuple.__iter__(x)]}
    if isinstance(x, dict):
        return {"d": [[_plain(k, depth + 1), _plain(v, depth + 1)] for k, v in dict.items(x)]}
    if isinstance(x, (set, frozenset)):
        items = [_plain(v, depth + 1) for v in (set.__iter__(x) if isinstance(x, set) else frozenset.__iter__(x))]
        return {"s" if isinstance(x, set) else "f": items}
    return _plain_other(x, depth)


def _plain_other(x: Any, depth: int) -> Any:
    if type(x).__module__ == "numpy" and hasattr(x, "tolist"):
        if getattr(x, "ndim", 0) == 0:
            return _plain(x.item(), depth + 1)
        return {"nd": _plain(x.tolist(), depth + 1)}
    if hasattr(type(x), "__next__") or isinstance(x, (range, map, filter, zip, enumerate, reversed)) or _is_view(x):
        items = []
        for v in x:
            if len(items) >= MAX_ITEMS:
                raise ValueError("iterator too long")
            items.append(_plain(v, depth + 1))
        return {"it": items}
    return {"o": type(x).__name__}


def _is_view(x: Any) -> bool:
    return type(x).__name__ in ("dict_keys", "dict_values", "dict_items")


# ---------------------------------------------------------------- parent side


class WireError(ValueError):
    """The child sent bytes that are not a well-formed value (a forged or truncated channel)."""


def decode(data: bytes) -> Any:
    try:
        return _value(json.loads(data.decode()), 0)
    except (ValueError, TypeError, RecursionError, KeyError) as e:
        raise WireError(f"malformed value from the child: {type(e).__name__}") from None


def _value(x: Any, depth: int) -> Any:
    if depth > MAX_DEPTH + 2:
        raise ValueError("nested too deeply")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [_value(v, depth + 1) for v in x]
    if not isinstance(x, dict) or len(x) != 1:
        raise ValueError("bad tag")
    ((tag, body),) = x.items()
    return _TAGS[tag](body, depth + 1)


def _items(body: Any, depth: int) -> list:
    if not isinstance(body, list):
        raise ValueError("bad body")
    return [_value(v, depth) for v in body]


def _dict(body: Any, depth: int) -> dict:
    pairs = _items(body, depth)
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ValueError("bad dict")
    return {_hashable(k): v for k, v in pairs}


def _hashable(x: Any) -> Any:
    if isinstance(x, list):  # a decoded tuple's items arrive as lists only if forged; refuse them
        raise ValueError("unhashable key")
    hash(x)
    return x


def _complex(body: Any, depth: int) -> complex:
    re_, im = body
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (re_, im)):
        raise ValueError("bad complex")
    return complex(re_, im)


def _big_int(body: Any, depth: int) -> int:
    if not isinstance(body, str) or len(body) > 10_000_000:
        raise ValueError("bad int")
    return int(body, 16)


_TAGS = {
    "t": lambda b, d: tuple(_items(b, d)),
    "s": lambda b, d: {_hashable(v) for v in _items(b, d)},
    "f": lambda b, d: frozenset(_hashable(v) for v in _items(b, d)),
    "d": _dict,
    "b": lambda b, d: bytes.fromhex(b),
    "c": _complex,
    "I": _big_int,
    "it": lambda b, d: Iterated(_items(b, d)),
    "nd": lambda b, d: NdArray(_items(b, d)),
    "o": lambda b, d: Opaque(str(b)),
}

