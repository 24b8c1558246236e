"""Cloud cost from measured figures: cost per hour, per 1M predictions and per training run,
instances for a target rate at a p99 SLA, spot savings, and a right-sizing table (issue 14).

    import nimbleml
    est = nimbleml.estimate_cost("bench/report.json", clouds="aws", rps=2000, spot=True)
    print(est.table())

Figures measured on an instance are labelled measured; figures scaled to other instances are
labelled estimates with the assumption beside them (see estimate.py).
"""

from .catalog import STALE_DAYS, Catalog, Instance, load_catalog
from .estimate import CostEstimate, CostOptions, estimate_cost
from .inputs import Capacity, Machine, TrainingRun, serve_report

__all__ = [
    "STALE_DAYS",
    "Capacity",
    "Catalog",
    "CostEstimate",
    "CostOptions",
    "Instance",
    "Machine",
    "TrainingRun",
    "estimate_cost",
    "load_catalog",
    "serve_report",
]
