"""The cluster path's overhead: one folder anonymized by the plain local run and by a local Ray instance.

Both runs do the same files with the same settings in one invocation, each timed as a user sees it: from
the call to the report, loading the model and detector included (the Ray run also starts its actors, each
of which loads its own). Starting the local Ray instance itself is timed apart. The pair is run `--repeat`
times, alternating, and the fastest of each counts (a shared machine's other load only ever slows a run
down). Prints files/s and faces/s of each and the ratio.

CPU:  python benchmarks/bench_ray.py                     (8 clips of 16 frames, 640x360, closed-form model, 2 actors)
GPU:  python benchmarks/bench_ray.py --model ffhq --device auto --actors 0 --steps 50   (one actor per GPU)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # synth: clips made from faces that installed packages ship
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="testing:gaussian")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--actors", type=int, default=2, help="Ray actors; 0 = one per GPU (or CPU) (default 2)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each; the fastest counts (default 2)")
    args = p.parse_args()

    import ray
    import torch

    from bench_pipeline import make_clip
    from vidanon import folder_run, keys
    from vidanon.cluster import RayOptions, run_on_ray
    from vidanon.config import Config

    cfg = Config(model=args.model, device=args.device, steps=args.steps, mask="landmarks")
    key = keys.generate_master_key()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        for i in range(args.files):
            make_clip(tmp / "in" / f"cam{i}.mp4", args.width, args.height, args.frames, 25)
        print(f"{args.files} clips of {args.frames} frames at {args.width}x{args.height}, model {args.model}, "
              f"{args.steps} steps, device {args.device}; {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"ray {ray.__version__}")

        # Its workers must import the vidanon this script runs, installed or not.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        ray_start = time.perf_counter() - t

        rows: dict[str, list] = {"local": [], "ray": []}
        for i in range(args.repeat):
            t = time.perf_counter()
            report = folder_run.run_batch(folder_run.plan([tmp / "in"], tmp / f"local{i}", cfg), key, cfg, progress=False)
            rows["local"].append((time.perf_counter() - t, report))
            t = time.perf_counter()
            jobs = folder_run.plan([tmp / "in"], tmp / f"ray{i}", cfg)
            report = run_on_ray(jobs, key, cfg, RayOptions(actors=args.actors or None), progress=False)
            rows["ray"].append((time.perf_counter() - t, report))
            print(f"pass {i + 1}: local {rows['local'][-1][0]:.1f} s, ray {rows['ray'][-1][0]:.1f} s", flush=True)
        ray.shutdown()

    print(f"{'run':<6} {'files':>5} {'faces':>6} {'seconds':>8} {'files/s':>8} {'faces/s':>8}")
    best = {name: min(runs, key=lambda r: r[0]) for name, runs in rows.items()}
    for name, (seconds, report) in best.items():
        t = report.totals
        assert t["done"] == args.files, report.summary()
        print(f"{name:<6} {t['done']:>5} {t['faces']:>6} {seconds:>8.1f} {t['done'] / seconds:>8.3f} "
              f"{t['faces'] / seconds:>8.2f}")
    (local, _), (on_ray, _) = best["local"], best["ray"]
    print(f"Ray run / local run, faces/s: {local / on_ray:.2f}x (Ray instance start-up, not included: {ray_start:.1f} s)")


if __name__ == "__main__":
    main()
