"""End-to-end speed and memory: anonymize a generated clip with several real faces per frame.

Prints frames/s, faces/s, the fraction of wall time the diffusion core was running (on a GPU: how
busy the GPU is kept) and detection was running (beside the core; near 100 % means detection is what
holds the pipeline back), the core alone on the same faces for comparison (pipeline / core ratio), and
peak host memory (RSS) for a short clip and a clip `--long` times longer, each in its own process, so
a memory leak or a whole-video buffer shows as growth.

GPU:  python benchmarks/bench_pipeline.py                       (1080p 25 fps, real LDM architecture, random weights)
CPU:  python benchmarks/bench_pipeline.py --model testing:gaussian --width 640 --height 360 --frames 8 --steps 10
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # synth: clips made from faces that installed packages ship
sys.path.insert(0, str(HERE))


def make_clip(path: Path, width: int, height: int, frames: int, fps: int):
    import synth

    end = frames - 1
    h = height / 1080
    movers = [  # several faces per frame, from 40 to 200 px high, drifting
        synth.Mover(synth.astronaut_sprite(200 * h), [(0, width * 0.2, height * 0.45), (end, width * 0.3, height * 0.45)]),
        synth.Mover(synth.t1_sprite(1, 120 * h), [(0, width * 0.5, height * 0.3), (end, width * 0.45, height * 0.35)]),
        synth.Mover(synth.t1_sprite(2, 80 * h), [(0, width * 0.75, height * 0.6), (end, width * 0.8, height * 0.55)]),
        synth.Mover(synth.t1_sprite(4, 40 * h), [(0, width * 0.6, height * 0.8), (end, width * 0.55, height * 0.8)]),
    ]
    return synth.make_clip(path, width=width, height=height, frames=frames, fps=fps, sprites=movers, lossless=False)


def model_folder(tmp: Path) -> str:
    """The real LDM architecture with random weights, saved as a diffusers folder the pipeline loads."""
    from bench_core import real_architecture

    unet, vq = real_architecture()
    unet.save_pretrained(tmp / "ldm" / "unet")
    vq.save_pretrained(tmp / "ldm" / "vqvae")
    return str(tmp / "ldm")


def run_once(args) -> dict:
    """One anonymization in this process; returns its figures (run as a child for a clean RSS peak)."""
    import torch

    from vidanon import anonymize, stages
    from vidanon.config import Config
    from vidanon.models import load_model

    # The core stage and detection are looked up at call time in the modules that call them, so they can be timed.
    core_seconds = 0.0
    run_core = stages.run_core

    def timed_core(model, jobs, *a, **k):
        nonlocal core_seconds
        t = time.perf_counter()
        run_core(model, jobs, *a, **k)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        core_seconds += time.perf_counter() - t

    detect_seconds = 0.0
    detect_upright = anonymize.detect_upright

    def timed_detect(*a, **k):
        nonlocal detect_seconds
        t = time.perf_counter()
        out = detect_upright(*a, **k)
        detect_seconds += time.perf_counter() - t
        return out

    stages.run_core = timed_core
    anonymize.detect_upright = timed_detect
    cfg = Config(model=args.model, steps=args.steps, batch_size=args.batch_size, device=args.device, mask="landmarks")
    model = load_model(cfg.model, device=cfg.device)
    t = time.perf_counter()
    result = anonymize.anonymize_video(args.clip, Path(args.clip).with_suffix(".anon.mp4"), bytes(32), cfg, model=model, progress=False)
    wall = time.perf_counter() - t
    return {
        "frames": result.frames, "faces": result.faces, "wall_s": wall, "core_s": core_seconds, "detect_s": detect_seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "batch": stages.batch_size(cfg.batch_size, model),
    }


def core_alone(args, batch: int, faces: int) -> float:
    """faces/s of the core alone on the same model and batch size (no video, no detection)."""
    import torch

    from bench_core import inputs, timed
    from vidanon.diffusion import flip_faces, make_schedule
    from vidanon.models import load_model

    model = load_model(args.model, device=args.device)
    x, m, r = inputs(model, batch)
    sched = make_schedule(model.scheduler_config, args.steps)
    sec = timed(lambda: flip_faces(model, x, m, r, sched), torch.device(model.device), repeat=max(1, faces // batch // 4))
    return batch / sec


def child(args, clip: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(clip), "--model", args.model, "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="default: the real LDM architecture with random weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--long", type=int, default=10, help="the long clip is this many times longer (default 10)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.clip = a.child
        print(json.dumps(run_once(a)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        a.model = a.model or model_folder(tmp)
        short = make_clip(tmp / "short.mp4", a.width, a.height, a.frames, a.fps)
        long = make_clip(tmp / "long.mp4", a.width, a.height, a.frames * a.long, a.fps)
        s = child(a, short.path)
        l = child(a, long.path)
        core = core_alone(a, s["batch"], s["faces"])
    print(f"clip {a.width}x{a.height} {a.fps} fps; model {a.model if ':' in a.model else 'real LDM architecture (random weights)'}; "
          f"steps {a.steps}; batch {s['batch']}; device {a.device}")
    for name, r in (("short", s), ("long", l)):
        print(f"{name:>5}: {r['frames']} frames, {r['faces']} faces in {r['wall_s']:.1f} s -> {r['frames'] / r['wall_s']:.2f} frames/s, "
              f"{r['faces'] / r['wall_s']:.2f} faces/s; core busy {r['core_s'] / r['wall_s']:.0%}, "
              f"detection busy {r['detect_s'] / r['wall_s']:.0%}; peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"core alone: {core:.2f} faces/s; pipeline/core (long clip): {l['faces'] / l['wall_s'] / core:.0%}")
    print(f"peak RSS long/short: {l['peak_rss_mib'] / s['peak_rss_mib']:.2f}x for {a.long}x the frames")


if __name__ == "__main__":
    main()
