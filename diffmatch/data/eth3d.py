"""ETH3D multi-view pairs at growing frame intervals, the GLU-Net / DenseMatching / DiffMatch protocol."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from diffmatch.data.photos import load_image_tensor
from diffmatch.data.safe_pickle import load_array_pickle
from diffmatch.data.synthetic import inside_frame
from diffmatch.errors import InputError
from diffmatch.geometry import coords_grid

__all__ = ["ETH3D", "ETH3D_SCENES", "ETH3D_RATES", "load_eth3d_pairs"]

ETH3D_SCENES: tuple[str, ...] = (
    "lakeside",
    "sand_box",
    "storage_room",
    "storage_room_2",
    "tunnel",
    "delivery_area",
    "electro",
    "forest",
    "playground",
    "terrains",
)
ETH3D_RATES: tuple[int, ...] = (3, 5, 7, 9, 11, 13, 15)
_PAIR_KEYS = ("source_image", "target_image", "Xs", "Ys", "Xt", "Yt")
def load_eth3d_pairs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read one DenseMatching pair list (``info_ETH3D_files/<scene>_every_5_rate_of_<rate>``).

    The file is a pickled list of dicts with ``source_image`` and ``target_image`` (paths relative to
    the ETH3D root) and the sparse matches ``Xs, Ys`` (source pixels) and ``Xt, Yt`` (target pixels).
    Only containers and numpy arrays are unpickled.

    Raises:
        InputError: missing file, a disallowed or corrupt pickle, or missing keys.
    """
    path = Path(path)
    pairs = load_array_pickle(path, "ETH3D pair list")
    if not isinstance(pairs, list | tuple):
        raise InputError(f"{path}: expected a list of pairs, got {type(pairs).__name__}")
    for number, pair in enumerate(pairs):
        if not isinstance(pair, dict) or any(key not in pair for key in _PAIR_KEYS):
            raise InputError(f"{path}: pair {number} lacks one of the keys {_PAIR_KEYS}")
    return list(pairs)


class ETH3D(Dataset):
    """ETH3D pairs taken ``rate`` frames apart, with sparse ground truth as a masked dense flow.

    Layout (DenseMatching's, see its ``assets/download_ETH3D.sh``): the images anywhere under
    ``<root>`` (``multiview_testing/...``, ``multiview_training/...``), referenced by the pair lists
    ``<root>/info_ETH3D_files/<scene>_every_5_rate_of_<rate>``. Each match ``(Xs, Ys) ↔ (Xt, Yt)``
    is written at the nearest target pixel ``(round(Xt), round(Yt))`` as ``flow = (Xs - Xt, Ys - Yt)``
    (as DenseMatching does, so numbers stay comparable; when two matches round to the same pixel
    the later one wins). Images keep their original size.

    Args:
        root: the ETH3D folder.
        rates: frame intervals to include (the protocol reports each of 3, 5, ..., 15).
        scenes: scenes to include; all ten by default.

    Items are dicts: ``source``, ``target`` ``(3, H, W)`` float32 in ``[0, 1]``; ``flow`` ``(2, Ht, Wt)``
    float32 pixels, on the target grid, ``target(x) ≈ source(x + flow(x))``, zero where unknown;
    ``mask`` ``(Ht, Wt)`` bool, true at ground-truth matches inside the source frame; ``rate`` (int);
    ``scene`` (str); ``name`` ``"<scene>/rate_<rate>/<index>"``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        rates: tuple[int, ...] = ETH3D_RATES,
        scenes: tuple[str, ...] = ETH3D_SCENES,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"{self.root}: ETH3D folder not found")
        if not rates or not scenes:
            raise InputError(f"rates and scenes must be non-empty, got {rates} and {scenes}")
        self.items: list[tuple[str, int, int, dict[str, Any]]] = []
        for rate in rates:
            for scene in scenes:
                pairs = load_eth3d_pairs(self.root / "info_ETH3D_files" / f"{scene}_every_5_rate_of_{rate}")
                self.items.extend((scene, int(rate), number, pair) for number, pair in enumerate(pairs))
        if not self.items:
            raise InputError(f"{self.root}: the pair lists for rates {rates} hold no pairs")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        scene, rate, number, pair = self.items[index]
        source = load_image_tensor(self.root / pair["source_image"])
        target = load_image_tensor(self.root / pair["target_image"])
        ht, wt = target.shape[-2:]
        xs, ys, xt, yt = (np.asarray(pair[key], np.float64).ravel() for key in ("Xs", "Ys", "Xt", "Yt"))
        if not xs.size == ys.size == xt.size == yt.size:
            raise InputError(f"{scene} rate {rate} pair {number}: Xs, Ys, Xt, Yt differ in length")
        col, row = np.round(xt).astype(np.int64), np.round(yt).astype(np.int64)
        keep = (col >= 0) & (col < wt) & (row >= 0) & (row < ht) & np.isfinite(xs) & np.isfinite(ys)
        flow = np.zeros((2, ht, wt), np.float32)
        mask = np.zeros((ht, wt), bool)
        flow[0, row[keep], col[keep]] = xs[keep] - xt[keep]
        flow[1, row[keep], col[keep]] = ys[keep] - yt[keep]
        mask[row[keep], col[keep]] = True
        flow_t = torch.from_numpy(flow)
        inside = inside_frame(flow_t[None] + coords_grid(1, ht, wt), tuple(source.shape[-2:]))[0]
        return {
            "source": source,
            "target": target,
            "flow": flow_t,
            "mask": torch.from_numpy(mask) & inside,
            "rate": rate,
            "scene": scene,
            "name": f"{scene}/rate_{rate}/{number:04d}",
        }
