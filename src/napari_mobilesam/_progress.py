"""Helpers for the project's long-work convention: a generator that yields progress and returns its result."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["drive", "relay"]

Y = TypeVar("Y")
Z = TypeVar("Z")
R = TypeVar("R")


def drive(gen: Generator[Y, None, R], on_item: Callable[[Y], object] | None = None) -> R:
    """Run ``gen`` to the end (calling ``on_item`` with each yielded item) and return its return value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_item is not None:
            on_item(item)


def relay(gen: Generator[Y, None, R], convert: Callable[[Y], Z]) -> Generator[Z, None, R]:
    """Yield ``convert(item)`` for each item of ``gen``; return ``gen``'s return value (use with ``yield from``)."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield convert(item)
