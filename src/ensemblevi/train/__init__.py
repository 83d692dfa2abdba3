"""Training: scvi-tools' TrainingPlan with ensemble parameter groups, and safety callbacks."""

from ._callbacks import EpochCheckpoint, NaNGuard
from ._plan import EnsembleTrainingPlan

__all__ = ["EnsembleTrainingPlan", "EpochCheckpoint", "NaNGuard"]
