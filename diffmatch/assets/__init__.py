"""The files the package ships and the photos it fetches: one place that knows where they are.

Shipped inside the package (``diffmatch/assets/``, package data of the wheel), found with
:func:`importlib.resources.files`, so they resolve wherever ``diffmatch`` is imported from (a
checkout, an editable install, a wheel installed anywhere):

* ``diffmatch_xfeat_stage2.pt``: the bundled default model (:func:`bundled_checkpoint`), a cascade
  stored as a stage-2 file: the learned flow upsampler's weights and the cascade's confidence
  calibration, loaded together with its stage 1, the file beside it;
* ``diffmatch_xfeat.pt``: that stage 1 (:func:`bundled_stage1`), XFeat features and a 7 M-parameter
  U-Net with its own calibration: a model of its own too, faster and a little less accurate;
* ``photos/train``, ``photos/val``: the 12 training and 5 held-out scikit-image photos
  (:func:`photo_folder`);
* ``samples/motorcycle_{left,right}.png``: the README's sample pair (:func:`sample_pair`).

Fetched, never shipped (about 100 photos, too large for the wheel): ``photo_folder("extra")``, the
photos ``diffmatch fetch-photos`` downloads (:func:`fetched_photos`). They live in the checkout's
``data/photos/extra`` when the package runs from a repository checkout, else in the user's cache
(:func:`data_home`); ``$DIFFMATCH_HOME`` overrides both.

A config names these folders as ``photos:train``, ``photos:val``, ``photos:extra``
(:func:`resolve_photo_root`), so it does not depend on the working directory.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from diffmatch.errors import InputError

__all__ = [
    "BUNDLED_CHECKPOINT",
    "BUNDLED_STAGE1",
    "FETCH_COMMAND",
    "PHOTO_FOLDERS",
    "bundled_checkpoint",
    "bundled_stage1",
    "checkout_root",
    "data_home",
    "fetched_photos",
    "fetched_photos_hint",
    "photo_folder",
    "resolve_photo_root",
    "sample_pair",
]

# The folders photo_folder() knows: the two shipped splits and the fetched photos.
PHOTO_FOLDERS: tuple[str, ...] = ("train", "val", "extra")
# The command that downloads photo_folder("extra") (diffmatch.cli.fetch_photos).
FETCH_COMMAND = "diffmatch fetch-photos"
_PHOTO_PREFIX = "photos:"


def _shipped(*parts: str) -> Path:
    """A file or folder inside ``diffmatch/assets`` as a filesystem path.

    Raises:
        InputError: the package is imported from a zip archive, where its assets are no files.
    """
    resource = files(__name__).joinpath(*parts)
    if not isinstance(resource, Path):
        raise InputError(
            f"diffmatch's assets are inside an archive ({resource}); install the package as files (pip install)"
        )
    return resource


def bundled_checkpoint() -> Path:
    """The bundled default model, ``diffmatch/assets/diffmatch_xfeat_stage2.pt``: stage 1 plus a learned stage 2, calibrated.

    A stage-2 file (:mod:`diffmatch.models.weights`): it holds the flow upsampler's weights and loads
    with :func:`bundled_stage1`, the file beside it, as one model.
    """
    return _shipped("diffmatch_xfeat_stage2.pt")


def bundled_stage1() -> Path:
    """The default's stage 1, ``diffmatch/assets/diffmatch_xfeat.pt`` (exported weights, calibrated).

    A model of its own as well: faster on a CPU and a little less accurate than the default
    (checkpoints/README.md in the repository); the one ONNX export takes.
    """
    return _shipped("diffmatch_xfeat.pt")


BUNDLED_CHECKPOINT: Path = bundled_checkpoint()
BUNDLED_STAGE1: Path = bundled_stage1()


def sample_pair() -> tuple[Path, Path]:
    """The README's sample pair ``(source, target)``: a real stereo pair (Middlebury "Motorcycle"), 512 px wide."""
    return _shipped("samples", "motorcycle_left.png"), _shipped("samples", "motorcycle_right.png")


def checkout_root() -> Path | None:
    """The repository checkout the package is imported from, or None for an installed package.

    A checkout is recognised by the ``pyproject.toml`` beside the package folder (a wheel's
    ``site-packages`` has none).
    """
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def data_home() -> Path:
    """Where fetched data goes outside a checkout: ``$DIFFMATCH_HOME``, else ``$XDG_CACHE_HOME/diffmatch``,
    else ``~/.cache/diffmatch``."""
    if os.environ.get("DIFFMATCH_HOME"):
        return Path(os.environ["DIFFMATCH_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "diffmatch"


def fetched_photos() -> Path:
    """The folder of the fetched photos (it may not exist yet).

    ``$DIFFMATCH_HOME/photos/extra`` when ``$DIFFMATCH_HOME`` is set; else the checkout's
    ``data/photos/extra`` when the package runs from a checkout; else
    ``~/.cache/diffmatch/photos/extra`` (:func:`data_home`).
    """
    root = checkout_root()
    if root is not None and not os.environ.get("DIFFMATCH_HOME"):
        return root / "data" / "photos" / "extra"
    return data_home() / "photos" / "extra"


def fetched_photos_hint() -> str:
    """The clause an error about missing fetched photos ends with: which command fetches them and where."""
    return f"`{FETCH_COMMAND}` downloads them into {fetched_photos()}"


def photo_folder(name: str) -> Path:
    """A photo folder by name: ``train`` and ``val`` (shipped), ``extra`` (fetched, :func:`fetched_photos`).

    The folder is not checked; :func:`diffmatch.data.bundled_photos` checks the shipped ones.

    Raises:
        InputError: an unknown name.
    """
    if name not in PHOTO_FOLDERS:
        raise InputError(f"photo folder must be one of {PHOTO_FOLDERS}, got {name!r}")
    return fetched_photos() if name == "extra" else _shipped("photos", name)


def resolve_photo_root(root: str | os.PathLike) -> Path:
    """A config's image folder: ``photos:NAME`` is :func:`photo_folder` ``(NAME)``, anything else a path.

    Example:
        >>> resolve_photo_root("photos:train").parts[-2:]
        ('photos', 'train')
        >>> resolve_photo_root("/data/my_photos")
        PosixPath('/data/my_photos')
    """
    text = os.fspath(root)
    if text.startswith(_PHOTO_PREFIX):
        return photo_folder(text[len(_PHOTO_PREFIX) :])
    return Path(text)
