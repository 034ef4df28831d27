"""The key-flip diffusion core (paper §2, eqs. 2–7): plain functions of (model, x, schedule).

anonymize and deanonymize are the same computation: encode, DDIM-invert keeping every z_t,
flip the signs of z_T inside the mask, denoise re-injecting the z_t outside the mask, decode.
The flip is an involution (r ⊙ r = 1), so running it twice with the same key restores the face.
The schedule is made once per run (`make_schedule`) and passed in, as k-diffusion's samplers take
their sigmas: a restoration rebuilds it from the settings its manifest recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Schedule:
    """DDIM timesteps in denoising order (e.g. 980, 960, …, 0) with ᾱ at t and at the step below it."""

    timesteps: tuple[int, ...]
    alpha: torch.Tensor  # ᾱ_t, float64
    alpha_prev: torch.Tensor  # ᾱ of the next timestep down; 1.0 after t = 0 (set_alpha_to_one)


def make_schedule(scheduler_config: dict, steps: int) -> Schedule:
    """Timesteps and ᾱ exactly as diffusers' DDIMScheduler computes them for this config."""
    from diffusers import DDIMScheduler

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sched = DDIMScheduler(**scheduler_config)
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod.double()
    ts = [int(t) for t in sched.timesteps]
    prev = [t - sched.config.num_train_timesteps // steps for t in ts]
    final = 1.0 if sched.config.set_alpha_to_one else float(acp[0])
    alpha_prev = torch.tensor([float(acp[p]) if p >= 0 else final for p in prev], dtype=torch.float64)
    return Schedule(tuple(ts), acp[ts], alpha_prev)


def ddim_step(z: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float) -> torch.Tensor:
    """Deterministic DDIM (σ = 0) from noise level ᾱ = a_from to a_to: eq. 2 going down, eq. 3 going up.

    z_to = √(ᾱ_to/ᾱ_from)·z + √ᾱ_to·(√(1/ᾱ_to − 1) − √(1/ᾱ_from − 1))·ε, the paper's eqs. 2–3 with the
    √ᾱ_to factor on the ε term that its typeset eq. 2 drops (DDIM paper eq. 13; diffusers' step).
    """
    c_eps = math.sqrt(a_to) * (math.sqrt(1 / a_to - 1) - math.sqrt(1 / a_from - 1))
    return torch.add(z * math.sqrt(a_to / a_from), eps, alpha=c_eps)


def invert(model, z0: torch.Tensor, sched: Schedule) -> list[torch.Tensor]:
    """DDIM inversion (eq. 3), visiting t = 0 … T. Returns [z_0, z_t1, …, z_T], all kept for re-injection."""
    zs = [z0]
    for t, a_to, a_from in zip(reversed(sched.timesteps), reversed(sched.alpha.tolist()), reversed(sched.alpha_prev.tolist())):
        zs.append(ddim_step(zs[-1], model.eps(zs[-1], t), a_from, a_to))
    return zs


def denoise(model, z: torch.Tensor, sched: Schedule, mask: torch.Tensor | None = None,
            ref: list[torch.Tensor] | None = None) -> torch.Tensor:
    """DDIM denoising (eq. 2), visiting t = T … 0. With mask and ref (the inversion's z_t), re-inject
    ref outside the mask after every step (eq. 5 / eq. 7)."""
    n = len(sched.timesteps)
    for i, (t, a, a_prev) in enumerate(zip(sched.timesteps, sched.alpha.tolist(), sched.alpha_prev.tolist())):
        z = ddim_step(z, model.eps(z, t), a, a_prev)
        if mask is not None:
            z = torch.where(mask, z, ref[n - 1 - i])  # eq. 5: M⊙z + (1−M)⊙ref, ref at the same noise level
    return z


def flip(z: torch.Tensor, mask: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Eq. 4 / eq. 6: z ↦ M ⊙ (r ⊙ z) + (1 − M) ⊙ z for a boolean M. Exact in any dtype (a sign change is)."""
    return torch.where(mask, z * signs, z)


def _check(model, x: torch.Tensor, mask: torch.Tensor, signs: torch.Tensor) -> None:
    c, h, w = model.latent_shape
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(model.image_shape):
        raise ValueError(f"faces must be (B, {', '.join(map(str, model.image_shape))}), got {tuple(x.shape)}")
    b = x.shape[0]
    if tuple(mask.shape) != (b, h, w):
        raise ValueError(f"mask must be (B, {h}, {w}) at latent resolution for B={b}, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be binary (0/1): the flip is an involution only for a binary mask")
    if tuple(signs.shape) != (b, c * h * w):
        raise ValueError(f"signs must be (B, {c * h * w}) for this model, got {tuple(signs.shape)}")
    if not bool((signs.abs() == 1).all()):
        raise ValueError("signs must be ±1")


def _to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`t` on the model's device: from pinned memory without waiting where that is a GPU (the copy is queued)."""
    t = t.to(dtype)
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@torch.no_grad()
def flip_faces(model, x: torch.Tensor, mask: torch.Tensor, signs: torch.Tensor, sched: Schedule) -> torch.Tensor:
    """Anonymize (or, given an anonymized face and the same key, de-anonymize) a batch of aligned faces.

    x: (B, 3, 256, 256) in [-1, 1]; mask: (B, h, w) in {0, 1} at latent resolution; signs: (B, C·h·w) ±1,
    one row per face (faces of different tracks, hence keys, share a batch). Returns (B, 3, 256, 256) on the
    model's device, in its memory format.

    The values of mask and signs are checked once per batch, before the step loop, and nothing after that reads a
    device value back on the host: given them on the host (as the pipeline does), a GPU never waits for the host
    between its first kernel and the result.
    """
    _check(model, x, mask, signs)
    dev, fmt = model.device, getattr(model, "memory_format", torch.contiguous_format)
    x = _to_device(x, dev, torch.float32)
    m = _to_device(mask, dev, torch.bool)[:, None]  # binary M, broadcast over channels
    r = _to_device(signs, dev, torch.float32).reshape(x.shape[0], *model.latent_shape)  # C-order: (channel, row, column)
    r = r.contiguous(memory_format=fmt)  # the latents' layout, so the flip mixes no layouts
    zs = invert(model, model.encode(x), sched)
    z = denoise(model, flip(zs[-1], m, r), sched, m, zs)
    del zs  # the original's intermediates are erased as soon as they are used (paper §2.3)
    return model.decode(z).clamp(-1, 1)


anonymize_faces = flip_faces
deanonymize_faces = flip_faces
