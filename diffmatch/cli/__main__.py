"""``python -m diffmatch.cli``: the ``diffmatch`` command (:mod:`diffmatch.cli.main`)."""

from diffmatch.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
