"""Progress bars on stderr for long work (hidden when stderr is not a terminal)."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

import click

T = TypeVar("T")


def progress(items: Iterable[T], label: str, length: int | None = None):
    """A click progress bar over ``items`` drawn on stderr."""
    return click.progressbar(
        items, length=length, label=label, file=sys.stderr, show_pos=True, show_eta=True
    )
