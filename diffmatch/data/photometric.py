"""Seeded photometric augmentation (colour jitter, grayscale, blur, haze, sensor noise) built on kornia's functional ops.

kornia's augmentation modules draw their parameters from torch's global RNG; here the parameters
come from an explicit ``torch.Generator`` and are applied with ``kornia.enhance`` / ``kornia.filters``,
so every item is reproducible. Photometric changes never move pixels: a pair's flow
(``target(x) ≈ source(x + flow(x))``) is unaffected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch

from diffmatch.errors import InputError

__all__ = ["PhotometricConfig", "photometric_augment"]


@dataclass(frozen=True)
class PhotometricConfig:
    """Ranges of the photometric augmentation, applied to each image independently.

    Args:
        jitter_probability: chance of applying colour jitter.
        brightness: additive brightness shift range ``[-b, b]`` (kornia's convention).
        contrast: contrast factor range ``[1 - c, 1 + c]``.
        saturation: saturation factor range ``[1 - s, 1 + s]``.
        hue: hue shift range ``[-h, h]`` in turns (0.5 = half the colour wheel).
        grayscale_probability: chance of converting to (three-channel) grayscale.
        blur_probability: chance of a Gaussian blur.
        blur_sigma: range of the blur's standard deviation in pixels.
        noise_probability: chance of adding Gaussian pixel noise (0 by default: off, and then the
            random stream is the same as without this option).
        noise_sigma: range of the noise's standard deviation, in units of the ``[0, 1]`` intensity.
        haze_probability: chance of haze (0 by default: off, and the random stream unchanged). Haze
            follows the atmospheric scattering model ``I = J t + A (1 - t)``: the transmission
            ``t = exp(-density * d)`` over a random fractal (cloud-like) field ``d`` in ``[0, 1]``, the
            airlight ``A`` a light grey. It lowers the contrast unevenly across the image, as fog and
            mist do, and teaches the matcher not to rely on fine texture alone.
        haze_density: range of the haze's optical density (``t`` falls to ``exp(-density)`` at the
            far end of the field).
        haze_airlight: range of the airlight's intensity.
    """

    jitter_probability: float = 0.8
    brightness: float = 0.2
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    grayscale_probability: float = 0.1
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise_probability: float = 0.0
    noise_sigma: tuple[float, float] = (0.02, 0.2)
    haze_probability: float = 0.0
    haze_density: tuple[float, float] = (0.5, 3.0)
    haze_airlight: tuple[float, float] = (0.6, 1.0)

    def __post_init__(self) -> None:
        names = ("jitter_probability", "grayscale_probability", "blur_probability", "noise_probability", "haze_probability")
        for name in names:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.contrast < 1.0 or not 0.0 <= self.saturation < 1.0:
            raise InputError(
                f"contrast and saturation must be in [0, 1), got {self.contrast}, {self.saturation}"
            )
        if not 0.0 <= self.hue <= 0.5:
            raise InputError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise InputError(f"blur_sigma must be an increasing positive range, got {self.blur_sigma}")
        if len(self.noise_sigma) != 2 or not 0.0 < self.noise_sigma[0] <= self.noise_sigma[1]:
            raise InputError(f"noise_sigma must be an increasing positive range, got {self.noise_sigma}")
        if len(self.haze_density) != 2 or not 0.0 < self.haze_density[0] <= self.haze_density[1]:
            raise InputError(f"haze_density must be an increasing positive range, got {self.haze_density}")
        if len(self.haze_airlight) != 2 or not 0.0 <= self.haze_airlight[0] <= self.haze_airlight[1] <= 1.0:
            raise InputError(f"haze_airlight must be an increasing range in [0, 1], got {self.haze_airlight}")


def _haze(image: torch.Tensor, config: PhotometricConfig, generator: torch.Generator) -> torch.Tensor:
    """``(1, 3, H, W)`` image seen through haze (atmospheric scattering over a random fractal field)."""
    u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    # A fractal field: octaves of 3, 6, 12 and 24 cells a side, each half the amplitude of the last.
    field = sum(
        0.5**octave * torch.nn.functional.interpolate(
            torch.rand(1, 1, 3 * 2**octave, 3 * 2**octave, generator=generator),
            size=image.shape[-2:], mode="bicubic", align_corners=True,
        )
        for octave in range(4)
    )
    field = (field - field.amin()) / (field.amax() - field.amin()).clamp_min(1e-6)
    lo, hi = config.haze_density
    transmission = torch.exp(-(lo + (hi - lo) * u[0]) * field).to(image)
    lo, hi = config.haze_airlight
    airlight = lo + (hi - lo) * u[1]
    return image * transmission + airlight * (1 - transmission)


def photometric_augment(
    image: torch.Tensor, config: PhotometricConfig, generator: torch.Generator
) -> torch.Tensor:
    """Randomly jitter colours, convert to grayscale, blur, add haze and add noise to one image.

    Args:
        image: ``(3, H, W)`` float image in ``[0, 1]``.
        config: augmentation ranges.
        generator: source of randomness (the only one used).

    Returns:
        ``(3, H, W)`` float image in ``[0, 1]``.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    # Draw every number up front so the stream does not depend on which branches fire.
    u = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
    out = image[None]
    if u[0] < config.jitter_probability:
        out = kornia.enhance.adjust_brightness(out, (2 * u[1] - 1) * config.brightness)
        out = kornia.enhance.adjust_contrast(out, 1 + (2 * u[2] - 1) * config.contrast)
        out = kornia.enhance.adjust_saturation(out, 1 + (2 * u[3] - 1) * config.saturation)
        out = kornia.enhance.adjust_hue(out, (2 * u[4] - 1) * config.hue * 2 * math.pi)
    if u[5] < config.grayscale_probability:
        out = kornia.color.rgb_to_grayscale(out).expand(-1, 3, -1, -1)
    if u[6] < config.blur_probability:
        lo, hi = config.blur_sigma
        sigma = lo + (hi - lo) * u[7]
        ksize = 2 * math.ceil(3 * sigma) + 1
        out = kornia.filters.gaussian_blur2d(out, (ksize, ksize), (sigma, sigma), border_type="reflect")
    if config.haze_probability > 0:  # drawn only when on, as the noise below
        if torch.rand(1, generator=generator, dtype=torch.float64).item() < config.haze_probability:
            out = _haze(out, config, generator)
    if config.noise_probability > 0:  # drawn only when on, so configs without noise keep their stream
        v = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        if v[0] < config.noise_probability:
            lo, hi = config.noise_sigma
            noise = torch.randn(out.shape, generator=generator, dtype=out.dtype)
            out = out + (lo + (hi - lo) * v[1]) * noise.to(out.device)
    return out[0].clamp(0.0, 1.0).contiguous()
