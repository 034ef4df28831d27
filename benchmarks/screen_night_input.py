"""Screening for issue 12, item 2: does preparing the detector's input (spatial or temporal denoise, other
first-pass scales or upsampling) recover small faces in noisy frames, and at what cost?

Same clips as bench_recall.py (tests/synth.py `night_clip`, 800x450, four faces of one height, 30 frames).
For each variant, CenterFace runs as vidanon runs it (threshold 0.2, floor 0.05, --min-face 20 pyramid) on the
prepared input, the tracker as configured by default turns its detections and weak candidates into faces, and a
face-frame is *missed* when less than half of its inner region lies in the region vidanon would replace for those
faces (face_affine, landmark mask, paste alpha >= 0.5: what anonymize.prepare_faces covers, without running the
core or encoding). Face-frames less than half visible or destroyed by the encoder are not counted, as in
bench_recall.py. deface's misses (its own detector and ellipse) are computed on the same clips.

Then the detection time per frame of each variant (preparation included), interleaved over the variants, on the
issue's night clip.

    python benchmarks/screen_night_input.py [--variants base,g10,t3] [--conditions ...] [--heights ...]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_recall  # noqa: E402
import synth  # noqa: E402

from vidanon import detect  # noqa: E402
from vidanon.align import face_affine, landmarks_in_crop, paste_weights  # noqa: E402
from vidanon.config import Config  # noqa: E402
from vidanon.detections import Detections  # noqa: E402
from vidanon.masks import face_mask, paste_alpha  # noqa: E402
from vidanon.track import TrackerConfig, track_faces  # noqa: E402


def gauss(sigma):
    return lambda rgb, prev: cv2.GaussianBlur(rgb, (0, 0), sigma)


def tmean(n):
    """Mean of the frame and the n - 1 frames before it (fewer at the start)."""
    def prep(rgb, prev):
        frames = [rgb, *list(prev)[-(n - 1):]]
        return (np.sum([f.astype(np.uint16) for f in frames], axis=0) + len(frames) // 2) // len(frames)
    return lambda rgb, prev: prep(rgb, prev).astype(np.uint8)


def twmean(rgb, prev):
    """(2 * frame + previous) / 3."""
    if not prev:
        return rgb
    return ((2 * rgb.astype(np.uint16) + prev[-1] + 1) // 3).astype(np.uint8)


def tmean_gauss(n, sigma):
    t = tmean(n)
    return lambda rgb, prev: cv2.GaussianBlur(t(rgb, prev), (0, 0), sigma)


# name: (input preparation or None, first-pass scale, upsampling interpolation, also a 1.0x pyramid merged by NMS)
VARIANTS = {
    "base": (None, 1.5, cv2.INTER_LINEAR, False),
    "g08": (gauss(0.8), 1.5, cv2.INTER_LINEAR, False),
    "g06": (gauss(0.6), 1.5, cv2.INTER_LINEAR, False),
    "g08s1.25": (gauss(0.8), 1.25, cv2.INTER_LINEAR, False),
    "g10": (gauss(1.0), 1.5, cv2.INTER_LINEAR, False),
    "g12": (gauss(1.2), 1.5, cv2.INTER_LINEAR, False),
    "bilat": (lambda rgb, prev: cv2.bilateralFilter(rgb, 5, 25, 3), 1.5, cv2.INTER_LINEAR, False),
    "median3": (lambda rgb, prev: cv2.medianBlur(rgb, 3), 1.5, cv2.INTER_LINEAR, False),
    "nlm5": (lambda rgb, prev: cv2.fastNlMeansDenoisingColored(rgb, None, 5, 5, 5, 11), 1.5, cv2.INTER_LINEAR, False),
    "t2": (tmean(2), 1.5, cv2.INTER_LINEAR, False),
    "t3": (tmean(3), 1.5, cv2.INTER_LINEAR, False),
    "tw2": (twmean, 1.5, cv2.INTER_LINEAR, False),
    "t3g08": (tmean_gauss(3, 0.8), 1.5, cv2.INTER_LINEAR, False),
    "s1.0": (None, 1.0, cv2.INTER_LINEAR, False),
    "s1.25": (None, 1.25, cv2.INTER_LINEAR, False),
    "s2.0": (None, 2.0, cv2.INTER_LINEAR, False),
    "s1.5cubic": (None, 1.5, cv2.INTER_CUBIC, False),
    "s1.5area": (None, 1.5, cv2.INTER_AREA, False),
    "s1.25cubic": (None, 1.25, cv2.INTER_CUBIC, False),
    "s1.5+1.0": (None, 1.5, cv2.INTER_LINEAR, True),
}


class _Cv2:
    """cv2 as detect.py sees it, with a chosen interpolation for upsampling."""

    def __init__(self, up: int) -> None:
        self.up = up

    def resize(self, src, size, interpolation):
        up = size[0] > src.shape[1]
        return cv2.resize(src, size, interpolation=self.up if up else interpolation)

    def __getattr__(self, name):
        return getattr(cv2, name)


class Variant:
    """A detector (floor 0.05, min_face 20) on prepared input; call it on decoded frames in order."""

    def __init__(self, name: str) -> None:
        self.prep, scale, self.interp, self.extra = VARIANTS[name]
        self.det = detect.make_detector("centerface", device="cpu", floor=Config().floor)
        self.det.net_face_px = scale * self.det.min_face  # first-pass scale = net_face_px / min_face
        if self.extra:
            self.det1 = detect.make_detector("centerface", device="cpu", floor=Config().floor)
            self.det1.net_face_px = 1.0 * self.det1.min_face
        self.prev: deque = deque(maxlen=2)

    def reset(self) -> None:
        self.prev.clear()

    def __call__(self, rgb: np.ndarray) -> Detections:
        x = rgb if self.prep is None else self.prep(rgb, self.prev)
        self.prev.append(rgb)
        saved = detect.cv2
        detect.cv2 = _Cv2(self.interp)
        try:
            d = self.det(x)
            if self.extra:
                d = merge(d, self.det1(x), self.det)
        finally:
            detect.cv2 = saved
        return d


def merge(a: Detections, b: Detections, det) -> Detections:
    d = Detections.concat([a, b])
    if len(d) == 0:
        return d
    xywh = np.c_[d.xyxy[:, :2], d.xyxy[:, 2:] - d.xyxy[:, :2]]
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh, d.score, det.floor, det.nms_iou), dtype=int).reshape(-1)
    return d[keep]


def covered(tracked: list[Detections], shape: tuple[int, int], feather: int) -> list[np.ndarray]:
    """Per frame, where vidanon would replace the picture for these faces (as anonymize.prepare_faces)."""
    out = []
    for dets in tracked:
        region = np.zeros(shape, bool)
        for i in range(len(dets)):
            affine, lm = face_affine(dets.landmarks[i], dets.xyxy[i])
            mask, _ = face_mask(np.zeros((256, 256, 3), np.uint8), landmarks_in_crop(lm, affine), None)
            y0, x0, w = paste_weights(affine, paste_alpha(mask, feather=feather), shape)
            region[y0:y0 + w.shape[0], x0:x0 + w.shape[1]] |= w >= 0.5
        out.append(region)
    return out


def tracked_region(raw: list[Detections], shape, weak: bool) -> list[np.ndarray]:
    cfg = Config()
    thr = detect.CenterFaceDetector.default_threshold
    split = [detect.split_weak(d, thr) for d in raw]
    tc = TrackerConfig(iou_threshold=cfg.iou_threshold, max_gap=cfg.max_gap, extend=cfg.extend, bridge=cfg.bridge)
    tracked = track_faces([s for s, _ in split], tc, [w for _, w in split] if weak else None,
                          frame_size=(shape[1], shape[0]))
    return covered(tracked, shape, cfg.feather)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--conditions", default=",".join(bench_recall.CONDITIONS))
    ap.add_argument("--heights", default="20,30,40,60,80")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--cache", default="/tmp/screen_night_cache", help="raw detections per variant and clip")
    ap.add_argument("--timing-reps", type=int, default=3, help="0: no timing")
    ap.add_argument("--seed", type=int, default=0, help="night noise seed (0: bench_recall's clips)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    dets = {v: Variant(v) for v in variants}
    cells = [(c, int(h)) for c in args.conditions.split(",") for h in args.heights.split(",")]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, h in cells:
            night, bitrate = bench_recall.CONDITIONS[name]
            if night is not None and args.seed:
                night = replace(night, seed=args.seed)
            clip = synth.night_clip(Path(tmp) / f"{name}-{h}.mp4", frames=args.frames, face_heights=[h] * 4,
                                    night=night, bitrate=bitrate, audio=False, lossless=False)
            decoded = synth.read_frames(clip.path)
            shape = decoded[0].shape[:2]
            d_changed, _ = bench_recall.deface_run(decoded)
            n, excl, d_miss, _ = bench_recall.score(clip, decoded, d_changed)
            row = {"n": n, "excl": excl, "deface": d_miss}
            for v in variants:
                f = cache / f"{v}-{name}-{h}-{args.frames}-s{args.seed}.pkl"
                if f.exists():
                    raw = pickle.loads(f.read_bytes())
                else:
                    dets[v].reset()
                    raw = [dets[v](fr) for fr in decoded]
                    f.write_bytes(pickle.dumps(raw))
                _, _, miss, _ = bench_recall.score(clip, decoded, tracked_region(raw, shape, weak=True))
                _, _, miss_strong, _ = bench_recall.score(clip, decoded, tracked_region(raw, shape, weak=False))
                row[v] = (miss, miss_strong)
            results[(name, h)] = row
            print(f"{name} {h}px n={n} excl={excl} deface={d_miss} "
                  + " ".join(f"{v}={row[v][0]}/{row[v][1]}" for v in variants), flush=True)

        # Timing, interleaved frame by frame (the machine is shared: slow spells hit every variant alike).
        clip = synth.night_clip(Path(tmp) / "issue.mp4", frames=args.frames, audio=False)
        frames = synth.read_frames(clip.path)
        times = {v: [] for v in variants}
        for v in variants:
            dets[v](frames[0])  # warm-up
        for rep in range(args.timing_reps):
            for v in variants:
                dets[v].reset()
            for i, fr in enumerate(frames):
                k = (i + rep) % len(variants)
                for v in variants[k:] + variants[:k]:
                    t0 = time.perf_counter()
                    dets[v](fr)
                    times[v].append(time.perf_counter() - t0)

    print("\n| condition | face px | face-frames | excl | deface | " + " | ".join(variants) + " |")
    print("|---|---|---|---|---|" + "---|" * len(variants))
    for (name, h), row in results.items():
        cells_txt = []
        for v in variants:
            miss = row[v][0]
            mark = "**" if miss > row["deface"] else ""
            cells_txt.append(f"{mark}{miss}{mark} ({row[v][1]})")
        print(f"| {name} | {h} | {row['n']} | {row['excl']} | {row['deface']} | " + " | ".join(cells_txt) + " |")
    tot = {v: sum(r[v][0] for r in results.values()) for v in variants}
    tot_s = {v: sum(r[v][1] for r in results.values()) for v in variants}
    worse = {v: [k for k, r in results.items() if r[v][0] > r["deface"]] for v in variants}
    print("| total | | | | " + str(sum(r["deface"] for r in results.values())) + " | "
          + " | ".join(f"{tot[v]} ({tot_s[v]})" for v in variants) + " |")
    if args.timing_reps:
        print("| ms/frame (median) | | | | | " + " | ".join(f"{1000 * np.median(times[v]):.0f}" for v in variants) + " |")
    for v in variants:
        print(f"{v}: worse than deface in {worse[v] or 'none'}"
              + (f"; ms/frame median {1000 * np.median(times[v]):.0f}, mean {1000 * np.mean(times[v]):.0f}, "
                 f"ratio to {variants[0]} {np.median(times[v]) / np.median(times[variants[0]]):.2f}"
                 if args.timing_reps else ""))


if __name__ == "__main__":
    main()
