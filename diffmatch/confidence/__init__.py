"""Where a match can be trusted: a calibrated per-pixel confidence, ``P(EPE < τ)``.

* :mod:`~diffmatch.confidence.calibrator`: :class:`Calibrator`, the logistic model from cues to
  probabilities, and its fitting (:func:`fit_calibrator`);
* :mod:`~diffmatch.confidence.cues`: :func:`~diffmatch.confidence.cues.match_with_cues`, one run of a
  model that also returns the cues (hypothesis variance, distance to ``F_init``, cost peak,
  forward–backward error, and the local means of the variance and the forward–backward error);
* :mod:`~diffmatch.confidence.fitting`: calibration pairs, cue selection and writing a calibrated
  checkpoint (``diffmatch calibrate``);
* :mod:`~diffmatch.confidence.metrics`: reliability, ECE, AUSE and homography accuracy.

Flow convention: target grid, ``target(x) ≈ source(x + flow(x))``, px, channel 0 = x.
"""

from diffmatch.confidence.calibrator import (
    CUES,
    DEFAULT_TAUS,
    LOG_OFFSETS,
    REVERSE_CUES,
    SEARCH_CUES,
    TRANSFORMS,
    Calibrator,
    calibrator_from_dict,
    cue_stack,
    fit_calibrator,
    isotonic_fit,
    logistic_loss,
)

__all__ = [
    "CUES",
    "DEFAULT_TAUS",
    "LOG_OFFSETS",
    "REVERSE_CUES",
    "SEARCH_CUES",
    "TRANSFORMS",
    "Calibrator",
    "calibrator_from_dict",
    "cue_stack",
    "fit_calibrator",
    "isotonic_fit",
    "logistic_loss",
]
