"""Errors shared by the whole package, and one reading of pydantic validation errors.

:class:`DataError` is raised for bad input data. :func:`format_validation_error` turns a
pydantic ``ValidationError`` into the message users see (one line per bad key, each naming
the key); parameters (:mod:`synapse_nb.core.config`), dataset descriptions
(:mod:`synapse_nb.data.description`) and the control panel's form all go through it, so the
three speak the same way.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger(__name__)
_BBOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Longest name :func:`validate_name` accepts (file systems refuse longer folder names).
MAX_NAME_CHARS = 255
#: Problems an error message names one by one; the rest are counted.
MAX_PROBLEMS = 5
#: Characters of a user's value or key quoted in a message.
QUOTE_CHARS = 80
#: Everything ``str.splitlines`` breaks a line at, with the blanks around it.
_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+\s*")
#: What pydantic puts in front of the message of a ``ValueError`` raised by a validator.
_VALUE_ERROR_PREFIX = "Value error, "


class DataError(ValueError):
    """Bad input data; the message names the file, bbox or row and what to fix."""


def validate_name(name: str, what: str = "bbox name") -> str:
    """Reject names that would escape their folder when used as a path component."""
    if not isinstance(name, str) or not _BBOX_NAME.match(name) or ".." in name:
        raise DataError(
            f"invalid {what} {shorten(repr(name))}: use letters, digits, '_', '-' or '.' only (it is used as a folder name)"
        )
    if len(name) > MAX_NAME_CHARS:
        raise DataError(f"invalid {what} {shorten(repr(name))}: {len(name)} characters, at most {MAX_NAME_CHARS} (it is used as a folder name)")
    return name


def shorten(text: Any, limit: int = QUOTE_CHARS, escape: bool = False) -> str:
    """``text`` on one line, cut to ``limit`` characters (``...`` and the full length mark a cut).

    Line breaks become blanks; with ``escape`` (for a user's key or name) every character that
    is not printable is shown as its escape instead (``\\n``, ``\\x85``).
    """
    raw = str(text)
    head = raw[: 2 * limit]
    if escape and not head.isprintable():
        head = repr(head)[1:-1]
    head = _LINE_BREAKS.sub(" ", head).strip()
    if len(raw) <= limit:
        return head
    return f"{head[:limit]}... ({len(raw):,} characters)"


def bounded(lines: list[str], limit: int = MAX_PROBLEMS, what: str = "problem(s)") -> list[str]:
    """The first ``limit`` of ``lines`` and, when there are more, a line counting the rest."""
    if len(lines) <= limit:
        return list(lines)
    return [*lines[:limit], f"... and {len(lines) - limit:,} more {what}"]


@dataclass(frozen=True)
class Problem:
    """One entry of a pydantic ``ValidationError``, in our words."""

    key: str
    """Dotted location (``"bboxes.block1.raw.kee"``); empty for a check of the whole model."""
    kind: str
    """pydantic's error type: ``"extra_forbidden"``, ``"missing"``, ``"less_than_equal"`` ..."""
    message: str
    """pydantic's message, without the ``"Value error, "`` prefix of a validator's ValueError."""
    value: Any
    """The rejected input."""

    @property
    def field(self) -> str:
        """The top-level key the problem belongs to ("" for the whole model)."""
        return self.key.split(".", 1)[0]

    def line(self, noun: str = "parameter", unknown_hint: str = "") -> str:
        """The problem as one line naming the key, e.g. ``parameter 'alpha': ... (got 2.0)``."""
        if not self.key:
            return shorten(self.message, 4 * QUOTE_CHARS)
        key = shorten(self.key, escape=True)
        if self.kind == "extra_forbidden":
            return f"unknown {noun} '{key}'" + (f"; {unknown_hint}" if unknown_hint else "")
        if self.kind == "missing":
            return f"missing {noun} '{key}'"
        return f"{noun} '{key}': {shorten(self.message, 4 * QUOTE_CHARS)} (got {shorten(repr(self.value))})"


def validation_problems(exc: ValidationError) -> list[Problem]:
    """Every entry of ``exc`` as a :class:`Problem`, in pydantic's order."""
    return [
        Problem(
            key=".".join(str(p) for p in err["loc"]),
            kind=err["type"],
            message=err["msg"].removeprefix(_VALUE_ERROR_PREFIX),
            value=err.get("input"),
        )
        for err in exc.errors()
    ]


def format_validation_error(exc: ValidationError, heading: str, noun: str = "parameter", unknown_hint: str = "") -> str:
    """``heading:`` followed by one indented line per problem of ``exc`` (see :meth:`Problem.line`).

    Bad values come before unknown keys; the first :data:`MAX_PROBLEMS` are named and the
    rest counted, so a file with a million bad keys still gives a short message. ``noun`` is
    what the keys are called ("parameter", "key"); ``unknown_hint`` tells where the valid keys
    are listed and is given once, after the problems, when a key is unknown.
    """
    problems = sorted(validation_problems(exc), key=lambda p: p.kind == "extra_forbidden")
    lines = bounded([p.line(noun) for p in problems])
    if unknown_hint and any(p.kind == "extra_forbidden" for p in problems):
        lines.append(unknown_hint)
    return f"{heading}:\n  " + "\n  ".join(lines)
