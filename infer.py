"""Match your own images: ``python infer.py --source A --target B --out DIR`` (see README)."""

import sys

from diffmatch.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
