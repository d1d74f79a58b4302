"""Command-line entry points (``train.py``, ``infer.py``, ``python -m diffmatch.export``)."""
