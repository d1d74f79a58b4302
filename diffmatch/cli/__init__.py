"""The command lines: ``diffmatch SUBCOMMAND`` (:mod:`~diffmatch.cli.main`) and one module per subcommand.

* :mod:`~diffmatch.cli.infer`: ``diffmatch match`` (also ``python infer.py``);
* :mod:`~diffmatch.cli.train`: ``diffmatch train`` (also ``python train.py``);
* :mod:`~diffmatch.cli.evaluate`, :mod:`~diffmatch.cli.evaluate_confidence`,
  :mod:`~diffmatch.cli.calibrate`, :mod:`~diffmatch.cli.export`, :mod:`~diffmatch.cli.convert_official`:
  ``diffmatch evaluate | evaluate-confidence | calibrate | export | convert-official`` (also
  ``python -m diffmatch.evaluate`` and so on, thin entry points kept at the package's top level);
* :mod:`~diffmatch.cli.common`: the parser base, one-line errors and exit statuses they share.
"""
