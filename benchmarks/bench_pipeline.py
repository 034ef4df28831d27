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
import contextlib
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


def model_folder(tmp: Path, tiny: bool = False) -> str:
    """The real LDM architecture with random weights, saved as a diffusers folder the pipeline loads."""
    from bench_core import real_architecture

    unet, vq = real_architecture(tiny=tiny)
    unet.save_pretrained(tmp / "ldm" / "unet")
    vq.save_pretrained(tmp / "ldm" / "vqvae")
    return str(tmp / "ldm")


@contextlib.contextmanager
def stage_timers():
    """Seconds the diffusion core and detection ran, {"core_s", "detect_s"}, while in the block. Both are looked up
    at call time in the modules that call them (stages.run_core, anonymize.detect_upright), so they can be wrapped.
    run_core returns once its batch is back on the host, so its time is the core's whether on a CPU or a GPU."""
    from vidanon import anonymize, stages

    spent = {"core_s": 0.0, "detect_s": 0.0}
    run_core, detect_upright = stages.run_core, anonymize.detect_upright

    def timed(fn, key):
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return call

    stages.run_core, anonymize.detect_upright = timed(run_core, "core_s"), timed(detect_upright, "detect_s")
    try:
        yield spent
    finally:
        stages.run_core, anonymize.detect_upright = run_core, detect_upright


def steady_state(clip: Path, cfg, model, detector, on_window=lambda t, frames, faces: None) -> dict:
    """Anonymize `clip` in this process with `cfg` and report its throughput once the pipeline is full: the
    face-frames per second written after the first window (which waits for the tracker's look-ahead and the first
    batch), besides the whole run's. `on_window(seconds, frames, faces)` sees each window as it is written."""
    from vidanon import anonymize

    windows = []

    def written(frames: int, faces: int) -> None:
        windows.append((time.perf_counter() - t0, frames, faces))
        on_window(*windows[-1])

    with tempfile.TemporaryDirectory() as tmp, stage_timers() as spent:
        t0 = time.perf_counter()
        result = anonymize.anonymize_video(clip, Path(tmp) / "anon.mp4", bytes(32), cfg, model=model, detector=detector,
                                           progress=False, on_progress=written)
        wall = time.perf_counter() - t0
    out = {"frames": result.frames, "faces": result.faces, "wall_s": wall, "windows": len(windows),
           "first_window_s": windows[0][0] if windows else None, **spent,
           "faces_per_s": result.faces / wall, "core_busy": spent["core_s"] / wall, "detect_busy": spent["detect_s"] / wall}
    if len(windows) > 1:
        span = windows[-1][0] - windows[0][0]
        out["steady_faces_per_s"] = sum(w[2] for w in windows[1:]) / span
        out["steady_frames_per_s"] = sum(w[1] for w in windows[1:]) / span
    return out


def run_once(args) -> dict:
    """One anonymization in this process; returns its figures (run as a child for a clean RSS peak)."""
    from vidanon import anonymize, stages
    from vidanon.config import Config
    from vidanon.models import load_model

    cfg = Config(model=args.model, steps=args.steps, batch_size=args.batch_size, device=args.device, mask="landmarks")
    model = load_model(cfg.model, device=cfg.device)
    detector = anonymize.detector_for(cfg)
    with stage_timers() as spent:
        t = time.perf_counter()
        result = anonymize.anonymize_video(args.clip, Path(args.clip).with_suffix(".anon.mp4"), bytes(32), cfg, model=model,
                                           detector=detector, progress=False)
        wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the core-alone run below adds to it
    batch = stages.batch_size(cfg.batch_size, model)
    return {
        "frames": result.frames, "faces": result.faces, "wall_s": wall, **spent,
        "peak_rss_mib": rss, "batch": batch, "model_device": str(model.device),
        "detector_providers": detector.session.get_providers() if hasattr(detector, "session") else [],
        "core_alone_faces_per_s": core_alone(model, batch, args.steps, result.faces) if args.core_alone else None,
    }


def core_alone(model, batch: int, steps: int, faces: int) -> float:
    """faces/s of the core alone on the same model and batch size (no video, no detection)."""
    from bench_core import inputs, timed

    from vidanon.diffusion import flip_faces, make_schedule

    x, m, r = inputs(model, batch)
    sched = make_schedule(model.scheduler_config, steps)
    sec = timed(lambda: flip_faces(model, x, m, r, sched), model.device, repeat=max(1, min(4, faces // batch // 4)))
    return batch / sec


def child(args, clip: Path, core_alone: bool) -> dict:
    """Run one anonymization in a fresh process (a clean peak RSS) and return its figures."""
    cmd = [sys.executable, __file__, "--child", str(clip), "--model", args.model, "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--device", args.device] + (["--core-alone"] if core_alone else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pipeline child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(args, on_result=lambda name, figures: None) -> dict:
    """Short clip, long clip (each in its own process), core alone on the same model and batch, and ratios."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        args.model = args.model or model_folder(tmp, args.tiny)
        out = {"width": args.width, "height": args.height, "fps": args.fps, "steps": args.steps,
               "model": args.model if ":" in args.model else "real LDM architecture (random weights)" + (" tiny" if args.tiny else "")}
        short = make_clip(tmp / "short.mp4", args.width, args.height, args.frames, args.fps)
        out["short"] = child(args, short.path, core_alone=True)
        on_result("short", out)
        long = make_clip(tmp / "long.mp4", args.width, args.height, args.frames * args.long, args.fps)
        out["long"] = child(args, long.path, core_alone=False)
    s, l = out["short"], out["long"]
    for r in (s, l):
        r["frames_per_s"], r["faces_per_s"] = r["frames"] / r["wall_s"], r["faces"] / r["wall_s"]
        r["core_busy"], r["detect_busy"] = r["core_s"] / r["wall_s"], r["detect_s"] / r["wall_s"]
    out["core_alone_faces_per_s"] = s["core_alone_faces_per_s"]
    out["pipeline_over_core"] = l["faces_per_s"] / s["core_alone_faces_per_s"]
    out["rss_long_over_short"] = l["peak_rss_mib"] / s["peak_rss_mib"]
    out["long_factor"] = args.long
    on_result("long", out)
    return out


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
    p.add_argument("--tiny", action="store_true", help="a few-channel model of the real architecture (smoke runs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--core-alone", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.clip = a.child
        print(json.dumps(run_once(a)))
        return
    out = measure(a)
    s, l = out["short"], out["long"]
    print(f"clip {a.width}x{a.height} {a.fps} fps; model {out['model']}; steps {a.steps}; batch {s['batch']}; "
          f"core on {s['model_device']}; detection providers {s['detector_providers']}")
    for name, r in (("short", s), ("long", l)):
        print(f"{name:>5}: {r['frames']} frames, {r['faces']} faces in {r['wall_s']:.1f} s -> {r['frames_per_s']:.2f} frames/s, "
              f"{r['faces_per_s']:.2f} faces/s; core busy {r['core_busy']:.0%}, "
              f"detection busy {r['detect_busy']:.0%}; peak RSS {r['peak_rss_mib']:.0f} MiB")
    print(f"core alone: {out['core_alone_faces_per_s']:.2f} faces/s; pipeline/core (long clip): {out['pipeline_over_core']:.0%}")
    print(f"peak RSS long/short: {out['rss_long_over_short']:.2f}x for {a.long}x the frames")


if __name__ == "__main__":
    main()
