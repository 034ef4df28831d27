"""No face left behind at night (issue 12): small faces in dark, noisy, low-bitrate footage, end to end.

The night clip (tests/synth.py `night_clip`): 800x450, four faces 30-40 px high walking, scene darkened and
desaturated, sensor noise sigma 8 + chroma noise + column pattern + hot pixels, H.264 at about 75 kbit/s.
Before weak candidates were used (CenterFace at its threshold, tracking as before) this test failed:
62 of 399 face-frames left untouched (15.5 %). Measured now by the replaced region, on the clip as synth now makes
it every time: 0 of 398 missed (3 before the tracker's handling of imprecise weak candidates, docs/tracking.md),
and 56 with the weak candidates turned off (floor = threshold).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import synth

from vidanon.anonymize import anonymize_video, detect_and_track, detector_for
from vidanon.config import Config
from vidanon.detect import detector_input
from vidanon.video import probe

MASTER = bytes(range(32))
FAST = Config(model="testing:gaussian", mask="landmarks", device="cpu", steps=2, lossless=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("recall")


def test_night_faces_are_all_changed(work):
    """Missed face-frames <= 1 % (a face-frame is missed when less than half of its inner region was replaced).
    Face-frames the encoder destroyed (synth.DESTROYED_NCC, decided from the clip alone) are left out and counted.

    Replaced, not changed: the test model's replacement of a dark face leaves, depending on the random video
    key, some pixels by chance equal to the original ones (measured: 2 to 7 of 399 face-frames "unchanged" from
    one run to the next with the same faces replaced), which would measure the test model, not the coverage."""
    clip = synth.night_clip(work / "night.mp4", audio=False)
    result = anonymize_video(clip.path, work / "night.anon.mp4", MASTER, FAST, progress=False)
    frames_in = synth.read_frames(clip.path)
    covered = synth.replaced_region(result.output, MASTER, frames_in[0].shape[:2])
    checked, excluded, missed = 0, 0, []
    for gt in clip.faces:
        if gt.visible < 0.5:
            continue
        if synth.face_ncc(clip.frame(gt.frame), frames_in[gt.frame], gt.xyxy) < synth.DESTROYED_NCC:
            excluded += 1
            continue
        checked += 1
        x0, y0, x1, y1 = synth.inner(gt.xyxy)
        inner = covered.get(gt.frame, np.zeros(frames_in[0].shape[:2], bool))[max(y0, 0) : y1, max(x0, 0) : x1]
        if not inner.size or inner.mean() < 0.5:
            missed.append((gt.frame, gt.face))
    print(f"night clip: {checked} face-frames checked, {excluded} excluded (destroyed by the encoder), "
          f"{len(missed)} missed: {missed}")
    assert checked >= 380 and excluded <= 20
    # Measured 0 of 398 missed, the same on every run now that the clip is (synth.REPEATABLE). Four other encodings
    # of these frames miss 0, 0, 0 and 1 (0, 8, 28 and 1 before; docs/tracking.md, "Weak candidates are imprecise").
    assert len(missed) <= 0.01 * checked


def test_scene_without_faces_stays_nearly_untouched(work):
    """People seen from behind, moving objects, textured ground, at night: anonymized area < 1 % of the frame."""
    clip = synth.backs_clip(work / "backs.mp4", frames=40, night=synth.Night(), bitrate=75_000, audio=False)
    result = anonymize_video(clip.path, work / "backs.anon.mp4", MASTER, FAST, progress=False)
    changed = [np.mean((a != b).any(axis=2)) for a, b in zip(synth.read_frames(clip.path), synth.read_frames(result.output))]
    print(f"face-free night clip: anonymized area {100 * np.mean(changed):.3f} % of the frame on average, "
          f"{result.faces} faces in {result.tracks} tracks")
    assert np.mean(changed) < 0.01


def test_a_light_blur_of_the_detector_input_finds_faces_in_heavy_noise(work):
    """Noise sigma 16 + chroma noise, 75 kbit/s, 80 px faces (bench_recall's night16-75k): CenterFace on the frames as
    decoded scores most faces below its threshold for whole clips, so no track starts (measured: 74 of 120
    face-frames not covered by a tracked face box); on the detector's input blurred by sigma 0.8 (the default
    --detect-blur), 0 of 120. Detection and tracking only, as anonymize_video runs them."""
    clip = synth.night_clip(work / "noisy.mp4", frames=30, face_heights=[80] * 4, night=synth.Night(noise=16, chroma=8),
                            bitrate=75_000, audio=False)
    frames_in = synth.read_frames(clip.path)
    info = probe(clip.path)
    counted = [gt for gt in clip.faces if gt.visible >= 0.5
               and synth.face_ncc(clip.frame(gt.frame), frames_in[gt.frame], gt.xyxy) >= synth.DESTROYED_NCC]

    def missed(cfg: Config) -> int:
        tracked = list(detect_and_track(clip.path, info, cfg, detector_for(cfg), progress=False))
        n = 0
        for gt in counted:
            boxes = np.zeros(frames_in[0].shape[:2], bool)
            for x0, y0, x1, y1 in np.rint(tracked[gt.frame].xyxy).astype(int).clip(0):
                boxes[y0:y1, x0:x1] = True
            x0, y0, x1, y1 = synth.inner(gt.xyxy)
            n += boxes[y0:y1, x0:x1].mean() < 0.5
        return n

    assert FAST.detect_blur == Config().detect_blur > 0
    with_blur, without = missed(FAST), missed(replace(FAST, detect_blur=0.0))
    print(f"night16-75k, 80 px faces: {len(counted)} face-frames, {with_blur} missed with the detector input blurred, "
          f"{without} without")
    assert len(counted) >= 110
    assert with_blur <= 0.1 * len(counted) and without >= 0.4 * len(counted)


def test_the_detector_input_is_made_beside_the_frame_never_in_it():
    """The blur is for the detector only: the decoded frame, from which the output is made, stays as it was."""
    rgb = np.random.default_rng(0).integers(0, 256, (45, 80, 3), dtype=np.uint8)
    before = rgb.copy()
    seen = detector_input(rgb, 0.8)
    assert seen.shape == rgb.shape and seen.dtype == np.uint8 and not np.array_equal(seen, rgb)
    assert np.array_equal(rgb, before)
    assert detector_input(rgb, 0.0) is rgb
