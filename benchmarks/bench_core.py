"""Core speed: vidanon's batched key-flip core vs the naive diffusers loop, measured in one run.

The real LDM architecture (docs/design.md) with random weights — speed does not depend on the weights.
Prints, per batch size: faces/s, achieved TFLOP/s, fraction of the FLOP ceiling (dense matmul peak
measured in this run), peak GPU memory; then the same work written as a diffusers user would
(one face at a time, fp32, DDIMInverseScheduler then DDIMScheduler) and the speed-up ratio; and the
closed-form model's round-trip PSNR in each precision, so a speed-up that breaks restoration shows.
The global switches (TF32, cuDNN autotune) are set once, before either side runs, so both get them.

GPU:  python benchmarks/bench_core.py                      (50 steps, batches 1..64, bf16, compiled: each batch compiles)
CPU:  python benchmarks/bench_core.py --steps 2 --batch-sizes 1,2 --naive-faces 1
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from types import SimpleNamespace

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, UNet2DModel, VQModel
from torch.utils.flop_counter import FlopCounterMode

from vidanon import keys
from vidanon.diffusion import flip, flip_faces, make_schedule
from vidanon.models import COMPVIS_SCHEDULER, GaussianModel, LatentDiffusion

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def real_architecture(seed: int = 0, tiny: bool = False, device: str | torch.device = "cpu"):
    """UNet2DModel 274 M params + VQModel f4 of the CompVis/paper LDMs, random weights.

    tiny: the same block types and 64×64 latent / 256 px faces with a few channels (one layer per block, heads of 8
    channels), for smoke runs on a CPU.
    Built on `device` (random init of 274 M parameters takes seconds on a CPU, milliseconds on a GPU).
    """
    torch.manual_seed(seed)
    chans, vq_chans, layers, codes = ((16, 16, 16, 16), (8, 8, 8), 1, 64) if tiny else ((224, 448, 672, 896), (128, 256, 512), 2, 8192)
    with torch.device(device):
        unet = UNet2DModel(
            sample_size=64, in_channels=3, out_channels=3, layers_per_block=layers, block_out_channels=chans,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8 if tiny else 32,
            norm_num_groups=8 if tiny else 32,
        )
        vq = VQModel(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=vq_chans, layers_per_block=layers, latent_channels=3, num_vq_embeddings=codes, vq_embed_dim=3,
            norm_num_groups=8 if tiny else 32,
        )
    with torch.no_grad():  # keep random-weight DDIM well-posed (docs/design.md, testing); the FLOPs are the same
        unet.conv_out.weight *= 0.01
    return unet, vq


def set_global_switches(device: torch.device) -> dict:
    """TF32 and cuDNN autotune, set once for every side of a comparison; returned for the record."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1, warm=True):
    if warm:
        fn()  # warm-up (cuDNN autotune, compile)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def flops_per_face(model) -> tuple[float, float, float]:
    """(UNet forward, encode, decode) FLOPs for one face, counted by torch's FLOP counter on the eager modules
    (a compiled model's own calls would compile it at batch 1)."""
    fmt = model.memory_format
    x = torch.zeros(1, *model.image_shape, device=model.device, dtype=model.vq_dtype).contiguous(memory_format=fmt)
    z = torch.zeros(1, *model.latent_shape, device=model.device).contiguous(memory_format=fmt)
    t = torch.tensor(500, device=model.device)
    out = []
    with torch.no_grad():
        for fn in (lambda: model.unet(z.to(model.dtype), t), lambda: model.vqvae.encode(x), lambda: model.vqvae.decode(z.to(model.vq_dtype))):
            with FlopCounterMode(display=False) as counter:
                fn()
            out.append(counter.get_total_flops())
    return tuple(out)


def matmul_peak(device, dtype) -> float:
    """Dense matmul FLOP/s in this run: the ceiling the core is measured against."""
    n = 8192 if torch.device(device).type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sec = timed(lambda: a @ b, device, repeat=20 if torch.device(device).type == "cuda" else 3)
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


def core_model(device, dtype, *, tiny=False, compile=None, **settings) -> LatentDiffusion:
    """The real architecture with random weights as vidanon runs it (compiled on a GPU by default); `settings` are
    LatentDiffusion's other keywords (compile_mode, vq_dtype, memory_format)."""
    unet, vq = real_architecture(tiny=tiny, device=device)
    return LatentDiffusion(unet, vq, COMPVIS_SCHEDULER, name="random", digest="-", device=device, dtype=dtype, compile=compile,
                           **settings)


def warm_up(model, b: int) -> float:
    """Seconds of one 1-step key flip at batch b: what a first batch of that shape costs beyond its steps (the
    compile of a compiled model, cuDNN's autotune)."""
    x, m, r = inputs(model, b)
    t = time.perf_counter()
    flip_faces(model, x, m, r, make_schedule(model.scheduler_config, 1))
    sync(model.device)
    return time.perf_counter() - t


def flop_figures(model, steps: int) -> dict:
    """FLOPs per face at `steps`, the measured matmul ceiling in the model's dtype, and faces/s at that ceiling."""
    f_unet, f_enc, f_dec = flops_per_face(model)
    per_face = 2 * steps * f_unet + f_enc + f_dec
    peak = matmul_peak(model.device, model.dtype)
    return {"unet_gflop": f_unet / 1e9, "encode_gflop": f_enc / 1e9, "decode_gflop": f_dec / 1e9,
            "tflop_per_face": per_face / 1e12, "matmul_peak_tflops": peak / 1e12, "ceiling_faces_per_s": peak / per_face}


def batch_speed(model, b: int, steps: int, flops: dict, repeat: int = 1, warm: bool = True) -> dict:
    """faces/s at batch b (after one warm-up batch unless not `warm`: the caller warmed this shape up), TFLOP/s,
    fraction of the ceiling, peak GPU memory of the timed batches. Raises torch.OutOfMemoryError at a batch that
    does not fit."""
    x, m, r = inputs(model, b)
    sched = make_schedule(model.scheduler_config, steps)  # once per run, as vidanon does
    if warm:
        flip_faces(model, x, m, r, sched)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(model.device)
    sec = timed(lambda: flip_faces(model, x, m, r, sched), model.device, repeat=repeat, warm=False)
    fps = b / sec
    mem = torch.cuda.max_memory_allocated(model.device) / 2**30 if model.device.type == "cuda" else float("nan")
    return {"batch": b, "faces_per_s": fps, "tflops": fps * flops["tflop_per_face"],
            "of_ceiling": fps / flops["ceiling_faces_per_s"], "peak_gib": mem}


def naive_speed(device, steps: int, faces: int, *, tiny=False) -> float:
    """faces/s of the naive diffusers loop: one face at a time, fp32, no channels_last, no compile."""
    unet32, vq32 = real_architecture(tiny=tiny, device=device)
    unet32, vq32 = unet32.eval(), vq32.eval()
    x, m, r = inputs(SimpleNamespace(image_shape=(3, 256, 256), latent_shape=(3, 64, 64)), 1)
    return 1 / timed(lambda: naive_face(unet32, vq32, x, m, r, steps, device), device, repeat=faces)


def precision_figures(device, steps: int, *, tiny=False, batch: int = 32, memory_format=None) -> dict:
    """bf16 against fp32 on the real architecture (random weights): relative error of ε at a few noise levels,
    batch invariance (one face alone vs in a batch), the whole key flip's output in bf16 vs fp32, and the same
    with the VQ autoencoder in bf16 too against the default (VQ in fp32). Eager models: precision, not speed."""
    unet, vq = real_architecture(tiny=tiny, device=device)
    same = {"name": "random", "digest": "-", "device": device, "compile": False, "memory_format": memory_format}
    fp32 = LatentDiffusion(copy.deepcopy(unet), copy.deepcopy(vq), COMPVIS_SCHEDULER, dtype=torch.float32, **same)
    vq16 = LatentDiffusion(copy.deepcopy(unet), copy.deepcopy(vq), COMPVIS_SCHEDULER, dtype=torch.bfloat16,
                           vq_dtype=torch.bfloat16, **same)
    bf16 = LatentDiffusion(unet, vq, COMPVIS_SCHEDULER, dtype=torch.bfloat16, **same)
    x, m, r = inputs(fp32, batch)
    acp = DDIMScheduler(**COMPVIS_SCHEDULER).alphas_cumprod
    g = torch.Generator(device="cpu").manual_seed(2)
    z0 = fp32.encode(x.to(device))
    rel = lambda a, b: float((a - b).double().norm() / b.double().norm())  # noqa: E731
    out = {"eps_rel_err": {}, "batch_invariance_eps": {}}
    for t in (980, 500, 20):
        noise = torch.randn(z0.shape, generator=g).to(device)
        zt = acp[t].sqrt() * z0 + (1 - acp[t]).sqrt() * noise
        e32, e16 = fp32.eps(zt, t), bf16.eps(zt, t)
        out["eps_rel_err"][t] = rel(e16, e32)
        out["batch_invariance_eps"][t] = {"bf16": rel(bf16.eps(zt[:1], t), e16[:1]), "fp32": rel(fp32.eps(zt[:1], t), e32[:1])}
    sched = make_schedule(COMPVIS_SCHEDULER, steps)
    y16 = flip_faces(bf16, x, m, r, sched)
    y32 = flip_faces(fp32, x, m, r, sched)
    alone = flip_faces(bf16, x[:1], m[:1], r[:1], sched)
    y_vq16 = flip_faces(vq16, x, m, r, sched)
    psnr = lambda a, b: float(10 * torch.log10(4 / ((a - b).double() ** 2).mean()))  # noqa: E731  images in [-1, 1]
    out.update({
        "batch": batch, "steps": steps,
        "face_rel_err_bf16_vs_fp32": rel(y16, y32), "face_psnr_bf16_vs_fp32_db": psnr(y16, y32),
        "face_rel_err_alone_vs_batch_bf16": rel(alone, y16[:1]), "face_psnr_alone_vs_batch_bf16_db": psnr(alone, y16[:1]),
        "face_rel_err_vq_bf16_vs_fp32": rel(y_vq16, y16), "face_psnr_vq_bf16_vs_fp32_db": psnr(y_vq16, y16),
    })
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--naive-faces", type=int, default=2, help="faces timed for the naive loop (default 2)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the UNet and VQ (default: as vidanon does, on a GPU only)")
    p.add_argument("--tiny", action="store_true", help="a few-channel model of the same shape (smoke runs)")
    a = p.parse_args()
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    switches = set_global_switches(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; steps {a.steps}; dtype {a.dtype}; compile {a.compile}; {switches}")

    model = core_model(device, dtype, tiny=a.tiny, compile=a.compile)
    f = flop_figures(model, a.steps)
    print(f"FLOP per face: UNet {f['unet_gflop']:.0f} G x {2 * a.steps}, encode {f['encode_gflop']:.0f} G, "
          f"decode {f['decode_gflop']:.0f} G = {f['tflop_per_face']:.2f} TFLOP; matmul peak {f['matmul_peak_tflops']:.1f} "
          f"TFLOP/s -> ceiling {f['ceiling_faces_per_s']:.2f} faces/s")

    print(f"{'batch':>5} {'faces/s':>9} {'TFLOP/s':>8} {'of ceiling':>10} {'peak GiB':>9}")
    best = 0.0
    for b in (int(s) for s in a.batch_sizes.split(",")):
        try:
            s = batch_speed(model, b, a.steps, f)
        except torch.OutOfMemoryError:
            print(f"{b:>5} out of memory")
            break
        best = max(best, s["faces_per_s"])
        print(f"{b:>5} {s['faces_per_s']:>9.3f} {s['tflops']:>8.1f} {s['of_ceiling']:>10.1%} {s['peak_gib']:>9.2f}")

    naive = naive_speed(device, a.steps, a.naive_faces, tiny=a.tiny)
    print(f"naive diffusers loop (1 face, fp32): {naive:.3f} faces/s; vidanon best {best:.3f} faces/s; ratio {best / naive:.1f}x")

    ref = round_trip_psnr(torch.float32, a.steps)
    for k in ("fp32", "bf16", "fp16"):
        got = ref if k == "fp32" else round_trip_psnr(DTYPES[k], a.steps)
        print(f"closed-form round trip at {a.steps} steps, eps in {k}: {got:.2f} dB ({got - ref:+.2f} dB vs fp32)")


if __name__ == "__main__":
    main()
