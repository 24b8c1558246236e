"""Searches judged on the deployed package: distillation (distill.py, with the teacher's
outputs in teacher.py and the side-by-side report in report.py), smaller students built from
a teacher (students.py) and hyperparameter search with Optuna (study.py; optuna, an extra, is
imported when a study runs)."""

from .distill import DistillResult, KDLoss, distill
from .report import DistillReport
from .students import shrink
from .study import tune

__all__ = ["DistillReport", "DistillResult", "KDLoss", "distill", "shrink", "tune"]
