"""Training and evaluation data: synthetic pairs, real benchmarks, corruptions and the DataModule.

Every dataset yields dicts with ``source`` and ``target`` ``(3, H, W)`` float32 images in ``[0, 1]``,
``flow`` ``(2, Ht, Wt)`` float32 on the target grid with ``target(x) ≈ source(x + flow(x))`` (pixels,
channel 0 = x, pixel centres at integers, ``align_corners=False``) and ``mask`` ``(Ht, Wt)`` bool
(ground truth defined and landing inside the source frame).

=========================  ==================================================================
``SyntheticPairs``         on-the-fly warped pairs from any photo folder (training)
``CSVWarpPairs``           DGC-Net/GLU-Net CSV rows over original photos (DPED-CityScape-ADE)
``MovingObjects``          independently moving COCO objects pasted onto any pair dataset
``ScenePairs``             on-the-fly 3D scene pairs with depth, parallax, occlusion and pose (training)
``SceneBenchmark``         fixed stereo/medium/wide scene pairs with depth and pose (evaluation)
``MixedPairs``             two pair datasets mixed by a seeded share (warps and scenes in one stream)
``SyntheticBenchmark``     fixed HPatches-like easy/medium/hard homography pairs (evaluation)
``GenericPairs``           pairs listed in a text file with flow files
``HPatches``, ``ETH3D``    the standard real benchmarks
``MegaDepth1500``          LoFTR's MegaDepth-1500 relative-pose pairs (images, K, R, t; no flow)
``ScanNet1500``            LoFTR's ScanNet-1500 relative-pose pairs at 640×480 (images, K, R, t)
``Corrupted``, ``corrupt`` ImageNet-C corruptions of any pair dataset
``PairDataModule``         LightningDataModule configured by ``DataConfig`` per split
``bundled_photos``         the photos shipped in ``diffmatch/assets/photos/{train,val}``
=========================  ==================================================================
"""

from diffmatch.data.benchmark import BENCHMARK_LEVELS, SyntheticBenchmark
from diffmatch.data.coco import CocoObjects
from diffmatch.data.corruptions import CORRUPTIONS, SEVERITIES, Corrupted, corrupt
from diffmatch.data.csv_pairs import CSVWarpPairs
from diffmatch.data.eth3d import ETH3D, ETH3D_RATES, ETH3D_SCENES, load_eth3d_pairs
from diffmatch.data.generic import GenericPairs
from diffmatch.data.hpatches import HPATCHES_SUBSETS, HPatches
from diffmatch.data.mixture import MixedPairs
from diffmatch.data.moving_objects import MovingObjects, MovingObjectsConfig
from diffmatch.data.photometric import PhotometricConfig, photometric_augment
from diffmatch.data.photos import bundled_photos, list_images, load_image_tensor
from diffmatch.data.pose_benchmarks import MegaDepth1500, ScanNet1500
from diffmatch.data.scenes import MOTIONS, SCENE_LEVELS, SceneBenchmark, SceneConfig, ScenePairs
from diffmatch.data.synthetic import SyntheticPairs, inside_frame
from diffmatch.data.warps import WARP_TYPES, WarpConfig, sample_elastic, sample_mapping

__all__ = [
    "BENCHMARK_LEVELS",
    "CORRUPTIONS",
    "CSVWarpPairs",
    "CocoObjects",
    "Corrupted",
    "DataConfig",
    "ETH3D",
    "ETH3D_RATES",
    "ETH3D_SCENES",
    "GenericPairs",
    "HPATCHES_SUBSETS",
    "HPatches",
    "MegaDepth1500",
    "MOTIONS",
    "MixedPairs",
    "MovingObjects",
    "MovingObjectsConfig",
    "PairDataModule",
    "PhotometricConfig",
    "SCENE_LEVELS",
    "SEVERITIES",
    "SceneBenchmark",
    "SceneConfig",
    "ScenePairs",
    "ScanNet1500",
    "SyntheticBenchmark",
    "SyntheticPairs",
    "WARP_TYPES",
    "WarpConfig",
    "build_dataset",
    "bundled_photos",
    "corrupt",
    "inside_frame",
    "list_images",
    "load_eth3d_pairs",
    "load_image_tensor",
    "photometric_augment",
    "sample_elastic",
    "sample_mapping",
]

_LAZY = {"DataConfig", "PairDataModule", "build_dataset"}


def __getattr__(name: str) -> object:
    # The DataModule needs Lightning, whose import takes seconds: load it only when asked for, so
    # that inference and evaluation start fast.
    if name in _LAZY:
        from diffmatch.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

