"""Diffusion models: the three functions the core needs (docs/design.md, "Models").

A model here is anything with `encode`, `decode`, `eps` and a scheduler config. Two kinds:
- `LatentDiffusion`: a diffusers UNet2DModel + VQModel (the paper's FFHQ LDM, CompVis CelebA-HQ),
  from the Hugging Face hub cache or a local directory;
- `GaussianModel` (`testing:gaussian`): a closed-form model with exact answers, for tests and for trying
  the mechanics offline. It produces no realistic faces.

Where weights come from (hub ids, aliases, caches) is `weights.py`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import compiling
from .device import torch_device
from .errors import ModelNotFoundError
from .weights import DEFAULT_MODEL, fetch_model

# Scheduler of the CompVis LDMs (CelebA-HQ 256, FFHQ 256), used when a model folder has none (docs/design.md).
COMPVIS_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0015,
    "beta_end": 0.0195,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "leading",
}
# Keys of a diffusers scheduler config that change the DDIM step math; everything else is ignored.
SCHEDULER_KEYS = tuple(COMPVIS_SCHEDULER)


@dataclass(eq=False)
class GaussianModel:
    """Closed-form model: lossless autoencoder and the optimal ε-predictor for a Gaussian prior (docs/design.md, "Testing without weights").

    E = pixel-unshuffle by 4 (3×256×256 → 48×64×64), D = pixel-shuffle, so D(E(x)) = x exactly.
    For data ~ N(mean, std²) per element the optimal noise prediction is
    ε*(z_t, t) = √(1−ᾱ_t)(z_t − √ᾱ_t·mean) / (ᾱ_t·std² + 1 − ᾱ_t),
    so the only error left in a round trip is DDIM's own discretization.
    """

    mean: float = 0.0
    std: float = 0.5
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    name: str = "testing:gaussian"
    scheduler_config: dict = field(default_factory=lambda: dict(COMPVIS_SCHEDULER))
    latent_shape: tuple[int, int, int] = (48, 64, 64)
    image_shape: tuple[int, int, int] = (3, 256, 256)
    dtype: torch.dtype = torch.float32
    digest: str = "closed-form"

    def __post_init__(self):
        from diffusers import DDIMScheduler

        self._acp = DDIMScheduler(**self.scheduler_config).alphas_cumprod.double()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, 4)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, 4)

    def eps(self, z: torch.Tensor, t: int) -> torch.Tensor:
        a = float(self._acp[int(t)])
        # computed in the model's dtype, as a network would be, so reduced precision shows in round trips
        zd = z.to(self.dtype)
        return ((zd - math.sqrt(a) * self.mean) * (math.sqrt(1 - a) / (a * self.std**2 + 1 - a))).float()


class LatentDiffusion:
    """A diffusers UNet2DModel (ε-prediction) + VQModel pair."""

    def __init__(self, unet, vqvae, scheduler_config: dict, *, name: str, digest: str, device, dtype,
                 compile: bool | None = None, compile_mode: str | None = None, vq_dtype: torch.dtype = torch.float32,
                 memory_format: torch.memory_format | None = None):
        """compile: torch.compile the UNet and the VQ autoencoder (None: on a CUDA GPU; compiling.py), the UNet with
        torch.compile's `compile_mode`. vq_dtype and memory_format (default channels_last on a GPU) are for
        measuring their effect (benchmarks/gpu_check.py); the defaults are what docs/benchmarks.md measured."""
        self.device, self.dtype, self.vq_dtype = torch.device(device), dtype, vq_dtype
        # channels_last lets cuDNN pick its fastest (NHWC tensor-core) convolutions on GPUs. The whole core keeps
        # one memory format: the latents, the flip's mask and signs, the UNet's and the VQ's inputs and outputs.
        if memory_format is None:
            memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.memory_format = memory_format
        # Cast only when needed: ModelMixin.to(dtype) warns even when the dtype does not change.
        unet = unet if unet.dtype == dtype else unet.to(dtype)
        vqvae = vqvae if vqvae.dtype == vq_dtype else vqvae.to(vq_dtype)
        self.unet = unet.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
        # The VQ autoencoder stays in fp32 (TF32 on GPUs) by default: it is ~5 % of the FLOPs, and the encode/decode
        # at both ends of a restoration is where reduced precision would cost fidelity. The UNet runs in `dtype`.
        self.vqvae = vqvae.to(device=device, memory_format=memory_format).eval().requires_grad_(False)
        self.compiled = compiling.wanted(compile, self.device)
        self._unet_call, self._encode_call, self._decode_call = self.unet, self._vq_encode, self._vq_decode
        if self.compiled:  # the VQ without CUDA graphs: it runs once per batch, and its graph pool would be large
            self._unet_call = compiling.compiled(self.unet, compile_mode)
            self._encode_call, self._decode_call = compiling.compiled(self._vq_encode), compiling.compiled(self._vq_decode)
        self.scheduler_config = {k: scheduler_config[k] for k in SCHEDULER_KEYS if k in scheduler_config}
        self.name, self.digest = name, digest
        size = unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        self.latent_shape = (unet.config.in_channels, size, size)
        scale = 2 ** (len(vqvae.config.block_out_channels) - 1)
        self.image_shape = (vqvae.config.in_channels, size * scale, size * scale)
        self._timesteps: dict[int, torch.Tensor] = {}

    def _vq_encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqvae.encode(x).latents

    def _vq_decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vqvae.decode(z).sample

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # quant_conv output, unquantized: the DDIM inversion starts from the encoder's continuous latent.
        return self._encode_call(x.to(self.vq_dtype, memory_format=self.memory_format)).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        # VQModel.decode quantizes to the codebook by default; we keep the model's own behaviour.
        return self._decode_call(z.to(self.vq_dtype, memory_format=self.memory_format)).float()

    @torch.no_grad()
    def eps(self, z: torch.Tensor, t: int) -> torch.Tensor:
        # timestep tensors made once on the device: no host-to-device copy inside the step loop
        tt = self._timesteps.get(int(t))
        if tt is None:
            tt = self._timesteps[int(t)] = torch.tensor(int(t), device=self.device)
        return self._unet_call(z.to(self.dtype, memory_format=self.memory_format), tt).sample.float()


def _weights_digest(*folders: Path) -> str:
    """sha256 over the weight files, so a manifest names exactly the weights that made it."""
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.iterdir()):
            if f.suffix in (".safetensors", ".bin", ".pt", ".ckpt"):
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 24), b""):
                        h.update(chunk)
    return "sha256:" + h.hexdigest()


def scheduler_for(name: str, folder: Path) -> dict:
    """The scheduler settings a new anonymization uses with this model.

    The paper's FFHQ weights take the CompVis scheduler whatever their hub folder carries: the paper's
    code loads its scheduler from CompVis/ldm-celebahq-256, not from the ffhq folder. Other models use
    their folder's scheduler config over the CompVis defaults. (Restoring never asks: it uses the
    schedule recorded in the manifest.)"""
    sched_file = folder / "scheduler" / "scheduler_config.json"
    if name == "ffhq" or not sched_file.is_file():
        return dict(COMPVIS_SCHEDULER)
    return {**COMPVIS_SCHEDULER, **json.loads(sched_file.read_text())}


def load_model(name: str = DEFAULT_MODEL, *, device: str = "auto", dtype: torch.dtype | None = None, download: bool = True,
               compile: bool | None = None):
    """A hub id (optionally with a subfolder), a local diffusers folder, a known alias, or 'testing:gaussian'."""
    dev = torch_device(device)
    if name == "testing:gaussian":
        return GaussianModel(device=dev)
    folder = fetch_model(name, download=download)
    from diffusers import UNet2DModel, VQModel

    if not (folder / "unet").is_dir() or not (folder / "vqvae").is_dir():
        raise ModelNotFoundError(f"model {name!r}: {folder} has no unet/ and vqvae/ folders (diffusers layout)")
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cuda":  # TF32 for the fp32 VQ convolutions; fixed shapes let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    try:
        unet = UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True, torch_dtype=dtype)
        vqvae = VQModel.from_pretrained(folder, subfolder="vqvae", local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(f"model {name!r}: cannot load weights from {folder}: {str(e).splitlines()[0]}") from None
    sched = scheduler_for(name, folder)
    if sched.get("prediction_type", "epsilon") != "epsilon":
        raise ModelNotFoundError(f"model {name!r}: only ε-prediction models are supported, not {sched['prediction_type']!r}")
    digest = _weights_digest(folder / "unet", folder / "vqvae")
    return LatentDiffusion(unet, vqvae, sched, name=name, digest=digest, device=dev, dtype=dtype, compile=compile)


def latent_numel(model) -> int:
    return math.prod(model.latent_shape)

