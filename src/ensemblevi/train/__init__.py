"""Training: scvi-tools' TrainingPlan with ensemble parameter groups, and safety callbacks."""

from ._callbacks import EpochCheckpoint, HyperparameterTrajectory, NaNGuard
from ._plan import (
    EnsembleSemiSupervisedTrainingPlan,
    EnsembleTrainingPlan,
    FastGroupsMixin,
    HyperSemiSupervisedTrainingPlan,
    HyperTrainingPlan,
    HyperTuneMixin,
    fast_param_groups,
    tune_step,
)

__all__ = [
    "EnsembleSemiSupervisedTrainingPlan",
    "EnsembleTrainingPlan",
    "EpochCheckpoint",
    "FastGroupsMixin",
    "HyperSemiSupervisedTrainingPlan",
    "HyperTrainingPlan",
    "HyperTuneMixin",
    "HyperparameterTrajectory",
    "NaNGuard",
    "fast_param_groups",
    "tune_step",
]
