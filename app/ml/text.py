"""Text that users send: what Candor accepts and how messages quote it.

Names, ids and paths end up in PostgreSQL and in JSON answers. PostgreSQL stores no NUL character
in text or JSON, and a lone surrogate (half of a UTF-16 pair, e.g. the JSON escape ``"\\ud800"``)
cannot be encoded as UTF-8 at all, so both are refused where the text comes in, with a message
naming the field. :func:`show` quotes user text for messages without echoing characters that
would break the message itself.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator

SHOW_CHARS = 60
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    at = value.find("\x00")
    if at >= 0:
        return f"contains a NUL character (at position {at})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains a lone surrogate (at position {exc.start}); send valid Unicode"
    return None


def _clean(value: str) -> str:
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_clean)]
"""A str that PostgreSQL can store: no NUL character, no lone surrogate (a 422 naming the field)."""


def show(value: object, limit: int = SHOW_CHARS) -> str:
    """``value`` in single quotes for a message: control characters, lone surrogates and other
    unprintable characters as ``\\uXXXX``, cut after ``limit`` characters. Anything but a string
    is named by its JSON type."""
    if not isinstance(value, str):
        return _kind(value)
    cut = len(value) > limit
    out = []
    for ch in value[:limit]:
        if unicodedata.category(ch) in ("Cc", "Cs", "Cn", "Co", "Zl", "Zp"):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + ("…" if cut else "") + "'"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a value of another type"


def plain(message: str) -> str:
    """A library's error message without object addresses (``<_io.BytesIO object at 0x...>``)."""
    return _ADDRESS.sub("the data", message).strip()
