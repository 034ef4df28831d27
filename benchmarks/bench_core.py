"""Core speed: vidanon's batched key-flip core vs the naive diffusers loop, measured in one run.

The real LDM architecture (DESIGN §5) with random weights — speed does not depend on the weights.
Prints, per batch size: faces/s, achieved TFLOP/s, fraction of the FLOP ceiling (dense matmul peak
measured in this run), peak GPU memory; then the same work written as a diffusers user would
(one face at a time, fp32, DDIMInverseScheduler then DDIMScheduler) and the speed-up ratio; and the
closed-form model's round-trip PSNR in each precision, so a speed-up that breaks restoration shows.

GPU:  python benchmarks/bench_core.py                      (50 steps, batches 1..64, bf16)
CPU:  python benchmarks/bench_core.py --steps 2 --batch-sizes 1,2 --naive-faces 1
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, UNet2DModel, VQModel
from torch.utils.flop_counter import FlopCounterMode

from vidanon import keys
from vidanon.diffusion import flip, flip_faces, make_schedule
from vidanon.models import COMPVIS_SCHEDULER, GaussianModel, LatentDiffusion

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def real_architecture(seed: int = 0):
    """UNet2DModel 274 M params + VQModel f4 of the CompVis/paper LDMs, random weights."""
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(224, 448, 672, 896),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=32,
    )
    vq = VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(128, 256, 512), layers_per_block=2, latent_channels=3, num_vq_embeddings=8192, vq_embed_dim=3,
    )
    with torch.no_grad():  # keep random-weight DDIM well-posed (DESIGN §6); the FLOPs are the same
        unet.conv_out.weight *= 0.01
    return unet, vq


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    fn()  # warm-up (cuDNN autotune, compile)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def flops_per_face(model) -> tuple[float, float, float]:
    """(UNet forward, encode, decode) FLOPs for one face, counted by torch's FLOP counter."""
    x = torch.zeros(1, *model.image_shape, device=model.device)
    z = torch.zeros(1, *model.latent_shape, device=model.device)
    out = []
    for fn in (lambda: model.eps(z, 500), lambda: model.encode(x), lambda: model.decode(z)):
        with FlopCounterMode(display=False) as counter:
            fn()
        out.append(counter.get_total_flops())
    return tuple(out)


def matmul_peak(device, dtype) -> float:
    """Dense matmul FLOP/s in this run: the ceiling the core is measured against."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device, repeat=20 if device.type == "cuda" else 3)
    return 2 * n**3 / sec


def inputs(model, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, *model.image_shape, generator=g) * 2 - 1
    m = torch.zeros(b, *model.latent_shape[1:])
    h = model.latent_shape[1]
    m[:, h // 4 : 3 * h // 4, h // 4 : 3 * h // 4] = 1
    n = math.prod(model.latent_shape)
    r = torch.from_numpy(np.stack([keys.flip_signs(keys.track_key(bytes(32), bytes(16), i), n) for i in range(b)]))
    return x, m, r


def naive_face(unet, vq, x, m, r, steps, device):
    """One face, fp32, written the diffusers way: inverse scheduler loop, flip, scheduler loop with re-injection."""
    inv, den = DDIMInverseScheduler(**COMPVIS_SCHEDULER), DDIMScheduler(**COMPVIS_SCHEDULER)
    inv.set_timesteps(steps)
    den.set_timesteps(steps)
    with torch.no_grad():
        z = vq.encode(x.to(device)).latents
        zs = [z]
        for t in inv.timesteps:
            z = inv.step(unet(z, t).sample, t, z).prev_sample
            zs.append(z)
        mm, rr = m.to(device)[:, None], r.to(device, torch.float32).reshape(z.shape)
        z = flip(z, mm.bool(), rr)
        for i, t in enumerate(den.timesteps):
            z = den.step(unet(z, t).sample, t, z, eta=0.0).prev_sample
            z = mm * z + (1 - mm) * zs[len(zs) - 2 - i]
        return vq.decode(z).sample


def round_trip_psnr(dtype, steps, b=2) -> float:
    g = GaussianModel(dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(b, *g.image_shape, generator=gen) * g.std).clamp(-1, 1)
    _, m, r = inputs(g, b)
    sched = make_schedule(g.scheduler_config, steps)
    back = flip_faces(g, flip_faces(g, x, m, r, sched), m, r, sched)
    sel = torch.nn.functional.interpolate(m[:, None], scale_factor=4).bool().expand_as(x)
    return float(10 * torch.log10(4 / ((back - x)[sel].double() ** 2).mean()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--naive-faces", type=int, default=2, help="faces timed for the naive loop (default 2)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet")
    a = p.parse_args()
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; steps {a.steps}; dtype {a.dtype}; compile {a.compile}")

    unet, vq = real_architecture()
    model = LatentDiffusion(unet, vq, COMPVIS_SCHEDULER, name="random", digest="-", device=device, dtype=dtype, compile=a.compile)
    f_unet, f_enc, f_dec = flops_per_face(model)
    per_face = 2 * a.steps * f_unet + f_enc + f_dec
    peak = matmul_peak(device, dtype)
    ceiling = peak / per_face
    print(f"FLOP per face: UNet {f_unet / 1e9:.0f} G x {2 * a.steps}, encode {f_enc / 1e9:.0f} G, decode {f_dec / 1e9:.0f} G "
          f"= {per_face / 1e12:.2f} TFLOP; matmul peak {peak / 1e12:.1f} TFLOP/s -> ceiling {ceiling:.2f} faces/s")

    print(f"{'batch':>5} {'faces/s':>9} {'TFLOP/s':>8} {'of ceiling':>10} {'peak GiB':>9}")
    sched = make_schedule(model.scheduler_config, a.steps)  # once per run, as vidanon does
    best = 0.0
    for b in (int(s) for s in a.batch_sizes.split(",")):
        x, m, r = inputs(model, b)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            sec = timed(lambda: flip_faces(model, x, m, r, sched), device)
        except torch.OutOfMemoryError:
            print(f"{b:>5} out of memory")
            break
        fps = b / sec
        best = max(best, fps)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"{b:>5} {fps:>9.3f} {fps * per_face / 1e12:>8.1f} {fps / ceiling:>10.1%} {mem:>9.2f}")

    unet32, vq32 = real_architecture()
    unet32, vq32 = unet32.to(device).eval(), vq32.to(device).eval()
    x, m, r = inputs(model, 1)
    sec = timed(lambda: naive_face(unet32, vq32, x, m, r, a.steps, device), device, repeat=a.naive_faces)
    naive = 1 / sec
    print(f"naive diffusers loop (1 face, fp32): {naive:.3f} faces/s; vidanon best {best:.3f} faces/s; ratio {best / naive:.1f}x")

    ref = round_trip_psnr(torch.float32, a.steps)
    for k in ("fp32", "bf16", "fp16"):
        got = ref if k == "fp32" else round_trip_psnr(DTYPES[k], a.steps)
        print(f"closed-form round trip at {a.steps} steps, eps in {k}: {got:.2f} dB ({got - ref:+.2f} dB vs fp32)")


if __name__ == "__main__":
    main()
