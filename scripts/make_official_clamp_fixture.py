"""Write ``tests/fixtures/official_clamp.pt`` by running the official DiffMatch sampling loop itself.

    git clone https://github.com/KU-CVLAB/DiffMatch /tmp/DiffMatch && git -C /tmp/DiffMatch checkout 045ea83
    python scripts/make_official_clamp_fixture.py --official /tmp/DiffMatch --out tests/fixtures/official_clamp.pt

The official stage-1 sampler (``improved_diffusion.gaussian_diffusion.ddim_sample_loop`` with
``n_batch`` hypotheses, as ``evaluation.run_sample_lr`` calls it) averages the hypotheses' final
``x0`` predictions and clamps that mean to [-1, 1]. ``tests/fixtures/official_parity.pt`` never
reaches the bound; this fixture does. Its inputs:

* the reduced-width stage-1 U-Net of ``official_parity.pt`` (``create_model`` at ``image_size=64``,
  ``model_channels=4``, 3 res blocks, attention at ds 4 and 8, 4 heads, GroupNorm with 4 groups),
  built from the official ``improved_diffusion`` package of the checkout given with ``--official``
  (imported from there, not copied), with its weights and its final conv (``out.2``) scaled by
  ``--residual-scale`` so that the predicted residuals are large;
* an ``F_init`` of that fixture moved by ``--init-shift`` in x (a flow near the image's right edge,
  normalised) and a seeded random local cost (any tensors serve: both implementations get the same);
* ``create_gaussian_diffusion(steps=5, noise_schedule="cosine", predict_xstart=True,
  rescale_timesteps=True)``, ``clip_denoised=False``, eta 0, 3 hypotheses, seed ``--seed``.

It stores the inputs (float16-exact), the starting noise the loop drew, the three hypotheses' final
``x0`` predictions, and the official final sample. Only torch and numpy are needed besides the checkout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", required=True, help="a checkout of KU-CVLAB/DiffMatch at 045ea83")
    parser.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "official_clamp.pt"))
    parser.add_argument("--parity", default=str(ROOT / "tests" / "fixtures" / "official_parity.pt"))
    parser.add_argument("--residual-scale", type=float, default=10.0)
    parser.add_argument("--init-shift", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(args.official) / "train_settings" / "DiffMatch"))
    from improved_diffusion import nn as official_nn  # the official code
    from improved_diffusion import script_util, unet

    unet.normalization = lambda channels: official_nn.GroupNorm32(4, channels)  # 32 groups need >= 32 channels
    model = script_util.create_model(
        64, 4, 3, learn_sigma=False, class_cond=False, use_checkpoint=False, attention_resolutions="16,8",
        num_heads=4, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, device="cpu",
        train_mode="stage_1",
    ).eval()
    parity = torch.load(args.parity, map_location="cpu", weights_only=True)
    state = {k: v.float() for k, v in parity["stage1_state_dict"].items()}
    for key in ("out.2.weight", "out.2.bias"):
        state[key] = state[key] * args.residual_scale
    model.load_state_dict(state, strict=True)
    diffusion = script_util.create_gaussian_diffusion(
        steps=5, noise_schedule="cosine", predict_xstart=True, rescale_timesteps=True
    )

    generator = torch.Generator().manual_seed(args.seed)
    init_flow = parity["stage1_init_flow"].float().clone()
    init_flow[:, 0] += args.init_shift
    init_flow = init_flow.half().float()
    local_cost = (torch.rand(1, 81, 16, 16, generator=generator) * 2 - 1).half().float()

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x, t, **kwargs):  # noqa: ANN001, ANN003, ANN201 - the official call signature
            out = self.inner(x, t, **kwargs)
            calls.append((x.detach().clone(), out.detach().clone()))
            return out

    torch.manual_seed(args.seed)
    with torch.no_grad():
        sample, _ = diffusion.ddim_sample_loop(
            Recorder(), (1, 2, 16, 16), clip_denoised=False,
            model_kwargs={"y": None, "local_corr": local_cost, "init_flow": init_flow}, eta=0.0, n_batch=3,
        )
    hypotheses = calls[-1][1]  # the last step's x0 predictions, (3, 2, 16, 16)
    over = (hypotheses.abs() > 1).any(0).any(0)
    straddle = ((hypotheses > 1).any(0) & (hypotheses < 1).any(0)) | ((hypotheses < -1).any(0) & (hypotheses > -1).any(0))
    each = hypotheses.clamp(-1, 1).mean(0, keepdim=True)
    print(f"pixels with a hypothesis beyond the bound: {int(over.sum())}; straddling it: {int(straddle.sum())}; "
          f"max |official - mean of clamped hypotheses| = {(sample - each).abs().max():.4f}")
    torch.save(
        {
            "residual_scale": args.residual_scale,
            "init_flow": init_flow,
            "local_cost": local_cost,
            "noise": calls[0][0],
            "hypotheses": hypotheses,
            "sample": sample,
        },
        args.out,
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
