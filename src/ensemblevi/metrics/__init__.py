"""Calibration of count predictive distributions (randomised PIT, interval coverage) and of
predicted cell-type probabilities (ECE, classwise ECE, NLL, Brier).

Written by hand: ``scvi.criticism`` has known bugs in 1.4.2 and neither scanpy nor
scvi-tools offers a discrete-aware PIT. The pieces (``count_cdf``, ``classwise_ece``,
...) stay importable from ``ensemblevi.metrics._counts`` and ``._labels``.
"""

from ._counts import interval_coverage, randomized_pit
from ._labels import fit_temperature, label_calibration_metrics, reliability_table
from ._model import predictive_calibration

__all__ = [
    "fit_temperature",
    "interval_coverage",
    "label_calibration_metrics",
    "predictive_calibration",
    "randomized_pit",
    "reliability_table",
]
