"""Zero-shot matching by nearest neighbours of pretrained features (DIFT, DINOv2, SD-DINO).

No training: both images are resized to one processing size, features are extracted, and every
target cell is matched to the source cell of highest cosine similarity (the argmax of
:func:`~diffmatch.models.cost_volume.global_correlation`). Flows follow the project convention: on the
target grid, ``target(x) ≈ source(x + flow(x))``, in pixels of the original images, channel 0 = x,
``align_corners=False``.

Example:
    >>> matcher = ZeroShotMatcher.from_name("dift", sd_model="/models/sd-2-1", device="cuda")  # doctest: +SKIP
    >>> result = matcher.match("source.jpg", "target.jpg")  # doctest: +SKIP
    >>> result.flow.shape  # (1, 2, H_target, W_target)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffmatch.errors import InputError
from diffmatch.features import build_features
from diffmatch.features.base import FeatureExtractor, l2_normalize
from diffmatch.features.hub import as_size, resize_image
from diffmatch.geometry import pixel_to_normalized, resize_flow
from diffmatch.inputs import ImageInput, shrink_images, to_image_batch
from diffmatch.models.cost_volume import argmax_flow, global_correlation
from diffmatch.result import MatchResult

__all__ = ["ZeroShotMatcher", "ZERO_SHOT_DEFAULTS"]

# Per-name published settings: processing size of the matcher and extractor arguments.
ZERO_SHOT_DEFAULTS: dict[str, dict[str, Any]] = {
    "dift": {"image_size": 768, "extractor": {}},  # DIFT, SD 2.1, semantic preset
    "dino": {"image_size": 840, "extractor": {}},  # SD-DINO's DINOv2-ViT-B/14 baseline: 60 x 60 grid
    "fused": {"image_size": 840, "extractor": {"sd_image_size": 960, "pca_mode": "pair"}},  # SD-DINO
}


def _merge_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """One map from several: each resized to the finest grid, L2-normalised, concatenated."""
    if len(maps) == 1:
        return maps[0]
    size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
    resized = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
    return torch.cat([l2_normalize(m) for m in resized], dim=1)


class ZeroShotMatcher(nn.Module):
    """Dense matching and keypoint transfer by nearest neighbours of frozen features.

    Args:
        extractor: any :class:`~diffmatch.features.FeatureExtractor`. If it has ``forward_pair``
            (:class:`~diffmatch.features.fused.FusedExtractor`) that is used, so pair-wise PCA works.
            Several ``coarse`` maps are resized to the finest one, normalised and concatenated.
        image_size: ``S`` or ``(H, W)`` both images are resized to before extraction; ``None`` keeps
            their sizes. Choose a multiple of the extractor's stride so the feature cells tile the image.
        upsample: in :meth:`transfer_keypoints`, factor by which the target feature map is bilinearly
            upsampled before the nearest-neighbour search. 1 returns cell centres (precision: one
            cell); DIFT upsamples to the full image. Memory grows with ``upsample²``.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        image_size: int | tuple[int, int] | None = None,
        upsample: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(extractor, FeatureExtractor):
            raise ValueError(f"extractor must be a FeatureExtractor, got {type(extractor).__name__}")
        self.extractor = extractor
        self.image_size = as_size(image_size)
        if not isinstance(upsample, int) or upsample < 1:
            raise ValueError(f"upsample must be an int >= 1, got {upsample!r}")
        self.upsample = upsample

    @classmethod
    def from_name(
        cls,
        name: str,
        sd_model: str | None = None,
        dino_model: str | None = None,
        device: str | torch.device = "cpu",
        image_size: int | tuple[int, int] | None = None,
        **extractor_kwargs: Any,
    ) -> ZeroShotMatcher:
        """Build a matcher with the published settings of ``name``.

        Args:
            name: ``"dift"`` (SD 2.1, t=261, up-block 1, 8 draws, 768 px), ``"dino"`` (DINOv2-B/14 at
                840 px) or ``"fused"`` (SD-DINO: SD 1.5 at 960 px, DINOv2-B/14 at 840 px, pair PCA 256).
            sd_model: SD directory or Hub id for ``dift``/``fused`` (default: the paper's model id).
            dino_model: DINOv2 directory or Hub id for ``dino``/``fused`` (default ``facebook/dinov2-base``).
            device: where the models run.
            image_size: processing size; ``None`` uses the name's default above.
            **extractor_kwargs: passed on to the extractor's constructor (e.g. ``ensemble_size``, ``t``).

        Raises:
            ValueError: unknown ``name``, or a model path given that ``name`` does not use.
            InputError: a model cannot be found locally (the message says how to fetch it).
        """
        if name not in ZERO_SHOT_DEFAULTS:
            raise ValueError(f"unknown zero-shot matcher {name!r}, expected one of {sorted(ZERO_SHOT_DEFAULTS)}")
        if sd_model is not None and name == "dino":
            raise ValueError(f"sd_model={sd_model!r} is not used by the 'dino' matcher")
        if dino_model is not None and name == "dift":
            raise ValueError(f"dino_model={dino_model!r} is not used by the 'dift' matcher")
        defaults = ZERO_SHOT_DEFAULTS[name]
        kwargs = {**defaults["extractor"], **extractor_kwargs}
        if name == "dift" and sd_model is not None:
            kwargs["pretrained_model_name_or_path"] = sd_model
        elif name == "dino" and dino_model is not None:
            kwargs["pretrained_model_name_or_path"] = dino_model
        elif name == "fused":
            kwargs.update({k: v for k, v in (("sd_model", sd_model), ("dino_model", dino_model)) if v is not None})
        extractor = build_features(name, **kwargs)
        size = defaults["image_size"] if image_size is None else image_size
        return cls(extractor, image_size=size).to(device)

    # ------------------------------------------------------------------------------------- internals
    @property
    def device(self) -> torch.device:
        param = next(self.extractor.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _prepare(self, source: ImageInput | list, target: ImageInput | list) -> tuple[torch.Tensor, torch.Tensor]:
        src = to_image_batch(source, "source").to(self.device)
        tgt = to_image_batch(target, "target").to(self.device)
        if src.shape[0] != tgt.shape[0]:
            raise InputError(f"source and target batch sizes differ: {src.shape[0]} vs {tgt.shape[0]}")
        return src, tgt

    def features(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps of resized source and target batches.

        Args:
            source: ``(B, 3, Hs, Ws)`` float RGB in ``[0, 1]``, original size.
            target: ``(B, 3, Ht, Wt)`` float RGB in ``[0, 1]``, original size.

        Returns:
            ``(source_map, target_map)``: ``(B, C, hs, ws)`` and ``(B, C, ht, wt)``, each covering its image.
        """
        src, tgt = resize_image(source, self.image_size), resize_image(target, self.image_size)
        forward_pair = getattr(self.extractor, "forward_pair", None)
        if callable(forward_pair):
            feats_s, feats_t = forward_pair(src, tgt)
        else:
            feats_s, feats_t = self.extractor(src), self.extractor(tgt)
        return _merge_maps(feats_s.coarse), _merge_maps(feats_t.coarse)

    @torch.no_grad()
    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour flow.

        Args:
            source: ``(B, 3, Hs, Ws)`` float RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` float RGB in ``[0, 1]``.

        Returns:
            ``(B, 2, Ht, Wt)`` flow in pixels of the original images, on the target grid,
            ``target(x) ≈ source(x + flow(x))``, channel 0 = x.
        """
        fs, ft = self.features(source, target)
        (hs, ws), (ht, wt) = fs.shape[-2:], ft.shape[-2:]
        cells = argmax_flow(global_correlation(fs, ft), (ht, wt), (hs, ws))  # flow in feature cells
        scale = (source.shape[-2] / hs, source.shape[-1] / ws)
        return resize_flow(cells, (target.shape[-2], target.shape[-1]), source_scale=scale)

    def match(self, source: ImageInput | list, target: ImageInput | list, max_size: int | None = None) -> MatchResult:
        """Dense matches from the target into the source.

        Args:
            source: anything :func:`~diffmatch.inputs.to_image_batch` accepts (path, PIL, array, tensor,
                list), any size.
            target: same, with the same batch size as ``source``.
            max_size: match copies whose longer side is at most this many pixels and bring the result
                back to the full-size target (as :meth:`DiffMatcher.match <diffmatch.matcher.DiffMatcher.match>`).

        Returns:
            :class:`~diffmatch.result.MatchResult` with ``flow`` ``(B, 2, Ht, Wt)`` in pixels of the
            original images at the target's size (``target(x) ≈ source(x + flow(x))``, channel 0 = x),
            one sample, and zero uncertainty.
        """
        full_src, full_tgt = self._prepare(source, target)
        src, tgt = shrink_images(full_src, max_size), shrink_images(full_tgt, max_size)
        result = MatchResult.from_samples(self(src, tgt).unsqueeze(1))
        scale = (full_src.shape[-2] / src.shape[-2], full_src.shape[-1] / src.shape[-1])
        return result.resized(tuple(full_tgt.shape[-2:]), scale)

    @torch.no_grad()
    def transfer_keypoints(
        self, source: ImageInput | list, target: ImageInput | list, keypoints_source: torch.Tensor
    ) -> torch.Tensor:
        """Move source keypoints to the target position of most similar feature.

        Args:
            source: source image(s), as in :meth:`match`.
            target: target image(s), same batch size.
            keypoints_source: ``(B, K, 2)`` (or ``(K, 2)`` for one pair) ``(x, y)`` pixel coordinates in
                the original source image (pixel centres at integers).

        Returns:
            ``(B, K, 2)`` ``(x, y)`` pixel coordinates in the original target image.
        """
        src, tgt = self._prepare(source, target)
        kps = torch.as_tensor(keypoints_source, dtype=torch.float32, device=src.device)
        if kps.ndim == 2:
            kps = kps.unsqueeze(0)
        if kps.ndim != 3 or kps.shape[-1] != 2 or kps.shape[0] != src.shape[0]:
            raise InputError(f"keypoints_source must be (B={src.shape[0]}, K, 2), got {tuple(kps.shape)}")
        fs, ft = self.features(src, tgt)
        hs, ws = fs.shape[-2:]
        # Keypoints in source feature-cell coordinates (align_corners=False), then bilinear descriptors.
        cells = (kps + 0.5) * kps.new_tensor([ws / src.shape[-1], hs / src.shape[-2]]) - 0.5
        grid = pixel_to_normalized(cells.permute(0, 2, 1).unsqueeze(-1), (hs, ws)).permute(0, 2, 3, 1)
        desc = F.grid_sample(fs, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]
        if self.upsample > 1:
            ft = F.interpolate(ft, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        out_h, out_w = ft.shape[-2:]
        sim = torch.einsum("bck,bchw->bkhw", l2_normalize(desc.unsqueeze(-1))[..., 0], l2_normalize(ft))
        best = sim.flatten(2).argmax(dim=-1)  # (B, K)
        xy = torch.stack((best % out_w, best // out_w), dim=-1).float()
        return (xy + 0.5) * xy.new_tensor([tgt.shape[-1] / out_w, tgt.shape[-2] / out_h]) - 0.5
