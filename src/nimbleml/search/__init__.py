"""Searches judged on the deployed package: distillation (distill.py, with the teacher's
outputs in teacher.py and the side-by-side report in report.py) and smaller students built
from a teacher (students.py)."""

from .distill import DistillResult, KDLoss, distill
from .report import DistillReport
from .students import shrink

__all__ = ["DistillReport", "DistillResult", "KDLoss", "distill", "shrink"]
