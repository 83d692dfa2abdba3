"""Training: scvi-tools' TrainingPlan with ensemble parameter groups.

The safety callbacks (``EpochCheckpoint``, ``NaNGuard``, ``HyperparameterTrajectory``)
stay importable from ``ensemblevi.train._callbacks``.
"""

from ._plan import EnsembleSemiSupervisedTrainingPlan, EnsembleTrainingPlan, HyperTrainingPlan

__all__ = ["EnsembleSemiSupervisedTrainingPlan", "EnsembleTrainingPlan", "HyperTrainingPlan"]
