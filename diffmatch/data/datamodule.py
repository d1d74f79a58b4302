"""LightningDataModule building training and validation pair datasets from a typed config."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from diffmatch.assets import resolve_photo_root
from diffmatch.data.benchmark import SyntheticBenchmark
from diffmatch.data.coco import CocoObjects
from diffmatch.data.corruptions import Corrupted
from diffmatch.data.csv_pairs import CSVWarpPairs
from diffmatch.data.eth3d import ETH3D, ETH3D_RATES
from diffmatch.data.generic import GenericPairs
from diffmatch.data.hpatches import HPatches
from diffmatch.data.mixture import MixedPairs
from diffmatch.data.moving_objects import MovingObjects, MovingObjectsConfig
from diffmatch.data.photometric import PhotometricConfig
from diffmatch.data.photos import bundled_photos
from diffmatch.data.scenes import SceneConfig, ScenePairs
from diffmatch.data.synthetic import SyntheticPairs
from diffmatch.data.warps import WarpConfig
from diffmatch.errors import InputError

__all__ = ["DataConfig", "PairDataModule", "build_dataset"]

DatasetName = Literal["synthetic", "scenes", "csv", "benchmark", "generic", "hpatches", "eth3d"]

# What a missing root means, per dataset: what it is, where to get it, the layout expected.
_NEEDS = {
    "csv": (
        "DPED-CityScape-ADE = one folder with original_images/ (DPED, http://people.ee.ethz.ch/~ihnatova/), "
        "CityScape/ and CityScape_extra/ (Cityscapes leftImg8bit trainvaltest and trainextra, "
        "https://www.cityscapes-dataset.com/) and ADE20K_2016_07_26/ (ADE20K 2016, link in GLU-Net's README), plus GLU-Net's "
        "homo_aff_tps_{train,test}_DPED_CityScape_ADE.csv (github.com/PruneTruong/GLU-Net, datasets/csv_files/)"
    ),
    "objects": (
        "COCO 2014 = a folder with annotations/instances_train2014.json and images/train2014/ "
        "(https://cocodataset.org/#download)"
    ),
    "hpatches": "HPatches = hpatches-sequences-release/ (https://github.com/hpatches/hpatches-dataset)",
    "eth3d": "ETH3D = GLU-Net's ETH3D folder (datasets/download_ETH3D.sh in github.com/PruneTruong/GLU-Net)",
    "generic": "a pair list file",
}


@dataclass
class DataConfig:
    """What one split reads. Every dataset yields ``source``, ``target``, ``flow`` (target grid,
    ``target(x) ≈ source(x + flow(x))``, pixels) and ``mask``.

    Args:
        dataset: ``synthetic`` (:class:`SyntheticPairs`), ``scenes`` (:class:`ScenePairs`, 3D scenes
            with depth), ``csv`` (:class:`CSVWarpPairs`, e.g. DPED-CityScape-ADE), ``benchmark``
            (:class:`SyntheticBenchmark`), ``generic`` (:class:`GenericPairs`), ``hpatches`` or ``eth3d``.
        root: image folder (synthetic, scenes, benchmark, csv; synthetic and scenes also take a list
            of folders), pair list file (generic) or dataset folder; ``None`` uses the bundled photos
            (``train`` for synthetic and scenes, ``val`` for benchmark) and, for the others, raises
            :class:`InputError` at construction naming the dataset, its download and its layout.
            For synthetic, scenes and benchmark, ``photos:train``, ``photos:val`` and ``photos:extra``
            name the bundled and the fetched photos wherever they are
            (:func:`diffmatch.assets.resolve_photo_root`), e.g. ``[photos:train, photos:extra]``.
        csv: csv only: the warp CSV, relative to ``root`` unless absolute.
        size: ``(H, W)`` for synthetic, benchmark and hpatches (``None``: original size, hpatches
            only); must be ``None`` for generic and eth3d, which keep their sizes.
        length: synthetic: number of pairs; benchmark: ``num_pairs`` (default 100).
        level: benchmark difficulty, ``easy``, ``medium`` or ``hard``.
        subset: hpatches sequences, ``viewpoint``, ``illumination`` or ``all``.
        rates: eth3d frame intervals.
        augment: synthetic photometric augmentation.
        supervise_out_of_frame: synthetic only: the mask also covers pixels whose match leaves the
            source frame (see :class:`SyntheticPairs`).
        photometric: synthetic and scenes only: its ranges (``None``: :class:`PhotometricConfig`
            defaults), e.g. ``{noise_probability: 0.3}`` to add sensor noise.
        scenes: the scene generator's ranges (:class:`SceneConfig`; ``None``: its defaults), for
            ``scenes`` and for the scene pairs mixed into ``synthetic``.
        scene_share: synthetic only: the share of items that are scene pairs from the same photos
            (:class:`MixedPairs`; 0: warps only), e.g. ``0.5`` to train on both.
        warp: synthetic warp ranges; ``None`` gives the DenseMatching defaults
            (``{preset: glunet}`` gives DPED-CityScape-ADE's distributions).
        objects: paste independently moving COCO objects (:class:`MovingObjects`) onto synthetic
            or csv pairs; ``None`` for none.
        corruptions: ImageNet-C corruptions applied to both images (see :class:`Corrupted`);
            ``None`` for none.
        severity: corruption severity 1–5.
        seed: seed of the generated pairs and corruptions.
    """

    dataset: DatasetName = "synthetic"
    root: str | list[str] | None = None
    csv: str | None = None
    size: tuple[int, int] | None = (256, 256)
    length: int | None = None
    level: Literal["easy", "medium", "hard"] = "medium"
    subset: Literal["viewpoint", "illumination", "all"] = "viewpoint"
    rates: tuple[int, ...] = ETH3D_RATES
    augment: bool = True
    supervise_out_of_frame: bool = False
    photometric: PhotometricConfig | None = None
    scenes: SceneConfig | None = None
    scene_share: float = 0.0
    warp: WarpConfig | None = None
    objects: MovingObjectsConfig | None = None
    corruptions: list[str] | None = None
    severity: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        # Fail when the config is read (LightningCLI builds it before the model), in one line naming
        # what is missing, where to download it and its layout.
        missing = []
        if self.dataset in _NEEDS and self.root is None:
            name = f"root of dataset {self.dataset!r} (data.train.root / data.val.root)"
            missing.append((name, _NEEDS[self.dataset]))
        if self.objects is not None and self.objects.root is None:
            missing.append(("objects.root (data.train.objects.root)", _NEEDS["objects"]))
        if missing:
            names = " and ".join(name for name, _ in missing)
            needs = "; ".join(need for _, need in missing)
            raise InputError(f"{names} not set: {needs}; see data/README.md")


def _photo_roots(root: str | list[str]) -> Path | list[Path]:
    """A config's image folder or folders, ``photos:NAME`` resolved (:func:`diffmatch.assets.resolve_photo_root`)."""
    if isinstance(root, (list, tuple)):
        return [resolve_photo_root(r) for r in root]
    return resolve_photo_root(root)


def build_dataset(config: DataConfig) -> Dataset:
    """Instantiate the dataset a :class:`DataConfig` describes (objects and corruption wrappers included)."""
    name = config.dataset
    if name in ("generic", "eth3d") and config.size is not None:
        raise InputError(f"size must be None for dataset {name!r} (it keeps image sizes), got {config.size}")
    if name in ("synthetic", "scenes", "benchmark", "csv") and config.size is None:
        raise InputError(f"dataset {name!r} needs a size (H, W), got None")
    if name in ("generic", "hpatches", "eth3d") and config.root is None:
        raise InputError(f"dataset {name!r} needs a root")
    if config.photometric is not None and name not in ("synthetic", "scenes"):
        raise InputError(f"photometric ranges apply to synthetic and scene pairs only, not to {name!r}")
    if config.scenes is not None and name not in ("synthetic", "scenes"):
        raise InputError(f"scene ranges apply to scenes and to synthetic pairs with a scene_share, not to {name!r}")
    if not 0.0 <= config.scene_share <= 1.0 or (config.scene_share > 0 and name != "synthetic"):
        raise InputError(f"scene_share must be in [0, 1] and is for synthetic pairs only, got {config.scene_share} for {name!r}")
    if config.supervise_out_of_frame and name != "synthetic":
        raise InputError(f"supervise_out_of_frame applies to synthetic pairs only, not to {name!r}")
    if config.objects is not None and name not in ("synthetic", "csv"):
        raise InputError(f"objects can be added to synthetic or csv pairs, not to {name!r}")
    if (config.csv is None) != (name != "csv"):
        raise InputError(
            f"csv must be set for dataset 'csv' and only for it, got dataset {name!r}, csv {config.csv!r}"
        )
    if isinstance(config.root, (list, tuple)) and name not in ("synthetic", "scenes"):
        raise InputError(f"dataset {name!r} takes one root, got a list of {len(config.root)}")
    if name == "synthetic":
        root = _photo_roots(config.root) if config.root is not None else bundled_photos("train")
        dataset: Dataset = SyntheticPairs(
            root,
            size=config.size,
            seed=config.seed,
            length=config.length,
            warp=config.warp,
            photometric=config.photometric,
            augment=config.augment,
            supervise_out_of_frame=config.supervise_out_of_frame,
        )
        if config.scene_share > 0:
            scenes = ScenePairs(
                root, size=config.size, seed=config.seed, length=config.length, scenes=config.scenes,
                photometric=config.photometric, augment=config.augment,
            )
            dataset = MixedPairs(dataset, scenes, config.scene_share, seed=config.seed)
    elif name == "scenes":
        root = _photo_roots(config.root) if config.root is not None else bundled_photos("train")
        dataset = ScenePairs(
            root, size=config.size, seed=config.seed, length=config.length, scenes=config.scenes,
            photometric=config.photometric, augment=config.augment,
        )
    elif name == "csv":
        dataset = CSVWarpPairs(
            config.root, Path(config.root) / config.csv, size=config.size, length=config.length,
            seed=config.seed,
        )
    elif name == "benchmark":
        root = _photo_roots(config.root) if config.root is not None else bundled_photos("val")
        dataset = SyntheticBenchmark(
            root, level=config.level, size=config.size, num_pairs=config.length or 100, seed=config.seed
        )
    elif name == "generic":
        dataset = GenericPairs(config.root)
    elif name == "hpatches":
        dataset = HPatches(config.root, size=config.size, subset=config.subset)
    elif name == "eth3d":
        dataset = ETH3D(config.root, rates=tuple(config.rates))
    else:
        raise InputError(
            f"unknown dataset {name!r}, expected one of synthetic, scenes, csv, benchmark, generic, hpatches, eth3d"
        )
    if config.objects is not None:
        objects = CocoObjects(
            config.objects.root, config.objects.split, config.objects.version, config.objects.min_area
        )
        dataset = MovingObjects(dataset, objects, config.objects, seed=config.seed)
    if config.corruptions:
        dataset = Corrupted(
            dataset, corruptions=config.corruptions, severity=config.severity, seed=config.seed
        )
    return dataset


class _EpochSampler(DistributedSampler):
    """A ``DistributedSampler`` whose ``set_epoch`` also reaches the dataset's ``set_epoch``.

    Lightning calls ``set_epoch`` on the loader's sampler before each epoch's iterator is made, so
    synthetic pairs get new warps every epoch; as the loader already holds a ``DistributedSampler``,
    Lightning keeps it under DDP instead of replacing it.
    """

    start = 0  # items of this rank's epoch order to skip (a mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        target = self.dataset.dataset if isinstance(self.dataset, Corrupted) else self.dataset
        if hasattr(target, "set_epoch"):
            target.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)


class _ResumableLoader(DataLoader):
    """A training ``DataLoader`` that Lightning checkpoints mid-epoch.

    It counts the batches it has served in the current epoch; Lightning stores :meth:`state_dict` in
    the checkpoint and hands it back through :meth:`load_state_dict` before the resumed run's first
    ``iter()``, which then starts after those batches instead of replaying the epoch from its start.
    The count includes the batch Lightning prefetches, so a resume skips at most that one batch.
    """

    sampler: _EpochSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0
        self._resume: dict[str, int] = {}

    def __iter__(self) -> Iterator[Any]:
        # Runs at the first next(), after Lightning's set_epoch: skip only within the saved epoch.
        skip = self._resume.get("batches", 0) if self._resume.get("epoch") == self.sampler.epoch else 0
        self.sampler.start = skip * self.batch_size
        self._served, self._resume = skip, {}
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)


class PairDataModule(L.LightningDataModule):
    """Training and validation pairs for LightningCLI (``--data.train.dataset hpatches`` ...).

    Defaults: synthetic pairs from ``bundled_photos("train")`` for training and the ``medium``
    :class:`SyntheticBenchmark` on the held-out ``bundled_photos("val")`` for validation.

    Determinism under DDP and workers: every item is a pure function of ``(seed, epoch, index)``;
    the training sampler is a shuffling ``DistributedSampler`` (seeded with ``train.seed``) for the
    trainer's world size and rank, so ranks see disjoint, reproducible items whatever the number of
    workers, and its ``set_epoch`` forwards the epoch to the dataset. Workers are therefore not
    persistent: each epoch's workers receive the dataset with the current epoch.

    Args:
        train: training split config (default: synthetic on the bundled train photos).
        val: validation split config (default: medium synthetic benchmark on the bundled val photos).
        batch_size: training batch size.
        val_batch_size: validation batch size; default ``batch_size`` for synthetic and benchmark
            data and 1 for real datasets, whose images differ in size.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster GPU transfer.

    Batches are dicts of ``source``, ``target`` ``(B, 3, H, W)``, ``flow`` ``(B, 2, H, W)``, ``mask``
    ``(B, H, W)`` plus per-dataset extras (``name``, ``rate``, ...).
    """

    def __init__(
        self,
        train: DataConfig | None = None,
        val: DataConfig | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise InputError(f"batch sizes must be >= 1, got {batch_size} and {val_batch_size}")
        if num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {num_workers}")
        self.train_config = train if train is not None else DataConfig("synthetic")
        self.val_config = val if val is not None else DataConfig("benchmark")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets needed by ``stage`` (``fit``, ``validate``, ... or ``None`` for all)."""
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = build_dataset(self.train_config)
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = build_dataset(self.val_config)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        world_size, rank = self._rank()
        sampler = _EpochSampler(
            self.train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=self.train_config.seed
        )
        trainer = getattr(self, "trainer", None)
        sampler.set_epoch(trainer.current_epoch if trainer is not None else 0)
        return _ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=True,
            persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        batch_size = self.val_batch_size
        if batch_size is None:
            batch_size = self.batch_size if self.val_config.dataset in ("synthetic", "scenes", "benchmark") else 1
        return DataLoader(
            self.val_set,
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
