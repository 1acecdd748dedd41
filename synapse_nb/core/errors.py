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
#: What pydantic puts in front of the message of a ``ValueError`` raised by a validator.
_VALUE_ERROR_PREFIX = "Value error, "


class DataError(ValueError):
    """Bad input data; the message names the file, bbox or row and what to fix."""


def validate_name(name: str, what: str = "bbox name") -> str:
    """Reject names that would escape their folder when used as a path component."""
    if not isinstance(name, str) or not _BBOX_NAME.match(name) or ".." in name:
        raise DataError(
            f"invalid {what} {name!r}: use letters, digits, '_', '-' or '.' only (it is used as a folder name)"
        )
    return name


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
            return self.message
        if self.kind == "extra_forbidden":
            return f"unknown {noun} '{self.key}'" + (f"; {unknown_hint}" if unknown_hint else "")
        if self.kind == "missing":
            return f"missing {noun} '{self.key}'"
        return f"{noun} '{self.key}': {self.message} (got {self.value!r})"


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

    ``noun`` is what the keys are called ("parameter", "key"); ``unknown_hint`` follows the
    name of an unknown key and tells where the valid keys are listed.
    """
    lines = [p.line(noun, unknown_hint) for p in validation_problems(exc)]
    return f"{heading}:\n  " + "\n  ".join(lines)
