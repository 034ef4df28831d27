"""Manifest sealing/integrity and the config layering."""

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from vidanon import keys
from vidanon.config import Config, load_config
from vidanon.errors import InputError, WrongKeyError
from vidanon.manifest import FaceLog, _signed_part, read_manifest, seal_mask, unseal_mask, write_manifest

MASTER = bytes(range(32))
VID = bytes(range(16))
ROOT = Path(__file__).resolve().parents[1]


HEADER = {"format": "vidanon-manifest", "version": 1, "video_id": VID.hex(), "model": {"latent_shape": [3, 64, 64]},
          "diffusion": {"steps": 50}, "video": {"frames": 10}, "mask": {"feather": 8}}


def make_manifest(path: Path):
    """Written the way a run writes it (faces in frame order, tracks interleaved), then read back."""
    rng = np.random.default_rng(0)
    tks = {t: keys.track_key(MASTER, VID, t) for t in (0, 1)}
    masks = {}
    with FaceLog() as log:
        for frame in (3, 4):
            for t in (1, 0):
                masks[t, frame] = rng.random((64, 64)) > 0.5
                log.add(t, {"frame": frame, "pts": 1000 * frame, "affine": [[1, 0, 0], [0, 1, 0]], "score": 0.1 * frame + 1e-7,
                            "sealed": seal_mask(tks[t], VID, t, frame, masks[t, frame])})
        write_manifest(path, HEADER, log, tks)
    return read_manifest(path), tks, masks


def test_manifest_streamed_from_the_face_log_reads_back_and_verifies(tmp_path):
    m, tks, masks = make_manifest(tmp_path / "v.vidanon.json")
    assert m.header == HEADER and [t["id"] for t in m.tracks] == [0, 1]
    for t in m.tracks:
        assert (t["first_frame"], t["last_frame"], t["first_pts"], t["last_pts"]) == (3, 4, 3000, 4000)
        assert [f["frame"] for f in t["faces"]] == [3, 4] and t["faces"][1]["score"] == 0.4 + 1e-7
        # The MAC written while streaming is the one a reader recomputes from the parsed JSON.
        assert keys.mac(tks[t["id"]], _signed_part(m.header, t)) == t["mac"]
        m.check_key(t["id"], tks[t["id"]])


def test_face_log_keeps_face_entries_out_of_memory():
    """An hour of a busy camera is ~360k face entries of ~1.2 KB: they must not pile up in memory."""
    import tracemalloc

    face = {"frame": 0, "pts": 0, "affine": [[0.5, 0.01, 3.25], [-0.01, 0.5, 7.5]], "box": [1.5, 2.5, 90.25, 100.75],
            "score": 0.9, "interpolated": False, "sealed": "x" * 1000}
    with FaceLog() as log:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(21_000):
            log.add(i % 7, {**face, "frame": i // 7, "pts": i})
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert grown < 1_000_000, f"{grown / 21_000:.0f} bytes per face stayed in memory"
        back = [json.loads(f) for f in log.faces(3)]
        assert len(back) == 3000 and back[-1] == {**face, "frame": 2999, "pts": 20_996}


def test_sealed_mask_round_trip_and_binding(tmp_path):
    m, tks, masks = make_manifest(tmp_path / "v.vidanon.json")
    face = m.track(1)["faces"][1]
    got = unseal_mask(tks[1], VID, 1, 4, face["sealed"], (64, 64))
    assert np.array_equal(got, masks[1, 4])
    with pytest.raises(WrongKeyError):
        unseal_mask(tks[0], VID, 1, 4, face["sealed"], (64, 64))
    with pytest.raises(WrongKeyError):  # a sealed blob moved to another frame does not open
        unseal_mask(tks[1], VID, 1, 3, face["sealed"], (64, 64))


def test_check_key_tells_wrong_key_from_tampering(tmp_path):
    path = tmp_path / "v.vidanon.json"
    m2, tks, _ = make_manifest(path)
    m2.check_key(0, tks[0])
    with pytest.raises(WrongKeyError, match="wrong key for track 0"):
        m2.check_key(0, keys.track_key(bytes(32), VID, 0))
    data = json.loads(path.read_text())
    data["tracks"][0]["faces"][0]["frame"] = 3  # unchanged seal, but alter the header
    data["steps"] = 10
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="altered"):
        read_manifest(path).check_key(0, tks[0])
    assert not list(tmp_path.glob(".*partial"))


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
    m, _, _ = make_manifest(tmp_path / "v.vidanon.json")
    with pytest.raises(InputError, match="track 5 is not in this video"):
        m.track(5)
    data = m.to_json()
    del data["tracks"][1]["faces"][0]["sealed"]
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match="damaged or incomplete"):
        read_manifest(bad)


def test_default_yaml_documents_every_setting_with_its_default():
    documented = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    assert documented == Config().to_dict()
    assert set(documented) == {f.name for f in fields(Config)}


def test_config_layering_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 20\ncrf: 23\n")
    c = load_config(f, crf=18, model=None)
    assert (c.steps, c.crf, c.model) == (20, 18, "ffhq")
    f.write_text("stepz: 20\n")
    with pytest.raises(InputError, match="unknown setting.*stepz"):
        load_config(f)
    with pytest.raises(InputError, match="steps must be"):
        load_config(None, steps=0)
    with pytest.raises(InputError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, message", [
    ("steps: 4.5\n", "steps must be a whole number, got 4.5"),
    ("steps: ten\n", "steps must be a whole number, got 'ten'"),
    ('lossless: "no"\n', "lossless must be true or false, got 'no'"),
    ("crf: true\n", "crf must be a whole number, got True"),
    ("threshold: 1.5\n", "threshold must be in"),
    ("preset: quick\n", "preset must be one of"),
    ("detector: yolo\n", "detector must be"),
])
def test_config_values_are_type_checked_naming_the_file(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        load_config(f)
    assert str(e.value).startswith(str(f))
    assert load_config(None, threshold=0.3, iou_threshold=1 / 3).threshold == 0.3
