"""Record what ``DiffMatcher.match`` returns today, as the fixture ``tests/test_pipeline_reference.py`` holds the code to.

Written before the package was restructured (issue #28) so that the change can be shown not to alter
behaviour: the bundled default of the time, now the default's stage 1 ``diffmatch_xfeat.pt``
(calibrated, refined, 3 hypotheses, seed 0; the ``"default"`` entry) on two small pairs, its
unrefined flow and every confidence cue, and a tiny random cascade (stage 1 + flow upsampler, built from
seed 0 as the tests' ``tiny_config`` does) with its cues. Flow on the target grid, ``target(x) ≈ source(x + flow(x))``, px.

    python scripts/make_pipeline_reference.py tests/fixtures/pipeline_reference.pt

Run with one PyTorch thread (the script sets it): the refinement can grow last-bit differences between
thread counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from diffmatch.assets import photo_folder, sample_pair

ROOT = Path(__file__).resolve().parents[1]


def reference_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two small pairs from files the package ships: the sample pair (sizes differ) and a shifted held-out photo."""

    def read(path: Path, size: tuple[int, int]) -> np.ndarray:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255

    source, target = sample_pair()
    left = read(source, (128, 86))
    right = read(target, (112, 80))
    photo = read(photo_folder("val") / "coffee.jpg", (144, 112))
    return [(tensor(left), tensor(right)), (tensor(photo[:96, :128]), tensor(photo[9:105, 13:141]))]


def tiny_cascade() -> torch.nn.Module:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_config

    from diffmatch.models.config import UpsamplerConfig
    from diffmatch.models.diffmatch import DiffMatch

    torch.manual_seed(0)
    model = DiffMatch(tiny_config(), UpsamplerConfig(size=32, radius=2))
    for module in (model.denoiser, model.upsampler.denoiser):
        torch.nn.init.normal_(module.unet.conv_out.weight, std=0.05)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from diffmatch.assets import bundled_stage1
    from diffmatch.confidence.cues import match_with_cues
    from diffmatch.matcher import DiffMatcher

    matcher = DiffMatcher.from_checkpoint(bundled_stage1(), device="cpu")
    cascade = tiny_cascade()
    record: dict = {"pairs": reference_pairs(), "default": [], "cascade": []}
    for source, target in record["pairs"]:
        # One pass: the fixture pins the single-pass path (two-pass matching has its own tests).
        gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        result = matcher.match(source, target, num_samples=3, generator=gen(), two_pass=False, layer_search=False)
        raw = matcher.match(source, target, num_samples=3, generator=gen(), refine=False, two_pass=False, layer_search=False)
        _, cues = match_with_cues(matcher.model, source, target, 3, None, 0.0, torch.Generator().manual_seed(0))
        cues.pop("variance")  # the refined samples' variance, which the samples give
        record["default"].append({
            "samples": result.samples, "init_flow": result.init_flow, "confidence": result.confidence,
            "raw_samples": raw.samples, "cues": cues,
        })
        fine, fine_cues = match_with_cues(cascade, source, target, 2, None, 0.0, torch.Generator().manual_seed(0))
        record["cascade"].append({"samples": fine.samples, "init_flow": fine.init_flow, "cues": fine_cues})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
