"""Calibration of count predictive distributions: randomised PIT and interval coverage.

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
from ._model import predictive_calibration

__all__ = [
    "COVERAGE_LEVELS",
    "count_cdf",
    "interval_coverage",
    "pit_uniformity",
    "predictive_calibration",
    "randomized_pit",
]
