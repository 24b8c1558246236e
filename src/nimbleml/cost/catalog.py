"""The price catalog: instances with their vCPUs, memory, accelerator and USD/hour, each row
with its source and date.

The catalog shipped with nimbleml (``prices.csv`` beside this module) is a dated snapshot of
the providers' published list prices, not a quote: prices change, so its age is printed with
every estimate and one older than :data:`STALE_DAYS` days warns. ``load_catalog(path)`` reads
a CSV of the same columns in its place (lines starting with ``#`` are comments).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError

STALE_DAYS = 180
COLUMNS = (
    "instance", "cloud", "region", "vcpus", "memory_gib", "accelerator",
    "on_demand_usd_hour", "spot_usd_hour", "source", "date",
)  # fmt: skip
OPTIONAL = ("arch", "cpu")  # x86_64 and "" when a CSV leaves them out
BUILT_IN = "nimbleml built-in catalog"
# GPU classes by the name nvidia-smi or a price page gives them; longest first (A10G before
# A10, L40S before L4), matched as whole words
GPU_CLASSES = ("A100", "H100", "H200", "A10G", "A10", "L40S", "L4", "T4", "V100", "P100", "K80")
_GPU = re.compile(r"\b(" + "|".join(GPU_CLASSES) + r")\b", re.IGNORECASE)
_COUNT = re.compile(r"^\s*(\d+)\s*x\s*(.+)$", re.IGNORECASE)


def gpu_class(name: str) -> str | None:
    """'Tesla T4' -> 'T4', 'NVIDIA A100-SXM4-40GB' -> 'A100'; None for an unknown GPU."""
    found = _GPU.search(name or "")
    return found.group(1).upper() if found else None


@dataclass(frozen=True)
class Instance:
    """One row of the catalog."""

    name: str
    cloud: str
    region: str
    vcpus: int
    memory_gib: float
    accelerator: str  # "" for none, else "1x NVIDIA T4"
    arch: str  # x86_64 or arm64
    cpu: str
    on_demand: float  # USD per hour
    spot: float | None  # USD per hour; None where the catalog has no spot price
    source: str
    date: _dt.date

    @property
    def gpus(self) -> int:
        if not self.accelerator:
            return 0
        found = _COUNT.match(self.accelerator)
        return int(found.group(1)) if found else 1

    @property
    def gpu_class(self) -> str | None:
        return gpu_class(self.accelerator) if self.accelerator else None

    @property
    def spot_saving(self) -> float | None:
        """Share of the on-demand price spot saves (0.6 = 60% less)."""
        return None if self.spot is None else 1 - self.spot / self.on_demand


@dataclass(frozen=True)
class Catalog:
    instances: tuple[Instance, ...]
    source: str  # BUILT_IN or the CSV's path

    @property
    def clouds(self) -> tuple[str, ...]:
        return tuple(sorted({i.cloud for i in self.instances}))

    @property
    def date(self) -> _dt.date:
        """The oldest row's date: the catalog is as old as its oldest price."""
        return min(i.date for i in self.instances)

    def age_days(self, today: _dt.date | None = None) -> int:
        return ((today or _dt.date.today()) - self.date).days

    def age_warning(self, today: _dt.date | None = None) -> str | None:
        age = self.age_days(today)
        if age <= STALE_DAYS:
            return None
        return (
            f"the price catalog ({self.source}) is {age} days old (dated {self.date}); prices "
            f"change: pass --prices FILE.csv with current ones (older than {STALE_DAYS} days warns)"
        )

    def regions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i in self.instances:
            if i.region not in out.setdefault(i.cloud, []):
                out[i.cloud].append(i.region)
        return out

    def select(self, clouds: tuple[str, ...] | None) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if clouds is None or i.cloud in clouds)

    def get(self, name: str) -> Instance:
        for i in self.instances:
            if i.name.lower() == name.lower():
                return i
        raise ConfigError(
            f"instance {name!r} is not in the price catalog ({self.source}); it has: "
            f"{', '.join(i.name for i in self.instances)}"
        )

    def check_clouds(self, clouds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [c for c in clouds if c not in self.clouds]
        if unknown:
            raise ConfigError(
                f"unknown cloud {', '.join(map(repr, unknown))}: choose from "
                f"{', '.join(self.clouds)} (the clouds of {self.source})"
            )
        return clouds


def load_catalog(path: str | Path | None = None) -> Catalog:
    """The built-in catalog, or the CSV at ``path`` (the same columns; see COLUMNS)."""
    if path is None:
        from importlib import resources

        text = (resources.files(__package__) / "prices.csv").read_text()
        return _parse(text, BUILT_IN)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"price catalog not found: {file} (--prices takes a CSV file)")
    try:
        text = file.read_text()
    except UnicodeDecodeError:
        raise DataError(f"price catalog {file} is not a text (CSV) file") from None
    return _parse(text, str(file))


def _parse(text: str, source: str) -> Catalog:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(io.StringIO("\n".join(lines)))
    header = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    if len(missing) == len(COLUMNS):
        raise DataError(
            f"price catalog {source} has none of the columns a catalog needs: "
            f"{', '.join(COLUMNS)} (and optionally {', '.join(OPTIONAL)})"
        )
    if missing:
        raise DataError(
            f"price catalog {source} lacks the column(s) {', '.join(missing)}; a catalog has "
            f"{', '.join(COLUMNS)} (and optionally {', '.join(OPTIONAL)})"
        )
    rows = []
    for number, raw in enumerate(reader, 2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        rows.append(_instance(row, f"price catalog {source}, row {number} ({row['instance']})"))
    if not rows:
        raise DataError(f"price catalog {source} has no rows")
    names = [r.name.lower() for r in rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"price catalog {source} lists {', '.join(twice)} more than once")
    return Catalog(tuple(rows), source)


def _instance(row: dict[str, str], where: str) -> Instance:
    def number(key: str, allow_empty: bool = False) -> float | None:
        value = row[key]
        if allow_empty and value == "":
            return None
        try:
            out = float(value)
        except ValueError:
            out = -1.0
        if not out > 0:
            raise DataError(f"{where}: {key} must be a number > 0, got {value!r}")
        return out

    try:
        date = _dt.date.fromisoformat(row["date"])
    except ValueError:
        raise DataError(f"{where}: date must be YYYY-MM-DD, got {row['date']!r}") from None
    if not row["instance"] or not row["cloud"]:
        raise DataError(f"{where}: instance and cloud must not be empty")
    vcpus = number("vcpus")
    assert vcpus is not None
    if vcpus != int(vcpus):
        raise DataError(f"{where}: vcpus must be a whole number, got {row['vcpus']!r}")
    arch = row.get("arch") or "x86_64"
    if arch not in ("x86_64", "arm64"):
        raise DataError(f"{where}: arch must be x86_64 or arm64, got {arch!r}")
    return Instance(
        name=row["instance"], cloud=row["cloud"].lower(), region=row["region"],
        vcpus=int(vcpus), memory_gib=number("memory_gib") or 0.0,
        accelerator=row["accelerator"], arch=arch, cpu=row.get("cpu", ""),
        on_demand=number("on_demand_usd_hour") or 0.0,
        spot=number("spot_usd_hour", allow_empty=True), source=row["source"], date=date,
    )  # fmt: skip
