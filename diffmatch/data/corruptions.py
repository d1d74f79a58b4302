"""ImageNet-C corruptions (Hendrycks & Dietterich), as used by DiffMatch's robustness study.

This is the one place that touches :mod:`imagecorruptions`. The package was written for numpy 1 and
old scikit-image, so it is loaded through a small shim that leaves numpy and scikit-image
themselves untouched:

* ``pkg_resources`` (gone from recent setuptools) is stood in for while the package is imported;
* the module's ``np`` is a proxy adding the ``np.float_`` alias removed in numpy 2;
* its ``gaussian`` maps the removed ``multichannel=`` argument to ``channel_axis``;
* its ``sk.util.random_noise`` (impulse noise) draws its seed from numpy's global RNG, as the
  other corruptions do, instead of from fresh OS entropy.

``imagecorruptions`` draws from numpy's *global* RNG. :func:`corrupt` therefore seeds that RNG for
the duration of one call and restores the previous state afterwards, so results depend only on
``seed`` and nothing else is disturbed (not thread-safe: do not corrupt from several threads of
one process at once; DataLoader worker processes are fine).

Corruptions change only pixel values, never geometry, so a pair's flow and mask stay valid
(``target(x) ≈ source(x + flow(x))``, pixels, target grid).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import sys
import types
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import skimage
import skimage.util
import torch
from torch.utils.data import Dataset

from diffmatch.errors import InputError

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "Corrupted"]

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_MIN_SIZE = 32  # imagecorruptions refuses smaller images


class _Proxy(types.ModuleType):
    """Module proxy: ``overrides`` first, then the wrapped module."""

    def __init__(self, module: types.ModuleType, **overrides: Any) -> None:
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _random_noise(image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
    # skimage >= 0.19 draws from a fresh default_rng; seed it from the (scoped) global RNG instead.
    kwargs.setdefault("rng", np.random.randint(2**31))
    return skimage.util.random_noise(image, *args, **kwargs)


def _resource_filename(module: str, resource: str) -> str:
    return str(Path(sys.modules[module].__file__).parent / resource)


@cache
def _backend() -> types.ModuleType:
    """Import ``imagecorruptions`` once, through the compatibility shim."""
    stand_in = None
    if importlib.util.find_spec("pkg_resources") is None:
        stand_in = types.ModuleType("pkg_resources")
        stand_in.resource_filename = _resource_filename
        sys.modules["pkg_resources"] = stand_in
    try:
        package = importlib.import_module("imagecorruptions")
        module = importlib.import_module("imagecorruptions.corruptions")
    finally:
        if stand_in is not None and sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]
    module.resource_filename = _resource_filename
    module.np = _Proxy(np, float_=np.float64)
    module.sk = _Proxy(skimage, util=_Proxy(skimage.util, random_noise=_random_noise))
    skimage_gaussian = module.gaussian

    def gaussian(
        image: np.ndarray, *args: Any, multichannel: bool | None = None, **kwargs: Any
    ) -> np.ndarray:
        if multichannel is not None:
            kwargs.setdefault("channel_axis", -1 if multichannel else None)
        return skimage_gaussian(image, *args, **kwargs)

    module.gaussian = gaussian
    return package


@contextlib.contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply one ImageNet-C corruption, deterministically.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image, ``H, W >= 32``.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strongest).
        seed: seed of the corruption's random draws (noise, frost crop, ...).

    Returns:
        ``(H, W, 3)`` uint8 corrupted image. The same arguments always give the same output.

    Raises:
        InputError: unknown ``name``, severity outside 1–5, or a bad image.
    """
    if name not in CORRUPTIONS:
        raise InputError(f"unknown corruption {name!r}, expected one of {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise InputError(f"severity must be an integer in 1..5, got {severity!r}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise InputError(f"image must be an (H, W, 3) uint8 array, got {type(image).__name__} {shape}")
    if min(image.shape[:2]) < _MIN_SIZE:
        raise InputError(f"image must be at least {_MIN_SIZE}x{_MIN_SIZE} pixels, got {image.shape[:2]}")
    backend = _backend()
    with _seeded_global_numpy(seed % 2**32):
        out = backend.corrupt(np.ascontiguousarray(image), corruption_name=name, severity=int(severity))
    # A few corruptions (e.g. frost, glass_blur) may return a slightly different size or dtype.
    out = np.asarray(out)
    if out.shape != image.shape:
        out = out[: image.shape[0], : image.shape[1]]
    return out.astype(np.uint8, copy=False)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _to_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0


class Corrupted(Dataset):
    """Wrap a pair dataset and corrupt both images of every item (geometry unchanged).

    The wrapped dataset is expanded to the product ``(item, corruption, severity)``: item ``i`` of
    this dataset is base item ``i // (C * S)`` with corruption ``(i // S) % C`` and severity
    ``i % S`` (``C = len(corruptions)``, ``S = len(severities)``), so iterating it covers every
    combination. The source and the target get independent noise, both seeded from
    ``(seed, i)``.

    Args:
        dataset: dataset whose items have ``source`` and ``target`` ``(3, H, W)`` float images in
            ``[0, 1]``; other keys (``flow`` on the target grid into the source, in pixels, ``mask``,
            ``name``...) pass through.
        corruptions: names from :data:`CORRUPTIONS`; a single name is allowed; default all 15.
        severity: one severity (1–5) or a sequence of them.
        seed: base seed.

    Item keys: those of ``dataset`` plus ``corruption`` (str) and ``severity`` (int).
    """

    def __init__(
        self,
        dataset: Dataset,
        corruptions: str | Sequence[str] | None = None,
        severity: int | Sequence[int] = 5,
        seed: int = 0,
    ) -> None:
        names = (
            CORRUPTIONS
            if corruptions is None
            else (corruptions,)
            if isinstance(corruptions, str)
            else corruptions
        )
        names = tuple(names)
        severities = (severity,) if isinstance(severity, int) else tuple(severity)
        if not names:
            raise InputError("corruptions must name at least one corruption, got an empty list")
        for name in names:
            if name not in CORRUPTIONS:
                raise InputError(f"unknown corruption {name!r}, expected one of {CORRUPTIONS}")
        for level in severities:
            if level not in SEVERITIES:
                raise InputError(f"severity must be an integer in 1..5, got {level!r}")
        if not severities:
            raise InputError("severity must name at least one level, got an empty list")
        self.dataset = dataset
        self.corruptions = names
        self.severities = severities
        self.seed = seed
        self._combos = list(itertools.product(names, severities))

    def __len__(self) -> int:
        return len(self.dataset) * len(self._combos)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        base, combo = divmod(index, len(self._combos))
        name, severity = self._combos[combo]
        item = dict(self.dataset[base])
        seeds = np.random.SeedSequence([self.seed, index]).generate_state(2)
        for key, seed in zip(("source", "target"), seeds):
            item[key] = _to_float(corrupt(_to_uint8(item[key]), name, severity, int(seed)))
        item["corruption"] = name
        item["severity"] = severity
        return item
