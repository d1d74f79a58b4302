"""Benchmark evaluation behind ``python -m diffmatch.evaluate``: datasets, methods, loop and reports.

* :mod:`~diffmatch.evaluation.datasets`: the subsets of a dataset and their groups (level, rate, corruption);
* :mod:`~diffmatch.evaluation.methods`: method names to :class:`~diffmatch.evaluation.baselines.Method` objects;
* :mod:`~diffmatch.evaluation.runner`: the loop over pairs and methods, tolerant of failed pairs;
* :mod:`~diffmatch.evaluation.report`: ``summary.json``, ``per_pair.csv``, the table and the plots.
* :mod:`~diffmatch.confidence.metrics`: reliability, ECE and homography accuracy, for
  ``python -m diffmatch.evaluate_confidence``.
* :mod:`~diffmatch.evaluation.sanity`: identical, shifted and rotated copies of one photo with exact
  ground truth (``scripts/sanity_check.py``).

The metrics themselves are pure functions in :mod:`diffmatch.metrics`.
"""
