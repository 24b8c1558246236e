"""What each stage hands the page: its figures, tables, pictures, artifacts and notes; and the
settings of a full and a ``--quick`` run."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Settings:
    """How big each stage is. ``quick`` runs every stage on smaller settings (for tests and
    CI: about a minute on 2 cores); the full run takes about four."""

    quick: bool
    teacher_hidden: int
    epochs: int
    loader_budget_s: float
    distill_epochs: int
    optimize_budget_s: float
    burst_s: float  # per server, in ``rounds`` alternating rounds
    rounds: int
    concurrency: int
    labels: int  # ground truth sent back for about this many answers
    profile_budget_s: float
    batch_rows: int

    @classmethod
    def of(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, teacher_hidden=256, epochs=4, loader_budget_s=3.0, distill_epochs=4,
                       optimize_budget_s=6.0, burst_s=1.6, rounds=2, concurrency=8, labels=1000,
                       profile_budget_s=0.3, batch_rows=20_000)  # fmt: skip
        return cls(False, teacher_hidden=512, epochs=20, loader_budget_s=8.0, distill_epochs=25,
                   optimize_budget_s=60.0, burst_s=6.0, rounds=4, concurrency=8, labels=5000,
                   profile_budget_s=1.0, batch_rows=500_000)  # fmt: skip


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]


@dataclass
class Stage:
    """One section of the page."""

    key: str
    title: str
    lead: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (what, value)
    tables: list[Table] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (caption, preformatted text)
    images: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)
    links: list[tuple[str, str]] = field(default_factory=list)  # (relative path, what it is)
    notes: list[str] = field(default_factory=list)  # caveats, pictures skipped and why
    cards: list[tuple[str, str]] = field(default_factory=list)  # (value, what) for the top
    seconds: float = 0.0

    def figure(self, what: str, value: Any) -> None:
        self.figures.append((what, str(value)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "title": self.title, "lead": self.lead,
            "figures": dict(self.figures), "images": [p for p, _ in self.images],
            "links": [p for p, _ in self.links], "notes": self.notes,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


@dataclass
class Context:
    """What every stage is given: the folder, the settings, the data, where to print."""

    out: Path
    settings: Settings
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    echo: Callable[[str], None]

    def rel(self, path: Path) -> str:
        """``path`` relative to the demo folder, as the page links it."""
        return Path(path).resolve().relative_to(self.out.resolve()).as_posix()

    def folder(self, name: str) -> Path:
        path = self.out / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def link(self, stage: Stage, path: Path, what: str) -> None:
        if Path(path).exists():
            stage.links.append((self.rel(path), what))

    def image(self, stage: Stage, path: Path, caption: str) -> None:
        if Path(path).is_file():
            stage.images.append((self.rel(path), caption))


@contextmanager
def timed(stage: Stage) -> Iterator[Stage]:
    started = time.perf_counter()
    try:
        yield stage
    finally:
        stage.seconds = time.perf_counter() - started


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"
