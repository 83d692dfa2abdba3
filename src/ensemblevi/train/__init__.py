"""Training: scvi-tools' TrainingPlan with ensemble parameter groups, and safety callbacks."""

from ._callbacks import EpochCheckpoint, HyperparameterTrajectory, NaNGuard
from ._plan import EnsembleTrainingPlan, HyperTrainingPlan, fast_param_groups, tune_step

__all__ = [
    "EnsembleTrainingPlan",
    "EpochCheckpoint",
    "HyperTrainingPlan",
    "HyperparameterTrajectory",
    "NaNGuard",
    "fast_param_groups",
    "tune_step",
]
