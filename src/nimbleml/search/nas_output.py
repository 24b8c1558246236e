"""The architecture search's output folder (issue 22): a search writes ``trial-N.nimble``
packages, ``front.json``/``.txt``/``.png`` and, while it runs, ``.candidates/``. Into a folder
that already holds some, it would keep an earlier search's packages beside its own and
overwrite others of the same number: a folder that is not empty is refused, and ``force``
clears it first, only when everything in it is what a search writes (never a folder holding
anything else: the working folder, a home, a repository)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..errors import ConfigError

WRITTEN = re.compile(r"^(front\.(json|txt|png)|trial-\d+\.nimble|\.candidates)$")


def prepare(
    folder: Path, force: bool, flag: str = "out_dir", force_flag: str = "force=True"
) -> None:
    """Refuse a non-empty ``folder`` unless ``force``; with it, clear the search's files."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is a file; give a folder for the front")
    content = sorted(folder.iterdir())
    if not content:
        return
    names = ", ".join(p.name for p in content[:4]) + (", ..." if len(content) > 4 else "")
    if not force:
        raise ConfigError(
            f"{flag} {folder} is not empty ({names}): an earlier search's packages would mix "
            f"with this one's; give a new or empty folder, or {force_flag} to clear it first"
        )
    foreign = [p.name for p in content if not WRITTEN.match(p.name)]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ConfigError(
            f"{flag} {folder} holds files a search did not write ({shown}): {force_flag} clears "
            "only a search's own output folder; give a new or empty folder"
        )
    for p in content:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
