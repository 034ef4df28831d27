"""What sealing each face's original pixels would cost: bytes per face-frame for several encodings.

Exact restoration (sealed originals) keeps, for every anonymized face, the original decoded pixels of the
frame region that pasting changes (paste weight > 0; where faces overlap, a pixel belongs to the face whose
weight there is largest). This script anonymizes a generated clip with small (≈ 30 px), medium (≈ 100 px)
and large (≈ 300 px) moving faces, takes each face's footprint from the run's own manifest, and encodes the
original pixels of those footprints:

- per face, as one lossless image (PNG; WebP lossless);
- per track, as one lossless video of the face regions (FFV1; x264 RGB qp 0), each region placed on a
  canvas the size of the track's largest region, zeros outside the footprint;
- per track, near-lossless (x264 RGB or 4:4:4 at a few crf values; the bar is ≥ 45 dB in the footprint),
  a candidate for default (lossy) outputs, whose input was lossy anyway.

It prints bytes per face-frame by face size and the total as a percentage of the anonymized video's size,
for a `--lossless` output and a default output of the same clip.

    python benchmarks/bench_sealed.py                       # 1280x720, 50 frames (≈ 2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # synth: clips made from faces that installed packages ship

SIZES = {"small": 30, "medium": 100, "large": 300}


@dataclass
class Piece:
    """One face-frame's original pixels: its footprint's bounding box, the pixels it owns, zeros elsewhere."""

    track: int
    frame: int
    height: int  # face box height, px
    region: np.ndarray  # (h, w, 3) uint8
    owned: np.ndarray  # (h, w) bool


@dataclass
class Tally:
    bytes: dict = field(default_factory=dict)  # (method, size class) -> bytes
    faces: dict = field(default_factory=dict)  # size class -> face-frames

    def add(self, method: str, size: str, n: int) -> None:
        self.bytes[method, size] = self.bytes.get((method, size), 0) + n


def make_clip(path: Path, width: int, height: int, frames: int):
    import synth

    end = frames - 1
    movers = [
        synth.Mover(synth.astronaut_sprite(SIZES["large"]), [(0, width * 0.25, height * 0.5), (end, width * 0.32, height * 0.5)]),
        synth.Mover(synth.t1_sprite(1, SIZES["medium"]), [(0, width * 0.6, height * 0.3), (end, width * 0.7, height * 0.35)]),
        synth.Mover(synth.t1_sprite(3, SIZES["small"]), [(0, width * 0.8, height * 0.75), (end, width * 0.72, height * 0.8)]),
    ]
    return synth.make_clip(path, width=width, height=height, frames=frames, sprites=movers, lossless=False)


def pieces_of(src: Path, anonymized: Path, master: bytes) -> list[Piece]:
    """Every face-frame's footprint from the run's manifest, filled with the input's decoded pixels."""
    from vidanon import keys
    from vidanon.align import paste_weights
    from vidanon.manifest import manifest_path, read_manifest, unseal_mask
    from vidanon.masks import paste_alpha
    from vidanon.sealed import originals
    from vidanon.video import read_frames

    man = read_manifest(manifest_path(anonymized))
    feather = man.header.feather
    tkeys = {t.id: keys.track_key(master, man.video_id, t.id) for t in man.tracks}
    by_frame = man.faces_by_frame(tkeys)
    out = []
    for frame in read_frames(src):
        faces = by_frame.get(frame.index, [])
        hw = frame.rgb.shape[:2]
        weights = []
        for tid, face in faces:
            mask = unseal_mask(tkeys[tid], man.video_id, tid, face.frame, face.sealed, man.header.latent_hw)
            weights.append(paste_weights(face.affine_array, paste_alpha(mask, feather=feather), hw))
        # each face's own pixels, overlaps decided as vidanon seals them (sealed.originals)
        for (tid, face), original in zip(faces, originals(frame.rgb, weights, [tid for tid, _ in faces])):
            if original.owned.size:
                out.append(Piece(tid, frame.index, round(face.height), original.pixels, original.owned))
    return out


def size_class(height: int) -> str:
    return min(SIZES, key=lambda k: abs(np.log(height / SIZES[k])))


def encode_track(pieces: list[Piece], codec: str, options: dict, pix_fmt: str) -> tuple[int, float]:
    """(bytes, PSNR in the footprint) of one track's regions as one video on a fixed canvas."""
    h = max(p.region.shape[0] for p in pieces) + 1 & ~1
    w = max(p.region.shape[1] for p in pieces) + 1 & ~1
    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        s = out.add_stream(codec, rate=25, options=options)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.codec_context.time_base = Fraction(1, 25)
        for i, p in enumerate(pieces):
            canvas = np.zeros((h, w, 3), np.uint8)
            canvas[: p.region.shape[0], : p.region.shape[1]] = p.region
            f = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    size = buf.tell()
    buf.seek(0)
    err, n = 0.0, 0
    with av.open(buf, "r") as inp:
        for p, f in zip(pieces, inp.decode(video=0)):
            got = f.to_ndarray(format="rgb24")[: p.region.shape[0], : p.region.shape[1]]
            d = got[p.owned].astype(np.float64) - p.region[p.owned]
            err, n = err + (d**2).sum(), n + d.size
    psnr = float("inf") if err == 0 else 10 * np.log10(255**2 / (err / n))
    return size, psnr


def restore(anonymized: Path, master: bytes, method: str) -> Path:
    from vidanon.restore import deanonymize_video

    out = anonymized.parent / method / anonymized.name
    return deanonymize_video(anonymized, out, master, progress=False, method=method).output


def restored_psnr(src: Path, anonymized: Path, restored: Path) -> dict:
    """Median PSNR (dB) of the face boxes of `restored` against the input's decoded frames, by face size."""
    from vidanon.manifest import manifest_path, read_manifest
    from vidanon.video import read_frames

    boxes: dict[int, list] = {}
    for t in read_manifest(manifest_path(anonymized)).tracks:
        for f in t.faces:
            boxes.setdefault(f.frame, []).append(f)
    got: dict[str, list[float]] = {}
    for a, b in zip(read_frames(src), read_frames(restored)):
        for f in boxes.get(a.index, []):
            x1, y1, x2, y2 = (int(round(v)) for v in f.box)
            x1, y1 = max(x1, 0), max(y1, 0)
            d = a.rgb[y1:y2, x1:x2].astype(np.float64) - b.rgb[y1:y2, x1:x2]
            mse = (d**2).mean() if d.size else 0.0
            got.setdefault(size_class(round(f.height)), []).append(99.0 if mse == 0 else 10 * np.log10(255**2 / mse))
    return {c: float(np.median(v)) for c, v in got.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the closed-form model (key-flip fidelity)")
    a = p.parse_args()
    from vidanon.anonymize import anonymize_video
    from vidanon.config import Config
    from vidanon.sealed import sidecar_path

    master = bytes(range(32))
    fidelity = {}  # (output, method) -> {size class: median restored PSNR in the face boxes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "in.mp4", a.width, a.height, a.frames)
        sizes, sealed = {}, {}
        for lossless in (True, False):
            dst = tmp / ("lossless" if lossless else "default") / "in.mp4"
            dst.parent.mkdir()
            cfg = Config(model="testing:gaussian", steps=a.steps, lossless=lossless, mask="landmarks", device="cpu")
            r = anonymize_video(clip.path, dst, master, cfg, progress=False)
            sizes[lossless], sealed[lossless] = r.output.stat().st_size, sidecar_path(dst).stat().st_size
            name = "lossless" if lossless else "default"
            fidelity[name, "anonymized"] = restored_psnr(clip.path, dst, dst)
            for method in ("sealed", "flip"):
                fidelity[name, method] = restored_psnr(clip.path, dst, restore(dst, master, method))
        pieces = pieces_of(clip.path, dst, master)
        in_size = clip.path.stat().st_size

    tally, psnr = Tally(), {}
    for pc in pieces:
        c = size_class(pc.height)
        tally.faces[c] = tally.faces.get(c, 0) + 1
        bgr = np.ascontiguousarray(pc.region[..., ::-1])
        tally.add("PNG per face", c, len(cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]))
        tally.add("WebP lossless per face", c, len(cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1]))
    tracks: dict[int, list[Piece]] = {}
    for pc in pieces:
        tracks.setdefault(pc.track, []).append(pc)
    videos = {
        "FFV1 per track": ("ffv1", {}, "bgr0"),
        "x264 RGB qp 0 per track": ("libx264rgb", {"qp": "0", "preset": "medium"}, "rgb24"),
    }
    for crf in (2, 4, 8):  # RGB itself: a YUV conversion alone costs more than the 45 dB allowed
        videos[f"x264 RGB crf {crf} per track"] = ("libx264rgb", {"crf": str(crf), "preset": "medium"}, "rgb24")
    videos["x264 4:4:4 crf 2 per track"] = ("libx264", {"crf": "2", "preset": "medium"}, "yuv444p")
    for name, (codec, opts, fmt) in videos.items():
        worst = float("inf")
        for tid, ps in tracks.items():
            n, q = encode_track(ps, codec, opts, fmt)
            worst = min(worst, q)
            tally.add(name, size_class(int(np.median([x.height for x in ps]))), n)
        psnr[name] = worst

    classes = [c for c in SIZES if c in tally.faces]
    print(f"clip {a.width}x{a.height}, {a.frames} frames; input {in_size / 1024:.0f} KiB; anonymized video "
          f"{sizes[True] / 1024:.0f} KiB lossless, {sizes[False] / 1024:.0f} KiB default; face-frames "
          + ", ".join(f"{c} {tally.faces[c]}" for c in classes))
    for lossless in (True, False):
        print(f"vidanon's own sidecar ({'lossless' if lossless else 'default'} output): {sealed[lossless] / 1024:.0f} KiB "
              f"= {sealed[lossless] / sizes[lossless]:.1%} of the video")
    print(f"\nrestored face boxes vs the input's decoded frames, median PSNR (dB; 99 = bit-identical), {a.steps} steps:")
    print(f"{'output':<10}{'method':<12}" + "".join(f"{c:>10}" for c in classes))
    for (out, method), by in fidelity.items():
        print(f"{out:<10}{method:<12}" + "".join(f"{by.get(c, float('nan')):>10.1f}" for c in classes))
    print("\nencodings of the same footprints compared:")
    methods = ["PNG per face", "WebP lossless per face", *videos]
    print(f"{'method':<28}" + "".join(f"{c + ' B/face':>16}" for c in classes) + f"{'total KiB':>11}{'% lossless':>11}"
          f"{'% default':>10}{'min PSNR':>10}")
    for m in methods:
        per = [tally.bytes.get((m, c), 0) / tally.faces[c] for c in classes]
        total = sum(tally.bytes.get((m, c), 0) for c in classes)
        q = psnr.get(m, float("inf"))
        print(f"{m:<28}" + "".join(f"{v:>16,.0f}" for v in per) + f"{total / 1024:>11.0f}{total / sizes[True]:>11.1%}"
              f"{total / sizes[False]:>10.1%}{'lossless' if q == float('inf') else f'{q:.1f} dB':>10}")


if __name__ == "__main__":
    main()
