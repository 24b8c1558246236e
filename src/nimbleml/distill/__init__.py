"""Making a small model learn from a big one, and training a model for int8: distillation
(kd.py: the loss in loss.py, the teacher's outputs in teacher.py, consistent views in views.py,
unlabeled rows in unlabeled.py, the temperature/alpha search in choose.py, intermediate
features in features.py, the side-by-side report in report.py),
smaller students built from a teacher (students.py) and quantization-aware training (qat.py,
the "qat" recipe, registered into compress's registry through the ``nimbleml.recipes`` entry
point). Above train (they train), below search (which tunes them)."""

from .kd import DistillResult, KDLoss, distill
from .qat import QATResult, qat
from .report import DistillReport
from .students import shrink

__all__ = ["DistillReport", "DistillResult", "KDLoss", "QATResult", "distill", "qat", "shrink"]
