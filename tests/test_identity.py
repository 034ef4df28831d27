"""Who is who: sealed identities per track, `vidanon find` by photo, `--keep-photo`, and the identity benchmark.

Three real faces (skimage's astronaut, two faces of insightface's t1.jpg) walk slowly across a lossless clip;
the find photo is another view of the astronaut (resized, mirrored, relit copy of the source photo).
"""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import synth
from skimage import data as skdata

from vidanon import keys
from vidanon.anonymize import anonymize_video
from vidanon.cli import main
from vidanon.config import Config
from vidanon.errors import KeyFileError, WrongKeyError
from vidanon.find import find, master_for_find
from vidanon.manifest import inspect_video

pytest.importorskip("dlib", reason="needs the identity extra: pip install 'vidanon[identity]'")

from vidanon.identity import load_recognizer, unseal_identity  # noqa: E402

MASTER = bytes(range(32))
OTHER = bytes(range(1, 33))
FAST = Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=2, lossless=True)
ROOT = Path(__file__).resolve().parents[1]


def three_faces_clip(path, frames=8):
    """Astronaut (mover 0), t1 face 1 (mover 1), t1 face 2 (mover 2): about 90 px high, far apart."""
    w, h, end = 640, 240, frames - 1
    sprites = [synth.astronaut_sprite(90), synth.t1_sprite(1, 90), synth.t1_sprite(2, 90)]
    movers = [synth.Mover(sp, [(0, w * (0.17 + 0.33 * k), h * 0.5), (end, w * (0.17 + 0.33 * k) + 6, h * 0.5)])
              for k, sp in enumerate(sprites)]
    return synth.make_clip(path, width=w, height=h, frames=frames, sprites=movers, audio=False)


def other_view(path):
    """The astronaut's photo resized to 60 %, mirrored and relit: another view of the person of mover 0."""
    rgb = skdata.astronaut()
    v = cv2.resize(rgb, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)[:, ::-1]
    v = np.clip(v.astype(np.float32) * 0.8 + 20, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(v, cv2.COLOR_RGB2BGR))
    return path


def track_of(man, clip, mover):
    """The track id whose first face lies on mover's ground-truth face."""
    gt = next(g for g in clip.faces if g.face == mover and g.frame == 0)
    cx, cy = (gt.xyxy[0] + gt.xyxy[2]) / 2, (gt.xyxy[1] + gt.xyxy[3]) / 2
    for t in man.tracks:
        x0, y0, x1, y1 = t.faces[0].box
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            return t.id
    raise AssertionError(f"no track for mover {mover}")


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    work = tmp_path_factory.mktemp("identity")
    clip = three_faces_clip(work / "cam.mp4")
    out = work / "out"
    anonymize_video(clip.path, out / "cam.mp4", MASTER, Config(**{**FAST.to_dict(), "index_identities": True}), progress=False)
    return work, clip, out, other_view(work / "photo.png")


def test_find_ranks_the_person_first(indexed):
    work, clip, out, photo = indexed
    man = inspect_video(out / "cam.mp4")
    assert len(man.tracks) == 3 and all(t.identity for t in man.tracks)
    assert man.header.identity.threshold == 0.6 and man.header.identity.recognizer.startswith("dlib")
    found = find([photo], MASTER, [out])
    first = found.hits[0]
    assert first.track == track_of(man, clip, 0) and first.same and first.distance < 0.6
    assert [h.same for h in found.hits[1:]] == [False, False] and all(h.distance > 0.6 for h in found.hits[1:])
    print("distances:", [round(h.distance, 3) for h in found.hits])


def test_find_cli_json_contact_sheet_and_notes(indexed, capsys):
    work, clip, out, photo = indexed
    folder = work / "mixed"
    shutil.copytree(out, folder)
    shutil.copy(clip.path, folder / "not_anonymized.mp4")  # a plain video: skipped with a note
    key = work / "master.key"
    keys.save_master_key(key, MASTER)
    sheet = work / "matches.png"
    assert main(["find", "--photo", str(photo), "--key-file", str(key), str(folder), "--json", "--contact-sheet", str(sheet)]) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert result["matches"][0]["same"] and result["matches"][0]["video"].endswith("cam.mp4")
    assert "not_anonymized.mp4: skipped: not a vidanon output" in cap.err
    assert cv2.imread(str(sheet)) is not None


def test_find_refuses_wrong_and_track_keys(indexed, capsys):
    work, clip, out, photo = indexed
    with pytest.raises(WrongKeyError, match="wrong key"):
        find([photo], OTHER, [out])
    tk = work / "track.key"
    man = inspect_video(out / "cam.mp4")
    keys.save_track_key(tk, keys.TrackKey(man.video_id, 0, keys.track_key(MASTER, man.video_id, 0)))
    with pytest.raises(KeyFileError, match="single-track key; find needs the master key"):
        master_for_find(tk)
    assert main(["find", "--photo", str(photo), "--key-file", str(tk), str(out)]) == 2
    assert "single-track key" in capsys.readouterr().err


def test_photo_with_no_face_or_several_is_named(indexed, capsys):
    work, clip, out, photo = indexed
    blank = work / "wall.png"
    cv2.imwrite(str(blank), synth.background(320, 240))
    group = work / "group.jpg"
    shutil.copy(synth.t1_path(), group)
    key = work / "k2.key"
    keys.save_master_key(key, MASTER)
    for p, what in ((blank, "no face found"), (group, "6 faces found")):
        assert main(["find", "--photo", str(p), "--key-file", str(key), str(out)]) == 2
        err = capsys.readouterr().err
        assert str(p) in err and what in err


def test_manifest_holds_no_embedding_in_the_clear(indexed):
    """Every field of the manifest decoded: no string, list or base64 blob reads as the embedding."""
    work, clip, out, photo = indexed
    man = inspect_video(out / "cam.mp4")
    rec = load_recognizer()
    raw = json.loads((out / "cam.vidanon.json").read_text())
    truth = [unseal_identity(keys.track_key(MASTER, man.video_id, t.id), man.video_id, t.id, t.identity) for t in man.tracks]
    assert all(v.shape == (128,) for v in truth) and rec.distance(truth[0], truth[1]) > 0.6

    def leaves(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from leaves(v)
        elif isinstance(obj, list):
            if obj and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
                yield np.asarray(obj, np.float64)
            for v in obj:
                yield from leaves(v)
        elif isinstance(obj, str):
            try:
                blob = base64.b64decode(obj, validate=True)
            except ValueError:
                return
            for dtype in ("<f4", "<f8", "<f2"):
                usable = len(blob) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize
                for skip in range(0, min(usable, 64), np.dtype(dtype).itemsize):
                    with np.errstate(all="ignore"):
                        yield np.frombuffer(blob[skip:usable], dtype).astype(np.float64)

    checked = 0
    for values in leaves(raw):
        for t in truth:
            for start in range(0, max(len(values) - 127, 0)):
                window = values[start : start + 128]
                checked += 1
                with np.errstate(all="ignore"):
                    assert not np.allclose(window, t, atol=1e-3)
    assert checked > 0
    for t in man.tracks:  # and a blob sealed for one track does not open as another's
        with pytest.raises(WrongKeyError):
            unseal_identity(keys.track_key(MASTER, man.video_id, t.id), man.video_id, (t.id + 1) % 3, t.identity)


def test_keep_photo_leaves_the_requester_untouched(indexed):
    work, clip, out, photo = indexed
    kept_out = work / "kept" / "cam.mp4"
    result = anonymize_video(clip.path, kept_out, MASTER, FAST, progress=False, keep_photos=[photo])
    man = inspect_video(kept_out)
    me = track_of(man, clip, 0)
    kept = {t.id: t.kept for t in man.tracks if t.kept is not None}
    assert list(kept) == [me] and kept[me].distance < 0.5
    # Counted apart: the kept faces are not "anonymized", and the others are.
    others = [t for t in man.tracks if t.id != me]
    assert (result.kept_tracks, result.kept_faces) == (1, len(man.track(me).faces))
    assert (result.tracks, result.faces) == (len(others), sum(len(t.faces) for t in others))
    assert all(f.sealed is None and f.original is None for f in man.track(me).faces)
    assert not any(t.identity for t in man.tracks)  # keeping makes no template unless asked
    assert "photo" not in (kept_out.parent / "cam.vidanon.json").read_text()
    frames_in, frames_out = synth.read_frames(clip.path), synth.read_frames(kept_out)
    for i in range(clip.frames):
        for gt in clip.faces_at(i):
            x0, y0, x1, y1 = (int(round(v)) for v in gt.xyxy)
            a, b = frames_in[i][y0:y1, x0:x1].astype(int), frames_out[i][y0:y1, x0:x1].astype(int)
            if gt.face == 0:
                assert np.array_equal(a, b), f"frame {i}: the requester's face changed"
            else:  # the leak check of test_pipeline: the face centre differs by > 12 levels on average
                cy0, cy1, cx0, cx1 = y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4
                assert np.abs(a[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] - b[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]).mean() > 12
    # restoring all tracks with the master key puts the others back and leaves the kept one as it was
    from vidanon.restore import deanonymize_video

    restored = deanonymize_video(kept_out, work / "restored" / "cam.mp4", MASTER, progress=False)
    assert restored.method == "sealed"
    frames_back = synth.read_frames(restored.output)
    assert all(np.array_equal(a, b) for a, b in zip(frames_in, frames_back))


def test_eval_identity_prints_table_and_one_bit_off_key_does_not_restore(tmp_path):
    """The benchmark on a short clip; a key one bit off restores no closer to the original than the
    anonymized face (tolerance: 0.05 in recognizer distance)."""
    clip = three_faces_clip(tmp_path / "cam.mp4", frames=3)
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "eval_identity.py"), "--video", str(clip.path),
                          "--steps", "2", "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "original↔anonymized" in out.stdout and "one bit off" in out.stdout
    r = json.loads((tmp_path / "r.json").read_text())
    for row in r["rows"]:
        assert row["one_bit_off"] >= row["anonymized"] - 0.05, row
        assert row["restored_sealed"] == pytest.approx(0.0, abs=1e-4)


def test_without_the_extra_or_the_arcface_pack_the_message_says_how(monkeypatch, tmp_path):
    from vidanon.errors import ModelNotFoundError, VidanonError
    from vidanon.identity import ArcFaceRecognizer, DlibRecognizer

    monkeypatch.setitem(sys.modules, "dlib", None)  # as if vidanon[identity] were not installed
    with pytest.raises(VidanonError, match=r"pip install 'vidanon\[identity\]'"):
        DlibRecognizer()
    with pytest.raises(ModelNotFoundError, match="non-commercial research only"):
        ArcFaceRecognizer(root=tmp_path, download=False)


def test_kept_tracks_are_labelled_kept_in_inspect_and_the_summary(indexed, tmp_path, capsys):
    """--keep-photo: inspect's table and JSON, the contact sheet and the run's summary say which tracks show the
    real face, never "anonymized" for them, and count their faces apart."""
    import cv2

    work, clip, out, photo = indexed
    shutil.copy(clip.path, tmp_path / "cam.mp4")
    key = tmp_path / "master.key"
    keys.save_master_key(key, MASTER)
    code = main(["anonymize", str(tmp_path / "cam.mp4"), "-o", str(tmp_path / "out"), "--key-file", str(key),
                 "--keep-photo", str(photo), "--model", "testing:gaussian", "--mask", "landmarks", "--steps", "2",
                 "--device", "cpu", "--lossless"])
    summary = capsys.readouterr().out
    assert code == 0
    video = tmp_path / "out" / "cam.mp4"
    man = inspect_video(video)
    me = track_of(man, clip, 0)
    n_kept = len(man.track(me).faces)
    assert f"{n_kept} faces of 1 track kept visible" in summary, summary
    assert f"faces anonymized in {len(man.tracks) - 1} tracks" in summary

    assert main(["inspect", str(video), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["tracks"]}
    assert rows[me]["kept"] is True and rows[me]["kept_distance"] < 0.5
    assert all(r["kept"] is False and r["kept_distance"] is None for tid, r in rows.items() if tid != me)
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(video), "--contact-sheet", str(sheet)]) == 0
    table = capsys.readouterr().out
    assert "(1 kept visible)" in table.splitlines()[0]
    lines = {int(line.split()[0]): line for line in table.splitlines()[2:] if line.split() and line.split()[0].isdigit()}
    assert "KEPT VISIBLE" in lines[me] and all("anonymized" in lines[t] and "KEPT" not in lines[t] for t in lines if t != me)
    from vidanon.contact_sheet import KEPT, LABEL_W

    picture = cv2.imread(str(sheet))
    assert (picture[:, :LABEL_W] == KEPT).all(axis=2).any()  # the kept track's label, drawn in its own colour
