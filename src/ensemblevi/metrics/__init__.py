"""Calibration of count predictive distributions (randomised PIT, interval coverage) and of
predicted cell-type probabilities (ECE, classwise ECE, NLL, Brier).

Written by hand: ``scvi.criticism`` has known bugs in 1.4.2 and neither scanpy nor
scvi-tools offers a discrete-aware PIT.
"""

from ._counts import (
    COVERAGE_LEVELS,
    count_cdf,
    interval_coverage,
    pit_uniformity,
    randomized_pit,
)
from ._labels import (
    N_BINS,
    apply_temperature,
    classwise_ece,
    confusion_table,
    expected_calibration_error,
    fit_temperature,
    label_calibration_metrics,
    label_uncertainty_parts,
    per_type_calibration,
    reliability_table,
)
from ._model import predictive_calibration

__all__ = [
    "COVERAGE_LEVELS",
    "N_BINS",
    "apply_temperature",
    "classwise_ece",
    "confusion_table",
    "count_cdf",
    "expected_calibration_error",
    "fit_temperature",
    "interval_coverage",
    "label_calibration_metrics",
    "label_uncertainty_parts",
    "per_type_calibration",
    "pit_uniformity",
    "predictive_calibration",
    "randomized_pit",
    "reliability_table",
]
