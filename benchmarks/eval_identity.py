"""The paper's identity evaluation on faces that vidanon anonymized and restored (Tables 1-2, Fig. 4).

For every face vidanon anonymized in a video, the recognizer (identity.py; dlib's ResNet descriptor)
compares the original with:
  - the anonymized face (Table 1: anonymization must take the identity away),
  - the face restored from its sealed original (`deanonymize --method sealed`) and by the key flip
    (`--method flip`) with the right key (Table 1: restoration must bring it back),
  - a restoration forced with the track key one bit off, and with a random key (Fig. 4: a wrong key must
    bring back no one; run on the re-cropped anonymized face, as the key flip restores it, because vidanon
    refuses a wrong key).
Reported per face-size bin (face box height < 40, 40-80, >= 80 px): the mean recognizer distance
(dlib: same person at <= 0.6) and the share of faces the recognizer calls the same person. TAR at FAR 0.1 %
(Table 2: does the anonymized face still verify against the person's *other* photos?) needs labelled
faces and >= 1000 impostor pairs: `--faces DIR` with one folder per person.

  python benchmarks/eval_identity.py --video cam.mp4 --model ffhq --steps 50        # real weights
  python benchmarks/eval_identity.py --faces lfw/ --model ffhq                     # aligned faces, labelled
  python benchmarks/eval_identity.py --video cam.mp4 --steps 2                     # closed-form test model

Without --video or --faces, it makes a synthetic clip from package-shipped faces. Needs the identity extra.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidanon import keys  # noqa: E402
from vidanon.align import crop_face, restore_crop  # noqa: E402
from vidanon.anonymize import anonymize_video  # noqa: E402
from vidanon.config import Config  # noqa: E402
from vidanon.diffusion import make_schedule  # noqa: E402
from vidanon.identity import box_in_crop, load_recognizer  # noqa: E402
from vidanon.manifest import inspect_video, unseal_mask  # noqa: E402
from vidanon.masks import paste_alpha  # noqa: E402
from vidanon.models import latent_numel, load_model  # noqa: E402
from vidanon.restore import deanonymize_video  # noqa: E402
from vidanon.stages import FaceJob, run_core  # noqa: E402

BINS = (("< 40 px", 0, 40), ("40-80 px", 40, 80), (">= 80 px", 80, 1e9))
COLUMNS = (("anonymized", "original↔anonymized"), ("restored_sealed", "restored, sealed"),
           ("restored_flip", "restored, key flip"), ("one_bit_off", "key one bit off"), ("random_key", "random key"))


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as f:
        return [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]


def synthetic_clip(path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import synth

    w, h, end = 640, 240, 5
    sprites = [synth.astronaut_sprite(90), synth.t1_sprite(1, 60), synth.t1_sprite(2, 30)]
    movers = [synth.Mover(sp, [(0, w * (0.17 + 0.33 * k), h * 0.5), (end, w * (0.17 + 0.33 * k) + 6, h * 0.5)])
              for k, sp in enumerate(sprites)]
    synth.make_clip(path, width=w, height=h, frames=end + 1, sprites=movers, audio=False)
    return path


def faces_video(folder: Path, path: Path, side: int = 256) -> list[str]:
    """A lossless video with one labelled face image per frame (label: its folder's name)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    labels = []
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264rgb", rate=1, options={"qp": "0", "preset": "veryfast"})
        vs.pix_fmt, vs.width, vs.height = "rgb24", side, side
        vs.codec_context.time_base = Fraction(1, 1)
        for i, p in enumerate(files):
            rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
            s = side / max(rgb.shape[:2])
            rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s))))
            canvas = np.zeros((side, side, 3), np.uint8)
            canvas[: rgb.shape[0], : rgb.shape[1]] = rgb
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
            labels.append(p.parent.name)
        out.mux(vs.encode(None))
    return labels


def tar_at_far(genuine: list[float], impostor: list[float], far: float = 0.001) -> float | None:
    """Share of genuine pairs accepted at the distance threshold that accepts `far` of the impostor pairs."""
    if len(impostor) < round(1 / far) or not genuine:
        return None
    threshold = np.quantile(np.asarray(impostor), far)
    return float(np.mean(np.asarray(genuine) <= threshold))


def evaluate(video: Path, work: Path, cfg: Config, labels: list[str] | None = None) -> dict:
    rec = load_recognizer(cfg.recognizer)
    master = secrets.token_bytes(32)
    t0 = time.monotonic()
    anon = anonymize_video(video, work / "anon" / "cam.mp4", master, cfg, progress=False).output
    sealed = deanonymize_video(anon, work / "sealed" / "cam.mp4", master, progress=False, method="sealed").output
    flipped = deanonymize_video(anon, work / "flip" / "cam.mp4", master, progress=False, method="flip").output
    man = inspect_video(anon)
    frames = {name: decode(p) for name, p in (("orig", video), ("anon", anon), ("sealed", sealed), ("flip", flipped))}
    model = load_model(cfg.model, device=cfg.device)
    schedule = make_schedule(man.header.scheduler, man.header.steps)
    rows, wrong_jobs = [], {"one_bit_off": [], "random_key": []}
    for t in man.tracks:
        tkey = keys.track_key(master, man.video_id, t.id)
        bad = {"one_bit_off": bytes([tkey[0] ^ 1]) + tkey[1:], "random_key": secrets.token_bytes(32)}
        for f in t.faces:
            aff = f.affine_array
            box = box_in_crop(f.box, aff)
            mask = unseal_mask(tkey, man.video_id, t.id, f.frame, f.sealed, man.header.latent_hw)
            alpha = paste_alpha(mask, feather=man.header.feather)
            crops = {name: np.clip(np.rint(crop_face(fr[f.frame], aff)), 0, 255).astype(np.uint8) for name, fr in frames.items()}
            anon_crop = restore_crop(frames["anon"][f.frame], aff, alpha)
            for name, k in bad.items():
                wrong_jobs[name].append(FaceJob(t.id, keys.flip_signs(k, latent_numel(model)), aff, anon_crop, mask, alpha))
            rows.append({"track": t.id, "frame": f.frame, "height": f.height, "box": box, "crops": crops,
                         "label": labels[f.frame] if labels else None})
    for name, jobs in wrong_jobs.items():  # a forced restoration with a wrong key, as the key flip would run it
        run_core(model, jobs, schedule, 4)
        for row, job in zip(rows, jobs):
            row["crops"][name] = job.out
    emb = [{name: rec.embed(c, row["box"]) for name, c in row["crops"].items()} for row in rows]
    keymap = {"anonymized": "anon", "restored_sealed": "sealed", "restored_flip": "flip", "one_bit_off": "one_bit_off",
              "random_key": "random_key"}
    table = []
    for label, lo, hi in BINS:
        idx = [i for i, r in enumerate(rows) if lo <= r["height"] < hi]
        if not idx:
            continue
        entry = {"bin": label, "faces": len(idx)}
        for col, _ in COLUMNS:
            d = [rec.distance(emb[i]["orig"], emb[i][keymap[col]]) for i in idx]
            entry[col] = round(float(np.mean(d)), 4)
            entry[col + "_same"] = round(float(np.mean(np.asarray(d) <= rec.threshold)), 3)
        table.append(entry)
    result = {"recognizer": rec.name, "threshold": rec.threshold, "model": cfg.model, "steps": cfg.steps,
              "faces": len(rows), "seconds": round(time.monotonic() - t0, 1), "rows": table}
    if labels:  # Table 2: the original against the *other* images of each person, anonymized or restored
        for col, _ in COLUMNS[:3]:
            genuine, impostor = [], []
            for i in range(len(rows)):
                for j in range(len(rows)):
                    if i != j:
                        d = rec.distance(emb[i]["orig"], emb[j][keymap[col]])
                        (genuine if rows[i]["label"] == rows[j]["label"] else impostor).append(d)
            result[f"tar_at_far_0.1%_{col}"] = tar_at_far(genuine, impostor)
    return result


def print_table(result: dict) -> None:
    print(f"recognizer {result['recognizer']} (same person: distance <= {result['threshold']}), model {result['model']}, "
          f"{result['steps']} steps, {result['faces']} faces, {result['seconds']} s")
    print("mean recognizer distance to the original (share called the same person)")
    head = ["face height", "faces"] + [title for _, title in COLUMNS]
    lines = [head] + [[r["bin"], str(r["faces"])] + [f"{r[c]:.3f} ({r[c + '_same']:.0%})" for c, _ in COLUMNS]
                      for r in result["rows"]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    for k, v in result.items():
        if k.startswith("tar_at_far"):
            print(f"{k}: {'n/a (needs >= 1000 impostor pairs)' if v is None else f'{v:.3f}'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--video", type=Path, help="a video; faces are detected and tracked by vidanon")
    src.add_argument("--faces", type=Path, help="a folder of aligned face images, one subfolder per person")
    ap.add_argument("--model", default="testing:gaussian")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    cfg = Config(model=args.model, steps=args.steps, device=args.device, mask="landmarks", lossless=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        labels = None
        if args.faces:
            video, labels = work / "faces.mp4", faces_video(args.faces, work / "faces.mp4")
        else:
            video = args.video or synthetic_clip(work / "synthetic.mp4")
        result = evaluate(video, work, cfg, labels)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
