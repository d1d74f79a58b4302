"""Diffusion on flow fields: forward noising for training and DDIM sampling, on diffusers' scheduler."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

__all__ = [
    "FlowDiffusion",
    "Generators",
    "clamp_mean",
    "derive_generators",
    "draw_noise",
    "expand_generators",
    "split_generators",
]

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | list[torch.Generator] | None


def draw_noise(
    shape: tuple[int, ...], generator: Generators, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise of ``shape = (B, ...)``, drawn item by item.

    Drawing per item makes item ``i`` of a batch depend only on its own generator (or, with one
    shared generator, on the items before it), so batch size 1 and N give the same first sample.

    Args:
        shape: output shape; the first dimension is the batch.
        generator: one generator, one per item, or ``None`` (the global RNG).
        device: output device. Noise is drawn on the generator's device and moved.
        dtype: output dtype.
    """
    batch = shape[0]
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
    items = []
    for i in range(batch):
        gen = generator[i] if isinstance(generator, list) else generator
        gen_device = gen.device if gen is not None else device
        items.append(torch.randn(shape[1:], generator=gen, device=gen_device, dtype=torch.float32))
    return torch.stack(items).to(device=device, dtype=dtype)


def clamp_mean(samples: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """Hypotheses moved so that their mean is clamped to ``[-bound, bound]``, as the official code clamps.

    The official sampler averages its ``N`` hypotheses and clamps that mean to ``[-1, 1]``
    (``ddim_sample_loop``, then ``run_sample_lr``); clamping each hypothesis instead differs
    wherever they straddle the bound. Every hypothesis of a pixel is moved by the same amount, the
    mean's clamp there: the mean becomes the official flow, and the spread (the uncertainty) is kept.

    Args:
        samples: ``(B, N, 2, h, w)`` normalised flows (target grid, ``target(x) ≈ source(x + flow(x))``).
        bound: the clamp.

    Returns:
        ``(B, N, 2, h, w)``, the same hypotheses shifted per pixel and component.
    """
    if samples.ndim != 5 or samples.shape[2] != 2:
        raise ValueError(f"samples must be (B, N, 2, h, w), got {tuple(samples.shape)}")
    mean = samples.mean(dim=1, keepdim=True)
    return samples + (mean.clamp(-bound, bound) - mean)


def expand_generators(
    generator: Generators, batch: int, num_samples: int, device: torch.device
) -> Generators:
    """One generator per (item, hypothesis), derived so that item i's samples do not depend on the batch."""
    if generator is None:
        return None
    per_item = generator if isinstance(generator, list) else [generator] * batch
    if len(per_item) != batch:
        raise ValueError(f"got {len(per_item)} generators for a batch of {batch}")
    out = []
    for gen in per_item:
        seeds = torch.randint(0, 2**62, (num_samples,), generator=gen, device=gen.device).tolist()
        for seed in seeds:
            child = torch.Generator(device=gen.device)
            child.manual_seed(int(seed))
            out.append(child)
    return out


def split_generators(generator: Generators, batch: int) -> tuple[Generators, Generators]:
    """Two independent generators per item (stage 1, stage 2), each item drawing from its own source in turn."""
    if generator is None:
        return None, None
    per_item = generator if isinstance(generator, list) else [generator] * batch
    if len(per_item) != batch:
        raise ValueError(f"got {len(per_item)} generators for a batch of {batch}")
    first, second = [], []
    for gen in per_item:
        seeds = torch.randint(0, 2**62, (2,), generator=gen, device=gen.device).tolist()
        first.append(torch.Generator(device=gen.device).manual_seed(int(seeds[0])))
        second.append(torch.Generator(device=gen.device).manual_seed(int(seeds[1])))
    return first, second


def derive_generators(generator: Generators) -> Generators:
    """Fresh generators seeded from ``generator`` (one per item, or one), e.g. for a reverse pass."""
    if generator is None:
        return None
    gens = generator if isinstance(generator, list) else [generator]
    derived = [
        torch.Generator(device=g.device).manual_seed(int(torch.randint(0, 2**62, (), generator=g, device=g.device)))
        for g in gens
    ]
    return derived if isinstance(generator, list) else derived[0]


class FlowDiffusion:
    """The DiffMatch noise schedule and DDIM sampler.

    ``DDIMScheduler(num_train_timesteps=5, beta_schedule="squaredcos_cap_v2", prediction_type="sample")``
    reproduces the official DiffMatch betas (improved-DDPM cosine schedule, ``T = 5``); the network
    predicts ``x0`` (the clean flow). ``n`` sampling steps visit ``n`` timesteps evenly spaced from
    ``T - 1`` down to ``0`` (:meth:`visited_timesteps`, the official code's respacing; one step visits
    ``T - 1``) and end with ``alpha_bar_prev = 1``.

    The process runs on ``flow_scale`` times the normalised flow: clean flows go in and come out
    normalised, and only the noisy samples ``F_t`` live in the scaled space. Normalised flows are
    small (a 10 px shift at 256² is 0.04) next to unit-variance noise; a scale of about 10 puts the
    flow and the noise on a par, as latent diffusion scales its latents. ``1`` is the paper's setting.

    Args:
        num_train_timesteps: ``T``.
        beta_schedule: diffusers beta schedule name.
        flow_scale: factor from normalised flow to the diffusion space.
    """

    def __init__(
        self, num_train_timesteps: int = 5, beta_schedule: str = "squaredcos_cap_v2", flow_scale: float = 1.0
    ) -> None:
        if flow_scale <= 0:
            raise ValueError(f"flow_scale must be > 0, got {flow_scale}")
        self.num_train_timesteps = num_train_timesteps
        self.flow_scale = float(flow_scale)
        self.scheduler = DDIMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            prediction_type="sample",
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="trailing",
        )

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """``F_t = sqrt(ᾱ_t) s F_0 + sqrt(1 - ᾱ_t) z`` (paper Eq. 6, ``s = flow_scale``), per item ``timestep`` ``(B,)``."""
        return self.scheduler.add_noise(clean * self.flow_scale, noise, timestep)

    def sample_timesteps(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform training timesteps in ``[0, T)``."""
        return torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=device)

    def sample(
        self,
        denoise: Denoise,
        shape: tuple[int, ...],
        num_steps: int = 5,
        eta: float = 0.0,
        generator: Generators = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        init_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run DDIM from pure noise (paper Eq. 3 / Eq. 7).

        Args:
            denoise: ``denoise(F_t, t) -> F_0`` with ``F_t`` (scaled) of ``shape``, ``t`` of shape ``(B,)``
                and ``F_0`` normalised.
            shape: ``(B, 2, h, w)``.
            num_steps: number of DDIM steps, ``1 <= num_steps <= T``.
            eta: DDIM stochasticity (0: deterministic given the initial noise).
            generator: seeds, see :func:`draw_noise`.
            device: device of the samples.
            dtype: dtype of the samples.
            init_noise: starting noise ``F_T`` of ``shape`` (``None``: drawn from ``generator``).

        Returns:
            The final normalised ``F_0`` estimate, of ``shape``.
        """
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_timesteps}], got {num_steps}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if init_noise is not None and tuple(init_noise.shape) != tuple(shape):
            raise ValueError(f"init_noise must have shape {tuple(shape)}, got {tuple(init_noise.shape)}")
        device = torch.device(device)
        # All noise is drawn up front, per item, so results do not depend on the batch composition.
        noise = draw_noise((shape[0], num_steps + 1, *shape[1:]), generator, device, dtype)
        start = noise[:, 0] if init_noise is None else init_noise.to(device=device, dtype=dtype)
        return self.sample_from(denoise, start, num_steps, eta, noise[:, 1:])

    def sample_from(
        self,
        denoise: Denoise,
        start: torch.Tensor,
        num_steps: int,
        eta: float = 0.0,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The DDIM loop from a given starting noise ``F_T``; a pure function of its inputs when ``eta = 0``.

        :meth:`sample` draws the noise and calls this; the ONNX export
        (:mod:`diffmatch.models.onnx`) traces it with the steps unrolled and ``start`` as an input.

        Args:
            denoise: ``denoise(F_t, t) -> F_0``, as in :meth:`sample`.
            start: ``(B, 2, h, w)`` standard normal ``F_T``.
            num_steps: number of DDIM steps, ``1 <= num_steps <= T``.
            eta: DDIM stochasticity.
            step_noise: ``(B, num_steps, 2, h, w)`` noise of each step; needed only when ``eta > 0``.

        Returns:
            The final normalised ``F_0`` estimate, ``(B, 2, h, w)``.
        """
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_timesteps}], got {num_steps}")
        if eta > 0 and step_noise is None:
            raise ValueError("eta > 0 needs step_noise")
        sample = start * self.scheduler.init_noise_sigma
        timesteps = self.visited_timesteps(num_steps)
        for i, t in enumerate(timesteps):
            timestep = torch.full((start.shape[0],), t, device=start.device, dtype=torch.long)
            clean = denoise(sample, timestep) * self.flow_scale
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            noise = None if step_noise is None else step_noise[:, i]
            sample = self.ddim_step(clean, sample, t, prev, eta, noise)
        return sample / self.flow_scale

    def visited_timesteps(self, num_steps: int) -> list[int]:
        """The timesteps ``num_steps`` DDIM steps visit: evenly spaced from ``T - 1`` to ``0``, rounded.

        E.g. ``[4, 3, 2, 1, 0]``, ``[4, 2, 0]``, ``[4, 0]`` and ``[4]`` for ``T = 5``.
        """
        last = self.num_train_timesteps - 1
        if num_steps == 1:
            return [last]
        return [round(last - i * last / (num_steps - 1)) for i in range(num_steps)]

    def ddim_step(
        self, clean: torch.Tensor, sample: torch.Tensor, t: int, prev: int, eta: float, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """One DDIM update from timestep ``t`` to ``prev`` (paper Eq. 3); ``prev = -1`` means ``ᾱ = 1``.

        ``prev`` is the next timestep the sampler visits. diffusers' ``DDIMScheduler.step`` assumes
        ``prev = t - T // num_steps``, which is not the next visited timestep when the steps skip
        unevenly (2, 3 or 4 of 5); the update is therefore written out here.

        Args:
            clean: the predicted ``x0`` (scaled like ``sample``).
            sample: ``x_t``.
            t: current timestep.
            prev: next timestep, or ``-1`` after the last.
            eta: DDIM stochasticity.
            noise: standard normal noise of ``sample``'s shape (used, and needed, when ``eta > 0``).
        """
        alphas = self.scheduler.alphas_cumprod
        a_t = alphas[t].to(sample.device, torch.float32)
        a_prev = alphas[prev].to(sample.device, torch.float32) if prev >= 0 else torch.ones_like(a_t)
        sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
        eps = (sample - a_t.sqrt() * clean) / (1 - a_t).sqrt()
        out = a_prev.sqrt() * clean + (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise")
            out = out + sigma * noise
        return out.to(sample.dtype)
