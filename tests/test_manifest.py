"""The manifest: typed records, sealing, integrity (key check values, track list, MACs), version 1 still read."""

import json
import shutil
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import synth

from vidanon import keys
from vidanon.config import Config
from vidanon.errors import InputError, ManifestAlteredError, WrongKeyError
from vidanon.manifest import (FaceLog, build_header, open_tracks, read_manifest, seal_mask, unseal_mask,
                              write_manifest)
from vidanon.records import Face

MASTER = bytes(range(32))
VID = bytes(range(16))
FIXTURE = Path(__file__).parent / "fixtures" / "v1"


def header(fps=25.0):
    info = types.SimpleNamespace(width=64, height=48, time_base=Fraction(1, 12800), fps=fps)
    model = types.SimpleNamespace(name="testing:gaussian", digest="closed-form", latent_shape=(3, 64, 64), image_shape=(3, 256, 256))
    return build_header(info, Config(model="testing:gaussian"), model, VID, {"beta_start": 0.0015}, ["landmarks"], 10)


def face(track: int, frame: int, mask) -> Face:
    return Face(frame=frame, pts=1000 * frame, affine=((1.0, 0.0, 0.5), (0.0, 1.0, 0.25)), box=(1.5, 2.0, 30.0, 40.0),
                score=0.1 * frame + 1e-7, interpolated=False,
                sealed=seal_mask(keys.track_key(MASTER, VID, track), VID, track, frame, mask))


def make_manifest(path: Path, fps=25.0):
    """Written the way a run writes it (faces in frame order, tracks interleaved), then read back."""
    rng = np.random.default_rng(0)
    masks = {}
    with FaceLog() as log:
        for frame in (3, 4):
            for t in (1, 0):
                masks[t, frame] = rng.random((64, 64)) > 0.5
                log.add(t, face(t, frame, masks[t, frame]))
        write_manifest(path, header(fps), log, MASTER)
    return read_manifest(path), masks


def test_written_manifest_reads_back_typed_and_verifies(tmp_path):
    m, masks = make_manifest(tmp_path / "v.vidanon.json")
    h = m.header
    assert (h.version, h.video_id, h.video.frames, h.video.time_base, h.steps) == (2, VID, 10, Fraction(1, 12800), 50)
    assert h.track_ids == (0, 1) and [t.id for t in m.tracks] == [0, 1]
    assert h.originals is h.binding is h.identity is None  # later features: typed, optional, absent
    for t in m.tracks:
        assert (t.first_frame, t.last_frame, t.first_pts, t.last_pts) == (3, 4, 3000, 4000)
        assert [f.frame for f in t.faces] == [3, 4] and t.faces[1].score == 0.4 + 1e-7 and t.kept is None
    tkeys = open_tracks(m, MASTER)
    assert tkeys == {t: keys.track_key(MASTER, VID, t) for t in (0, 1)}
    f = m.track(1).faces[1]
    assert np.array_equal(unseal_mask(tkeys[1], VID, 1, 4, f.sealed, (64, 64)), masks[1, 4])
    with pytest.raises(WrongKeyError):  # another track's key does not open it
        unseal_mask(tkeys[0], VID, 1, 4, f.sealed, (64, 64))
    with pytest.raises(WrongKeyError):  # a sealed blob moved to another frame does not open
        unseal_mask(tkeys[1], VID, 1, 3, f.sealed, (64, 64))
    assert open_tracks(m, keys.TrackKey(VID, 1, tkeys[1])) == {1: tkeys[1]}


def test_face_log_keeps_face_entries_out_of_memory():
    """An hour of a busy camera is ~360k face entries of ~1.2 KB: they must not pile up in memory."""
    import tracemalloc

    f = Face(frame=0, pts=0, affine=((0.5, 0.01, 3.25), (-0.01, 0.5, 7.5)), box=(1.5, 2.5, 90.25, 100.75), score=0.9,
             interpolated=False, sealed="x" * 1000)
    with FaceLog() as log:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(21_000):
            log.add(i % 7, Face(**{**vars(f), "frame": i // 7, "pts": i}))
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert grown < 1_000_000, f"{grown / 21_000:.0f} bytes per face stayed in memory"
        back = [Face.from_json(json.loads(b)) for b in log.faces(3)]
        assert len(back) == 3000 and back[-1] == Face(**{**vars(f), "frame": 2999, "pts": 20_996})


def edited(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    out = path.with_name("edited.vidanon.json")
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("what, change", [
    ("video id", lambda d: d.update(video_id=bytes(16).hex())),
    ("steps", lambda d: d["diffusion"].update(steps=10)),
    ("a face", lambda d: d["tracks"][0]["faces"][0].update(box=[0, 0, 1, 1])),
    ("swapped faces", lambda d: d["tracks"][0].update(faces=d["tracks"][1]["faces"])),
    ("a track and its commitment", lambda d: (d["tracks"].pop(), d["track_list"].update(count=1, ids=[0]))),
    ("a track key check value", lambda d: d["tracks"][1].update(key_check="00" * 16)),
])
def test_right_key_on_an_altered_manifest_says_altered_not_wrong_key(tmp_path, what, change):
    m, _ = make_manifest(tmp_path / "v.vidanon.json")
    with pytest.raises(ManifestAlteredError, match="the manifest was altered"):
        open_tracks(read_manifest(edited(tmp_path / "v.vidanon.json", change)), MASTER)


def test_wrong_key_says_wrong_key(tmp_path):
    m, _ = make_manifest(tmp_path / "v.vidanon.json")
    with pytest.raises(WrongKeyError, match="wrong key: this is not the master key"):
        open_tracks(m, bytes(32))
    tk = keys.TrackKey(VID, 1, keys.track_key(bytes(32), VID, 1))
    with pytest.raises(WrongKeyError, match="wrong key for track 1"):
        open_tracks(m, tk)
    with pytest.raises(WrongKeyError, match="restores track 1 only"):
        open_tracks(m, keys.TrackKey(VID, 1, keys.track_key(MASTER, VID, 1)), [0])


@pytest.mark.parametrize("change", [
    lambda d: d["tracks"].pop(),  # removed, commitment left as it was
    lambda d: d["tracks"].append(d["tracks"][0]),  # duplicated
    lambda d: d["track_list"].update(count=3),
])
def test_track_list_is_checked_without_a_key(tmp_path, change):
    make_manifest(tmp_path / "v.vidanon.json")
    with pytest.raises(InputError, match="altered|damaged"):
        read_manifest(edited(tmp_path / "v.vidanon.json", change))


def test_macs_are_checked_on_the_json_as_read(tmp_path):
    """Re-serialising (indentation, key order, 25 vs 25.0) or a setting a newer vidanon added to the
    recorded config inside the file as it was signed never breaks verification."""
    m, _ = make_manifest(tmp_path / "v.vidanon.json", fps=25)  # an int where the typed record holds 25.0
    assert m.header.video.fps == 25.0 and m.raw["video"]["fps"] == 25 and isinstance(m.raw["video"]["fps"], int)
    data = json.loads((tmp_path / "v.vidanon.json").read_text())
    (tmp_path / "pretty.vidanon.json").write_text(json.dumps(dict(reversed(list(data.items()))), indent=2))
    assert open_tracks(read_manifest(tmp_path / "pretty.vidanon.json"), MASTER).keys() == {0, 1}


def test_header_is_read_without_the_tracks(tmp_path):
    """A folder rerun compares settings from the header alone, however long the track list."""
    from vidanon.manifest import read_header

    m, _ = make_manifest(tmp_path / "v.vidanon.json")
    text = (tmp_path / "v.vidanon.json").read_text()
    (tmp_path / "cut.vidanon.json").write_text(text[: text.index(',"tracks":[') + 40])  # tracks cut short
    assert read_header(tmp_path / "cut.vidanon.json") == m.header
    (tmp_path / "pretty.vidanon.json").write_text(json.dumps(json.loads(text), indent=1))  # not canonical: read whole
    assert read_header(tmp_path / "pretty.vidanon.json") == m.header
    (tmp_path / "broken.vidanon.json").write_text("{")
    with pytest.raises(InputError, match="not a readable manifest"):
        read_header(tmp_path / "broken.vidanon.json")


def test_read_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_manifest(tmp_path / "x.vidanon.json")
    bad = tmp_path / "bad.vidanon.json"
    bad.write_text("{nope")
    with pytest.raises(InputError, match="not a readable manifest"):
        read_manifest(bad)
    bad.write_text(json.dumps({"format": "vidanon-manifest", "version": 99}))
    with pytest.raises(InputError, match="version 99"):
        read_manifest(bad)
    m, _ = make_manifest(tmp_path / "v.vidanon.json")
    with pytest.raises(InputError, match="track 5 is not in this video"):
        m.track(5)
    with pytest.raises(InputError, match="damaged or incomplete"):
        read_manifest(edited(tmp_path / "v.vidanon.json", lambda d: d["tracks"][1]["faces"][0].pop("sealed")))


# --- version 1, as the previous release wrote it -----------------------------------------------


@pytest.fixture
def v1(tmp_path):
    for name in ("clip.mp4", "clip.vidanon.json", "original.mp4", "restored.mp4"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    shutil.copy(FIXTURE / "master.key", tmp_path / "master.key")
    (tmp_path / "master.key").chmod(0o600)  # git keeps no file modes
    return tmp_path


def test_version_1_manifest_still_reads_and_verifies(v1):
    m = read_manifest(v1 / "clip.vidanon.json")
    assert m.header.version == 1 and m.header.key_check is None and m.header.track_ids is None
    assert len(m.tracks) == 1 and len(m.tracks[0].faces) == 3 and m.tracks[0].key_check is None
    master = keys.load_master_key(v1 / "master.key")
    assert open_tracks(m, master).keys() == {m.tracks[0].id}
    with pytest.raises(WrongKeyError, match="wrong key"):
        open_tracks(m, bytes(32))
    with pytest.raises(ManifestAlteredError, match="altered"):
        open_tracks(read_manifest(edited(v1 / "clip.vidanon.json", lambda d: d["diffusion"].update(steps=5))), master)


def test_version_1_video_restores_as_the_previous_release_did(v1):
    from vidanon.restore import deanonymize_video

    result = deanonymize_video(v1 / "clip.mp4", v1 / "out" / "clip.mp4", v1 / "master.key", progress=False)
    got, before = synth.read_frames(result.output), synth.read_frames(v1 / "restored.mp4")
    assert result.frames == len(before) == 3 and result.tracks == 1
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(got, before)) <= 2  # float noise at most
