"""SD + DINOv2 fusion (Zhang et al., "A Tale of Two Features", NeurIPS 2023, Eq. 2).

``F_FUSE = (α · ‖F_SD‖₂, (1 − α) · ‖F_DINO‖₂)``: both features are L2-normalised per pixel along
channels, weighted, and concatenated. ``F_SD`` is itself the concatenation of several U-Net decoder
layers (the paper's layers 2, 5, 8 = outputs of diffusers up-blocks 0, 1, 2), each reduced by PCA to
``pca_dim`` channels (256 in the paper) and resized to the common grid before concatenation.

PCA modes:

* ``"pair"`` (the paper): one basis per layer fitted jointly on the features of the two images of a
  pair, centred on their joint mean. Use :meth:`FusedExtractor.forward_pair`; :meth:`forward` fits a
  single basis over the whole batch it is given (pass ``torch.cat([source, target])`` of one pair).
  Features then depend on the other image and cannot be cached per image.
* ``"per_image"``: a fixed projection that depends on no image — a seeded random orthonormal
  ``C x pca_dim`` matrix per layer (Johnson–Lindenstrauss: cosine similarities are kept up to
  ``O(1/sqrt(pca_dim))``). Each image's features depend only on that image, a batch never mixes
  images, and features can be cached. Per-image PCA bases would not be comparable across images,
  which is why this mode does not fit one.
* ``pca_dim=None``: no reduction.

The paper's SD branch also uses an implicit (image-conditioned) caption from ODISE; here the prompt is
fixed (empty by default). Paper settings: SD 1.5, ``t = 100``, one noise draw, SD input 960, DINOv2
input 840, common grid 60 x 60, ``α = 0.5``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange

from diffmatch.features.base import FeatureExtractor, Features, l2_normalize
from diffmatch.features.dift import DIFTExtractor
from diffmatch.features.dino import DINOv2Extractor

__all__ = ["FusedExtractor", "PCA_MODES", "fit_pca"]

PCA_MODES = ("pair", "per_image")


def fit_pca(samples: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of each group of feature vectors (exact, by eigendecomposition of the covariance).

    Args:
        samples: ``(G, C, N)`` groups of ``N`` vectors of ``C`` channels.
        dim: number of components ``k <= C`` to keep.

    Returns:
        ``(mean, basis)``: ``(G, C, 1)`` group means and ``(G, C, k)`` orthonormal axes, by decreasing
        variance. Project with ``basis.transpose(1, 2) @ (x - mean)``.
    """
    if samples.ndim != 3:
        raise ValueError(f"samples must be (G, C, N), got {tuple(samples.shape)}")
    if not 1 <= dim <= samples.shape[1]:
        raise ValueError(f"dim must be in [1, {samples.shape[1]}], got {dim}")
    x = samples.double()
    mean = x.mean(dim=2, keepdim=True)
    centred = x - mean
    _, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))  # ascending eigenvalues
    basis = vectors[..., -dim:].flip(-1)
    return mean.to(samples.dtype), basis.to(samples.dtype)


def _resize(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(fmap.shape[-2:]) == size:
        return fmap
    shrink = size[0] < fmap.shape[-2] or size[1] < fmap.shape[-1]
    return F.interpolate(fmap, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class FusedExtractor(FeatureExtractor):
    """Stable Diffusion + DINOv2 features, normalised, weighted and concatenated (SD-DINO).

    Args:
        sd_model: SD 1.5/2.1 directory or Hub id (paper: ``runwayml/stable-diffusion-v1-5``).
        dino_model: DINOv2 directory or Hub id (paper: ``facebook/dinov2-base``).
        alpha: weight ``α`` of the SD part; DINOv2 gets ``1 − α``. In ``[0, 1]``.
        sd_layers: U-Net up-blocks whose outputs form ``F_SD`` (0, 1, 2 = the paper's layers 2, 5, 8).
        pca_dim: channels each SD layer is reduced to; ``None`` keeps them all.
        pca_mode: ``"pair"`` or ``"per_image"`` (see the module docstring).
        t: SD timestep (paper: 100).
        ensemble_size: SD noise draws averaged (paper: 1).
        prompt: SD text prompt.
        sd_image_size: resize for the SD branch (paper: 960); ``None`` keeps the input size.
        dino_image_size: resize for the DINOv2 branch (paper: 840); ``None`` keeps the input size.
        feature_size: ``(h, w)`` of the fused map; ``None`` uses the DINOv2 grid.
        seed: seed of the SD noise and of the ``per_image`` projections.
        local_files_only: never use the network for either model.
        torch_dtype: weights' dtype of both models.
        sd: an already built SD extractor to use instead of loading ``sd_model`` (its own ``t``,
            layers, ... then apply).
        dino: an already built DINOv2 extractor to use instead of loading ``dino_model``.

    Raises:
        InputError: a model cannot be found locally (the message names the id and how to fetch it).
    """

    stores_weights = False  # rebuilt from the pretrained folder named in the config

    def __init__(
        self,
        sd_model: str = "runwayml/stable-diffusion-v1-5",
        dino_model: str = "facebook/dinov2-base",
        alpha: float = 0.5,
        sd_layers: Sequence[int] = (0, 1, 2),
        pca_dim: int | None = 256,
        pca_mode: str = "per_image",
        t: int = 100,
        ensemble_size: int = 1,
        prompt: str = "",
        sd_image_size: int | tuple[int, int] | None = None,
        dino_image_size: int | tuple[int, int] | None = None,
        feature_size: tuple[int, int] | None = None,
        seed: int = 0,
        local_files_only: bool = False,
        torch_dtype: str = "float32",
        sd: DIFTExtractor | None = None,
        dino: DINOv2Extractor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if pca_mode not in PCA_MODES:
            raise ValueError(f"pca_mode must be one of {PCA_MODES}, got {pca_mode!r}")
        if pca_dim is not None and pca_dim < 1:
            raise ValueError(f"pca_dim must be >= 1 or None, got {pca_dim}")
        if feature_size is not None and (len(feature_size) != 2 or min(feature_size) < 1):
            raise ValueError(f"feature_size must be (h, w) of positive ints or None, got {feature_size!r}")
        self.sd = sd if sd is not None else DIFTExtractor(
            sd_model,
            t=t,
            up_ft_index=tuple(sd_layers),
            ensemble_size=ensemble_size,
            prompt=prompt,
            image_size=sd_image_size,
            seed=seed,
            local_files_only=local_files_only,
            torch_dtype=torch_dtype,
        )
        self.dino = dino if dino is not None else DINOv2Extractor(
            dino_model, image_size=dino_image_size, local_files_only=local_files_only, torch_dtype=torch_dtype
        )
        self.alpha = float(alpha)
        self.pca_dim = pca_dim
        self.pca_mode = pca_mode
        self.feature_size = None if feature_size is None else (int(feature_size[0]), int(feature_size[1]))
        self.sd_dims = tuple(c if pca_dim is None else min(c, pca_dim) for c in self.sd.channels)
        self.channels = sum(self.sd_dims) + self.dino.channels
        generator = torch.Generator().manual_seed(seed)
        for layer, (c, k) in enumerate(zip(self.sd.channels, self.sd_dims)):
            q = torch.linalg.qr(torch.randn(c, k, generator=generator))[0] if k < c else torch.eye(c)
            self.register_buffer(f"projection{layer}", q, persistent=False)

    # ----------------------------------------------------------------------------------------- fusion
    def _reduce_per_image(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for layer, fmap in enumerate(maps):
            if self.sd_dims[layer] == fmap.shape[1]:
                out.append(fmap)
                continue
            q = getattr(self, f"projection{layer}").to(fmap)
            out.append(torch.einsum("bchw,ck->bkhw", fmap, q))
        return out

    def _reduce_pair(self, first: list[torch.Tensor], second: list[torch.Tensor]) -> tuple[list, list]:
        # first[l], second[l]: (G, C, N1), (G, C, N2) flattened maps of the groups that share a basis.
        out_a, out_b = [], []
        for a, b, k in zip(first, second, self.sd_dims):
            if k == a.shape[1]:
                out_a.append(a)
                out_b.append(b)
                continue
            mean, basis = fit_pca(torch.cat((a, b), dim=2), k)
            project = basis.transpose(1, 2)
            out_a.append(project @ (a - mean))
            out_b.append(project @ (b - mean))
        return out_a, out_b

    def _combine(self, sd_maps: list[torch.Tensor], dino_map: torch.Tensor) -> torch.Tensor:
        size = self.feature_size or (dino_map.shape[-2], dino_map.shape[-1])
        sd = l2_normalize(torch.cat([_resize(m, size) for m in sd_maps], dim=1))
        dino = l2_normalize(_resize(dino_map, size))
        return torch.cat((self.alpha * sd, (1.0 - self.alpha) * dino), dim=1)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> Features:
        """Fused features of a batch.

        With ``pca_mode="per_image"`` every image is processed independently. With ``"pair"`` one PCA
        basis per layer is fitted over *all* images of the batch (use :meth:`forward_pair` for pairs).

        Args:
            image: ``(B, 3, H, W)`` float RGB in ``[0, 1]``.

        Returns:
            :class:`Features` with ``coarse=[(B, channels, h, w)]`` (``h, w`` = ``feature_size`` or the
            DINOv2 grid) whose first ``sum(sd_dims)`` channels have norm ``α`` and the rest norm
            ``1 − α`` at every pixel, and ``fine=None``. The map covers the whole image, so matches
            read from it follow the flow convention of :mod:`diffmatch.geometry`
            (``target(x) ≈ source(x + flow(x))``, align_corners=False).
        """
        self.check_image(image)
        sd_maps = self.sd(image).coarse
        dino_map = self.dino(image).coarse[0]
        if self.pca_mode == "per_image":
            sd_maps = self._reduce_per_image(sd_maps)
        else:
            shapes = [m.shape for m in sd_maps]
            flat = [rearrange(m, "b c h w -> 1 c (b h w)") for m in sd_maps]
            reduced, _ = self._reduce_pair(flat, [f[..., :0] for f in flat])
            sd_maps = [
                rearrange(r, "1 k (b h w) -> b k h w", b=s[0], h=s[2], w=s[3]) for r, s in zip(reduced, shapes)
            ]
        return Features(coarse=[self._combine(sd_maps, dino_map)], fine=None)

    @torch.no_grad()
    def forward_pair(self, source: torch.Tensor, target: torch.Tensor) -> tuple[Features, Features]:
        """Fused features of ``B`` pairs; with ``pca_mode="pair"`` pair ``i`` gets its own joint PCA.

        Args:
            source: ``(B, 3, Hs, Ws)`` float RGB in ``[0, 1]``.
            target: ``(B, 3, Ht, Wt)`` float RGB in ``[0, 1]``.

        Returns:
            ``(source_features, target_features)`` as described in :meth:`forward`.
        """
        self.check_image(source)
        self.check_image(target)
        if source.shape[0] != target.shape[0]:
            raise ValueError(f"source and target batch sizes differ: {source.shape[0]} vs {target.shape[0]}")
        if self.pca_mode == "per_image":
            return self(source), self(target)
        sd_s, sd_t = self.sd(source).coarse, self.sd(target).coarse
        red_s, red_t = self._reduce_pair([m.flatten(2) for m in sd_s], [m.flatten(2) for m in sd_t])
        sd_s = [r.view(*r.shape[:2], *m.shape[-2:]) for r, m in zip(red_s, sd_s)]
        sd_t = [r.view(*r.shape[:2], *m.shape[-2:]) for r, m in zip(red_t, sd_t)]
        fused_s = self._combine(sd_s, self.dino(source).coarse[0])
        fused_t = self._combine(sd_t, self.dino(target).coarse[0])
        return Features(coarse=[fused_s]), Features(coarse=[fused_t])
