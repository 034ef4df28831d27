"""Calibrate the face fingerprint that binds a manifest to its video (vidanon/binding.py).

One input clip (faces of about 300, 120, 60 and 30 px, lossy H.264 as CCTV is) is anonymized several
times with the same key (each run has its own video_id, so its own faces). The fingerprints of the first
run's manifest are then compared (median RMS over the checked faces, luma levels) with:

- the first run's video as written (default H.264 crf 17, and lossless);
- that video re-encoded with libx264 at several CRFs (metadata dropped, as a re-encode may);
- the other runs' videos (other anonymizations of the same input), as written and re-encoded at crf 35.

The threshold must lie between the largest re-encode and the smallest other anonymization.

    python benchmarks/bench_binding.py [--runs 4] [--steps 2] [--model testing:gaussian]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # synth: clips made from faces that installed packages ship

import synth  # noqa: E402

from vidanon.anonymize import anonymize_video  # noqa: E402
from vidanon.binding import CHECKED_FACES, MISMATCH, MISMATCH_TAGGED, REENCODED, faces_distance  # noqa: E402
from vidanon.config import Config  # noqa: E402
from vidanon.manifest import inspect_video  # noqa: E402

CRFS = (18, 23, 28, 35, 40)


def clip(work: Path, frames: int, name: str = "cam.mp4", other: bool = False) -> Path:
    w, h, end = 960, 540, frames - 1
    movers = [
        synth.Mover(synth.astronaut_sprite(300), [(0, 200, 270), (end, 215, 275)]),
        synth.Mover(synth.t1_sprite(1, 120), [(0, 520, 180), (end, 540, 190)]),
        synth.Mover(synth.t1_sprite(2, 60), [(0, 720, 400), (end, 700, 395)]),
        synth.Mover(synth.t1_sprite(4, 30), [(0, 860, 120), (end, 850, 125)]),
    ]
    if other:  # another recording of the same size: the same people, elsewhere and in another order
        movers = [synth.Mover(m.sprite, [(f, x + 40, y - 20) for f, x, y in m.path]) for m in reversed(movers)]
    return synth.make_clip(work / name, width=w, height=h, frames=frames, sprites=movers, lossless=False).path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="anonymizations of the same input (default 4)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--model", default="testing:gaussian")
    args = ap.parse_args(argv)
    cfg = Config(model=args.model, mask="landmarks", device="cpu", steps=args.steps)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = clip(work, args.frames)
        runs = [anonymize_video(src, work / f"a{k}" / "cam.mp4", bytes(range(32)), cfg, progress=False).output
                for k in range(args.runs)]
        lossless = anonymize_video(src, work / "ll" / "cam.mp4", bytes(range(32)),
                                   Config(**{**cfg.to_dict(), "lossless": True}), progress=False).output
        man = inspect_video(runs[0])
        faces = sorted((f for t in man.tracks for f in t.faces), key=lambda f: f.frame)[:CHECKED_FACES]
        rows.append(("as written, crf 17 (the default)", faces_distance(runs[0], faces)))
        ll = inspect_video(lossless)
        ll_faces = sorted((f for t in ll.tracks for f in t.faces), key=lambda f: f.frame)[:CHECKED_FACES]
        rows.append(("as written, lossless", faces_distance(lossless, ll_faces)))
        for crf in CRFS:
            rows.append((f"re-encoded, crf {crf}", faces_distance(synth.reencode(runs[0], work / f"r{crf}.mp4", crf), faces)))
        elsewhere = anonymize_video(clip(work, args.frames, "cam2.mp4", other=True), work / "b" / "cam2.mp4",
                                    bytes(range(32)), cfg, progress=False).output
        rows.append(("another recording (same size and length)", faces_distance(elsewhere, faces)))
        for k, other in enumerate(runs[1:], 1):
            rows.append((f"another anonymization #{k}", faces_distance(other, faces)))
            rows.append((f"another anonymization #{k}, re-encoded crf 35",
                         faces_distance(synth.reencode(other, work / f"o{k}.mp4", 35), faces)))
    print(f"fingerprint distance (median RMS over {len(faces)} faces, luma levels); model {args.model}, "
          f"{args.steps} steps, {args.frames} frames")
    print("| case | distance |\n|---|---|")
    for name, d in rows:
        print(f"| {name} | {d:.2f} |")
    mild = max(d for name, d in rows if name.startswith(("as written", *(f"re-encoded, crf {c}" for c in CRFS if c <= 28))))
    same = max(d for name, d in rows if not name.startswith("another"))
    other = min(d for name, d in rows if name.startswith("another anonymization"))
    elsewhere = next(d for name, d in rows if name.startswith("another recording"))
    print(f"same video: up to crf 28 {mild:.2f}, up to crf 40 {same:.2f}; another anonymization >= {other:.2f}; "
          f"another recording {elsewhere:.2f}")
    print(f"thresholds in use: re-encoded > {REENCODED}; refused > {MISMATCH} without the container tag, "
          f"> {MISMATCH_TAGGED} with it")
    return {"rows": rows, "same_max": same, "other_min": other, "mild_max": mild}


if __name__ == "__main__":
    main()
