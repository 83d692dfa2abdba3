"""Training: scvi-tools' TrainingPlan with ensemble parameter groups, and safety callbacks."""

from ._callbacks import EpochCheckpoint, NaNGuard
from ._plan import EnsembleTrainingPlan, HyperTrainingPlan

__all__ = ["EnsembleTrainingPlan", "EpochCheckpoint", "HyperTrainingPlan", "NaNGuard"]
