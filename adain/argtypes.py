"""argparse value checkers shared by ``adain-stylize`` and ``adain-server`` (no torch: both start fast), and
their parser's one-line errors (:class:`OneLineParser`).

Each raises ``argparse.ArgumentTypeError`` naming the limit, which argparse reports as
``argument --flag: must be ..., got ...``.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class OneLineParser(argparse.ArgumentParser):
    """An error is one line, ``PROG: error: ... (see --help)``: argparse's usage block (40 lines of the server's
    flags) buried it. A negative number with an exponent (``--alpha -1e-3``) is a value, as ``-0.001`` is: to
    argparse's own pattern it was a flag, and the error "expected one argument"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER  # (argparse's; argument groups made later copy it)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parse(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        what = "whole number" if kind is int else "number"
        raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None


def int_in_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number >= low (and <= high when given)."""

    def check(text: str) -> int:
        value = int(_parse(text, int))
        if value < low or (high is not None and value > high):
            limit = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
        return value

    return check


non_negative_int = int_in_range(0)
positive_int = int_in_range(1)


def _finite(text: str) -> float:
    value = _parse(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def float_in_range(low: float, high: float) -> Callable[[str], float]:
    """A finite number in (low, high]: a size in MiB, which must be above 0 and is bounded by what it feeds."""

    def check(text: str) -> float:
        value = _finite(text)
        if not low < value <= high:
            raise argparse.ArgumentTypeError(f"must be > {low:g} and at most {high:g}, got {text}")
        return value

    return check


def unit_interval(text: str) -> float:
    value = _finite(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def one_of(choices: Sequence[str], normalise: Callable[[str], str] = str.lower) -> Callable[[str], str]:
    """One of ``choices``, compared after ``normalise`` (lower case by default)."""

    def check(text: str) -> str:
        value = normalise(text)
        if value not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return check


def optional_path(text: str) -> Path | None:
    """A path, or None for '' (``--plot ''`` for no plot): ``Path('')`` is ``.``, which is truthy."""
    return Path(text) if text else None
