"""Reading and writing images and flow fields.

Flow arrays on disk and in this module are ``(H, W, 2)`` float32, on the target grid, in pixels,
channel 0 = x: ``target(x) ≈ source(x + flow(x))`` (the DenseMatching convention). The format is
chosen by the file extension:

* ``.flo``: Middlebury (readable by ``cv2.readOpticalFlow``);
* ``.png``: KITTI 16-bit, ``(u, v, valid)`` with ``u = (value - 2**15) / 64``;
* ``.npy``: the plain array;
* ``.npz``: ``flow`` plus optional ``valid``, ``uncertainty`` and ``samples``.

Every writer is atomic: data goes to a temporary file in the same folder, which then replaces the
target, so an interrupted run never leaves a half-written file; :func:`atomic_folder` does the same
for a folder of files.

Images are read upright: an EXIF orientation tag (a phone photo stored sideways) is applied when
reading, as PIL's ``ImageOps.exif_transpose`` does, so flows live on the image as it is displayed.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from diffmatch.errors import InputError

__all__ = [
    "FLOW_FORMATS",
    "atomic_folder",
    "atomic_open",
    "atomic_write_bytes",
    "exif_orientation",
    "load_image",
    "save_image",
    "read_flow",
    "read_flow_file",
    "read_torch_file",
    "write_flow",
]

FLOW_FORMATS = (".flo", ".png", ".npy", ".npz")
_FLO_MAGIC = 202021.25


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike, merge: bool = False) -> Iterator[Path]:
    """A hidden temporary folder whose files appear in ``folder`` only if the block succeeds.

    Write a set of files into the yielded folder. If the block raises (``KeyboardInterrupt``
    included), the temporary folder and everything in it is removed and ``folder`` is left as it was.

    Args:
        folder: where the files belong.
        merge: ``False``: the temporary folder (``.NAME.XXXX.partial`` beside ``folder``) replaces
            ``folder`` as a whole, in one rename (an existing ``folder`` is moved aside first and
            removed after). ``True``: ``folder`` is kept (it may hold other files, e.g. a
            user-given output folder); the temporary folder is made inside it and each file is
            moved in with an atomic rename at the end, replacing a file of the same name.

    Yields:
        The temporary folder to write into.
    """
    folder = Path(folder)
    if merge:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".diffmatch.", suffix=".partial", dir=folder))
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        yield staging
        if merge:
            for path in sorted(staging.iterdir()):
                os.replace(path, folder / path.name)
            staging.rmdir()
        else:
            old = None
            if folder.is_dir() and not folder.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
                os.replace(folder, old / folder.name)
            os.replace(staging, folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _atomic_with_buffer(path: str | os.PathLike, fill: Callable[[io.BytesIO], None]) -> None:
    buffer = io.BytesIO()
    fill(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _require_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    return path


# --------------------------------------------------------------------------------------------- images
_EXIF_ORIENTATION = 0x0112


def exif_orientation(path: str | os.PathLike) -> int:
    """The EXIF orientation tag (1..8) of an image file; 1 (upright) when it has none or PIL cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """``(H, W[, C])`` pixels as stored, turned upright for EXIF ``orientation`` (as ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        image = image[:, ::-1]
    elif orientation == 3:
        image = image[::-1, ::-1]
    elif orientation == 4:
        image = image[::-1]
    elif orientation == 5:
        image = image.swapaxes(0, 1)
    elif orientation == 6:
        image = np.rot90(image, -1)
    elif orientation == 7:
        image = image[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        image = np.rot90(image, 1)
    return np.ascontiguousarray(image)


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own log silenced for the block (its level restored after)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image as ``(H, W, 3)`` uint8 RGB, upright.

    Grayscale is replicated to three channels, an alpha channel is dropped, and 16-bit images are
    scaled to 8 bits. Floating-point images (e.g. 32-bit TIFF) whose values lie in ``[0, 1]`` are
    scaled by 255, as a float image is usually stored; other ranges are stretched from their minimum
    to their maximum. An EXIF orientation tag is applied (:func:`exif_orientation`), so a phone photo
    stored sideways is read as it is displayed.

    Raises:
        InputError: the file is missing or cannot be decoded, or a floating-point image holds NaN
            or infinite values.
    """
    path = _require_file(path)
    data = np.fromfile(path, dtype=np.uint8)
    with _quiet_opencv():  # a broken file gets our one line, not OpenCV's decoder log too
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None  # pixels as stored
    if image is None:
        raise InputError(f"{path}: not a readable image")
    image = _apply_orientation(image, exif_orientation(path))
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).any(axis=-1).sum() if image.ndim == 3 else (~np.isfinite(image)).sum())
        raise InputError(f"{path}: {bad} pixel(s) are NaN or infinite")
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating) and image.size and image.min() >= 0.0 and image.max() <= 1.0:
        image = (image.astype(np.float32) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX).round().astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def save_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Atomically save an ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` gray) image; the format follows the extension."""
    path = Path(path)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise InputError(f"{path}: could not encode image")
    atomic_write_bytes(path, encoded.tobytes())


# ----------------------------------------------------------------------------------------------- flow
def _check_flow_array(flow: np.ndarray) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"flow must be an (H, W, 2) array, got shape {flow.shape}")
    return flow.astype(np.float32, copy=False)


def read_flow_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a flow file and everything it carries.

    Returns:
        A dict with ``flow`` ``(H, W, 2)`` float32 and ``valid`` ``(H, W)`` bool; ``.npz`` files may
        also give ``uncertainty`` ``(H, W)`` and ``samples`` ``(N, H, W, 2)``.

    Raises:
        InputError: the file is missing, has an unknown extension or is corrupt.
    """
    path = _require_file(path)
    suffix = path.suffix.lower()
    if suffix not in FLOW_FORMATS:
        raise InputError(f"{path}: unknown flow format {suffix!r}, expected one of {FLOW_FORMATS}")
    try:
        if suffix == ".flo":
            out = {"flow": _read_flo(path)}
        elif suffix == ".png":
            out = _read_kitti_png(path)
        elif suffix == ".npy":
            out = {"flow": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                out = {key: archive[key] for key in archive.files}
            if "flow" not in out:
                raise InputError(f"{path}: .npz file has no 'flow' array")
    except InputError:
        raise
    except Exception as err:  # numpy/cv2 raise many types on corrupt files
        raise InputError(f"{path}: corrupt flow file ({err})") from None
    try:
        out["flow"] = _check_flow_array(out["flow"])
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    out["valid"] = out.get("valid", np.isfinite(out["flow"]).all(axis=2)).astype(bool)
    return out


def read_flow(path: str | os.PathLike) -> np.ndarray:
    """Read a flow field as ``(H, W, 2)`` float32 (pixels, target grid, channel 0 = x).

    Invalid pixels of KITTI files keep their stored value; use :func:`read_flow_file` for the mask.
    """
    return read_flow_file(path)["flow"]


def write_flow(
    path: str | os.PathLike,
    flow: np.ndarray,
    valid: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    samples: np.ndarray | None = None,
) -> None:
    """Atomically write a ``(H, W, 2)`` flow; the format follows the extension.

    Args:
        path: destination; ``.flo``, ``.png`` (KITTI), ``.npy`` or ``.npz``.
        flow: ``(H, W, 2)`` flow in pixels, target grid, ``target(x) ≈ source(x + flow(x))``.
        valid: optional ``(H, W)`` bool mask, kept by ``.png`` and ``.npz``.
        uncertainty: optional ``(H, W)`` variance map in px², kept by ``.npz`` only.
        samples: optional ``(N, H, W, 2)`` hypotheses, kept by ``.npz`` only.
    """
    path = Path(path)
    flow = _check_flow_array(flow)
    suffix = path.suffix.lower()
    if suffix not in FLOW_FORMATS:
        raise InputError(f"{path}: unknown flow format {suffix!r}, expected one of {FLOW_FORMATS}")
    if suffix == ".flo":
        h, w = flow.shape[:2]
        header = np.array([_FLO_MAGIC], np.float32).tobytes() + np.array([w, h], np.int32).tobytes()
        atomic_write_bytes(path, header + np.ascontiguousarray(flow).tobytes())
    elif suffix == ".png":
        _write_kitti_png(path, flow, valid)
    elif suffix == ".npy":
        _atomic_with_buffer(path, lambda buf: np.save(buf, flow))
    else:
        arrays = {"flow": flow}
        for key, value in (("valid", valid), ("uncertainty", uncertainty), ("samples", samples)):
            if value is not None:
                arrays[key] = np.asarray(value)
        _atomic_with_buffer(path, lambda buf: np.savez_compressed(buf, **arrays))


def _read_flo(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if len(raw) < 12 or np.frombuffer(raw[:4], np.float32)[0] != _FLO_MAGIC:
        raise InputError(f"{path}: not a Middlebury .flo file (bad magic number)")
    w, h = (int(v) for v in np.frombuffer(raw[4:12], np.int32))
    if w <= 0 or h <= 0 or len(raw) != 12 + 8 * w * h:
        raise InputError(f"{path}: truncated or corrupt .flo file (header says {w}x{h})")
    return np.frombuffer(raw[12:], np.float32).reshape(h, w, 2).copy()


def _read_kitti_png(path: Path) -> dict[str, np.ndarray]:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] != 3:
        raise InputError(f"{path}: not a KITTI 16-bit 3-channel flow PNG")
    data = data[:, :, ::-1].astype(np.float32)  # BGR -> (u, v, valid)
    flow = (data[:, :, :2] - 2**15) / 64.0
    return {"flow": flow, "valid": data[:, :, 2] > 0}


def _write_kitti_png(path: Path, flow: np.ndarray, valid: np.ndarray | None) -> None:
    if valid is None:
        valid = np.isfinite(flow).all(axis=2)
    encoded = np.clip(np.nan_to_num(flow) * 64.0 + 2**15, 0, 2**16 - 1).round().astype(np.uint16)
    image = np.dstack((encoded, np.asarray(valid, np.uint16)))[:, :, ::-1]
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise InputError(f"{path}: could not encode KITTI PNG")
    atomic_write_bytes(path, png.tobytes())


def read_torch_file(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The dict a ``torch.save`` file holds, loaded on the CPU with ``weights_only`` (no code runs).

    The one reader of weight files: checkpoints, exported weights, official checkpoints and backbone
    weights all come through it, so all fail the same way.

    Args:
        path: the file.
        what: what the file should be, for the messages (e.g. ``"diffmatch checkpoint"``).

    Raises:
        InputError: a folder, a missing file, an unreadable one (the first cause in a few words: empty,
            truncated, not a PyTorch file, a pickled object a weights-only load refuses), or one that
            does not hold a dict.
    """
    import torch  # here, so that importing diffmatch.io stays light

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a {what} file")
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{path}: not a {what} ({_load_failure(path, err)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a {what} (holds a {type(data).__name__}, not a dict)")
    return data


def _load_failure(path: Path, err: Exception) -> str:
    """The first cause of a failed ``torch.load``, in a few words (PyTorch's advice text left out)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "empty file"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsupported:
        return f"holds a Python object ({unsupported.group(1)}) that a weights-only load refuses"
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        return "truncated or damaged PyTorch file"
    if not zipfile.is_zipfile(path) and not isinstance(err, OSError):
        return "not a PyTorch file"
    text = text.split("WeightsUnpickler error:", 1)[-1]
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(err).__name__)
    cause = line.split(". ", 1)[0].rstrip(".")
    if len(cause) > 100:  # cut at a word, never inside one
        cause = cause[:100].rsplit(" ", 1)[0] + " …"
    return cause
