"""Sealed originals: each face's own pixels, exact after restore, under its own track key only."""

import numpy as np
import pytest

from vidanon import keys
from vidanon.align import face_affine, paste_face, paste_weights
from vidanon.errors import WrongKeyError
from vidanon.masks import paste_alpha
from vidanon.sealed import (SealedDataError, SidecarReader, SidecarWriter, open_original, originals, restore_into,
                            seal_original, sidecar_path)

VIDEO = bytes(range(16))
MASTER = bytes(range(32))


def face_at(cx, cy, size):
    """A face's (affine, alpha) for a face box of `size` px centred at (cx, cy), with a square latent mask."""
    box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    lm = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.58], [0.35, 0.76], [0.65, 0.76]]) * size + box[:2]
    affine, _ = face_affine(lm, box)
    mask = np.zeros((64, 64), bool)
    mask[16:56, 12:52] = True
    return affine, paste_alpha(mask, feather=8)


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    faces = [face_at(120, 120, 60), face_at(160, 130, 70)]  # overlapping footprints
    return frame, faces


def test_restore_is_bit_exact_after_pasting_every_face(scene):
    frame, faces = scene
    rng = np.random.default_rng(1)
    anonymized = frame
    for affine, alpha in faces:
        anonymized = paste_face(anonymized, rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), affine, alpha)
    assert (anonymized != frame).any()
    prints = [paste_weights(a, al, frame.shape[:2]) for a, al in faces]
    tks = [keys.track_key(MASTER, VIDEO, t) for t in (1, 2)]
    blobs = [seal_original(tk, VIDEO, t, 7, o) for tk, t, o in zip(tks, (1, 2), originals(frame, prints, [1, 2]))]
    restored = anonymized.copy()
    for tk, t, blob in zip(tks, (1, 2), blobs):
        restore_into(restored, open_original(tk, VIDEO, t, 7, blob))
    assert np.array_equal(restored, frame)


def test_overlap_pixels_belong_to_one_face_and_one_key_restores_only_its_own(scene):
    frame, faces = scene
    prints = [paste_weights(a, al, frame.shape[:2]) for a, al in faces]
    first, second = originals(frame, prints, [1, 2])
    full = np.zeros((2, *frame.shape[:2]), bool)
    for k, o in enumerate((first, second)):
        full[k, o.y0 : o.y0 + o.owned.shape[0], o.x0 : o.x0 + o.owned.shape[1]] = o.owned
    support = np.zeros(frame.shape[:2], bool)
    for y0, x0, w in prints:
        support[y0 : y0 + w.shape[0], x0 : x0 + w.shape[1]] |= w > 0
    overlap = np.zeros(frame.shape[:2], bool)
    y0, x0, w = prints[0]
    overlap[y0 : y0 + w.shape[0], x0 : x0 + w.shape[1]] = w > 0
    y0, x0, w = prints[1]
    overlap[y0 : y0 + w.shape[0], x0 : x0 + w.shape[1]] &= w > 0
    assert overlap.sum() > 100  # the faces do overlap
    assert not (full[0] & full[1]).any() and np.array_equal(full[0] | full[1], support)
    assert full[0][overlap].any() and full[1][overlap].any()  # each owns part of the overlap
    # the first face's sealed pixels hold nothing of the second face's own pixels
    assert not first.pixels[~first.owned].any()
    # restoring only the second leaves the first's pixels (overlap included) as anonymized
    anonymized = np.zeros_like(frame)
    restore_into(anonymized, second)
    assert np.array_equal(anonymized[full[1]], frame[full[1]]) and not anonymized[~full[1]].any()


def test_a_sealed_original_opens_only_with_its_key_track_frame_and_video(scene):
    frame, faces = scene
    (o,) = originals(frame, [paste_weights(*faces[0], frame.shape[:2])], [1])
    tk = keys.track_key(MASTER, VIDEO, 1)
    blob = seal_original(tk, VIDEO, 1, 3, o)
    assert MASTER not in blob and tk not in blob and frame[o.y0 : o.y0 + 4, o.x0 : o.x0 + 4].tobytes() not in blob
    for args in ((keys.track_key(MASTER, VIDEO, 2), VIDEO, 1, 3), (tk, VIDEO, 2, 3), (tk, VIDEO, 1, 4), (tk, bytes(16), 1, 3)):
        with pytest.raises(WrongKeyError):
            open_original(*args, blob)
    back = open_original(tk, VIDEO, 1, 3, blob)
    assert (back.y0, back.x0) == (o.y0, o.x0) and np.array_equal(back.pixels, o.pixels) and np.array_equal(back.owned, o.owned)


def test_sidecar_round_trip_and_every_tampering_is_refused(tmp_path):
    path = sidecar_path(tmp_path / "cam.mp4")
    assert path.name == "cam.vidanon.sealed"
    pieces = [bytes([i]) * (100 + i) for i in range(5)]
    with SidecarWriter(path) as w:
        where = [w.add(p) for p in pieces]
        assert not path.exists()  # only a temporary file until complete
        index = w.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with SidecarReader(path, index) as r:
        assert [r.read(*at) for at in where] == pieces
    data = path.read_bytes()
    cases = {
        "truncated": data[:-10],
        "edited": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "reordered": data[: where[0][0]] + pieces[1] + pieces[0] + data[where[2][0] :],
    }
    for name, bad in cases.items():
        path.write_bytes(bad)
        with pytest.raises(SealedDataError, match=str(path)):
            SidecarReader(path, index)
    path.unlink()
    with pytest.raises(SealedDataError, match="missing"):
        SidecarReader(path, index)


def test_an_aborted_sidecar_leaves_nothing(tmp_path):
    path = tmp_path / "cam.vidanon.sealed"
    with pytest.raises(RuntimeError):
        with SidecarWriter(path) as w:
            w.add(b"x" * 10)
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
