"""``python scripts/fetch_photos.py``: the extra photos; the command lives in :mod:`diffmatch.cli.fetch_photos`
(also ``diffmatch fetch-photos``), the fetching in :mod:`diffmatch.data.fetch_photos`."""

import sys

from diffmatch.cli.fetch_photos import main

if __name__ == "__main__":
    sys.exit(main())
