"""Searches judged on the deployed package: hyperparameter search with Optuna (study.py, its
trials' bookkeeping in trials.py and storage in storage.py/journal.py; optuna, an extra, is
imported when a study runs) and architecture search on measured package latency (nas.py, its
output folder in nas_output.py). Distillation and QAT, which are not searches, live in
nimbleml.distill."""

from .nas import ArchitectureFront, search_architecture
from .study import tune

__all__ = ["ArchitectureFront", "search_architecture", "tune"]
