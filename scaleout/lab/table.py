"""Table columns declared once (a title and how to render a cell from a typed result), and Markdown tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Column(Generic[R]):
    title: str
    cell: Callable[[R], str]


def markdown(titles: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles), *("| " + " | ".join(r) + " |" for r in rows)]


def render(columns: Sequence[Column[R]], items: Sequence[R]) -> list[str]:
    return markdown([c.title for c in columns], [[c.cell(item) for c in columns] for item in items])
