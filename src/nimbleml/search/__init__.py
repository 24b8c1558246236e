"""Searches judged on the deployed package: distillation (distill.py, with the teacher's
outputs in teacher.py and the side-by-side report in report.py), smaller students built from
a teacher (students.py), quantization-aware training (qat.py), hyperparameter search with Optuna (study.py, its trials'
bookkeeping in trials.py; optuna, an extra, is imported when a study runs) and architecture
search on measured package latency (nas.py, its output folder in nas_output.py)."""

from .distill import DistillResult, KDLoss, distill
from .nas import ArchitectureFront, search_architecture
from .qat import QATResult, qat
from .report import DistillReport
from .students import shrink
from .study import tune

__all__ = [
    "ArchitectureFront",
    "DistillReport",
    "DistillResult",
    "KDLoss",
    "QATResult",
    "distill",
    "qat",
    "search_architecture",
    "shrink",
    "tune",
]
