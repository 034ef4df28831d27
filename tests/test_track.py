"""Tests for vidanon.track on synthetic boxes (no images needed)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vidanon.detect import Detections
from vidanon.track import Tracker, TrackerConfig, track_faces


def dets(boxes, scores=None) -> Detections:
    """Detections from a list of xyxy boxes; landmarks are 5 points inside each box."""
    xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)
    size = xyxy[:, None, 2:] - xyxy[:, None, :2]
    landmarks = xyxy[:, None, :2] + rel[None] * size
    score = np.full(len(xyxy), 0.9, np.float32) if scores is None else np.asarray(scores, np.float32)
    return Detections(xyxy=xyxy, landmarks=landmarks.astype(np.float32), score=score)


def box(cx: float, cy: float, s: float = 40.0) -> list[float]:
    return [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]


def iou(a, b) -> float:
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a, b
    inter = max(min(ax1, bx1) - max(ax0, bx0), 0) * max(min(ay1, by1) - max(ay0, by0), 0)
    return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)


def own_ids(out: list[Detections], inp: list[Detections]) -> list[np.ndarray]:
    """Track ids of each frame's input rows (the first rows of the output)."""
    return [o.track_id[: len(i)] for o, i in zip(out, inp)]


def check_contract(inp: list[Detections], out: list[Detections]) -> None:
    assert len(out) == len(inp)
    all_ids = []
    for i, o in zip(inp, out):
        n = len(i)
        assert len(o) >= n
        np.testing.assert_array_equal(o.xyxy[:n], i.xyxy)
        np.testing.assert_array_equal(o.landmarks[:n], i.landmarks)
        np.testing.assert_array_equal(o.score[:n], i.score)
        assert not o.interpolated[:n].any() and o.interpolated[n:].all()
        assert (o.track_id >= 0).all()
        assert len(np.unique(o.track_id)) == len(o), "two faces of one track in a frame"
        assert o.xyxy.dtype == np.float32 and o.track_id.dtype == np.int64
        all_ids.extend(o.track_id[:n].tolist())
    if all_ids:
        # Consecutive from 0 in order of first detection.
        first_seen = list(dict.fromkeys(all_ids))
        assert first_seen == list(range(len(first_seen)))


def test_random_detections_are_never_dropped_or_changed():
    rng = np.random.default_rng(1234)
    for trial in range(30):
        n_frames = int(rng.integers(1, 60))
        inp = []
        for _ in range(n_frames):
            n = int(rng.integers(0, 6))
            xy = rng.uniform(0, 300, (n, 2))
            wh = rng.uniform(1, 80, (n, 2))
            d = dets(np.concatenate([xy, xy + wh], axis=1), rng.uniform(0, 1, n))
            inp.append(d)
        config = TrackerConfig(max_gap=int(rng.integers(0, 5)), extend=int(rng.integers(0, 4)))
        before = [(d.xyxy.copy(), d.landmarks.copy(), d.score.copy()) for d in inp]
        out = track_faces(inp, config)
        check_contract(inp, out)
        for d, (x, lm, s) in zip(inp, before):  # the input itself is left alone
            np.testing.assert_array_equal(d.xyxy, x)
            np.testing.assert_array_equal(d.landmarks, lm)
            np.testing.assert_array_equal(d.score, s)


def test_duplicate_boxes_in_one_frame_get_separate_tracks():
    inp = [dets([box(100, 100), box(100, 100)]) for _ in range(5)]
    out = track_faces(inp)
    check_contract(inp, out)
    assert all(sorted(ids.tolist()) == [0, 1] for ids in own_ids(out, inp))


def test_empty_input_and_frames_without_faces():
    assert track_faces([]) == []
    inp = [Detections.empty() for _ in range(5)]
    out = track_faces(inp)
    assert len(out) == 5 and all(len(o) == 0 for o in out)
    # A single face in the middle of empty frames: extended on both sides.
    inp[2] = dets([box(50, 50)], [0.01])
    out = track_faces(inp, TrackerConfig(extend=1))
    check_contract(inp, out)
    assert [len(o) for o in out] == [0, 1, 1, 1, 0]
    assert out[2].track_id[0] == 0 and out[2].score[0] == np.float32(0.01)


def test_steady_face_keeps_one_id():
    inp = [dets([box(50 + 5 * f, 100 + 2 * f)]) for f in range(100)]
    out = track_faces(inp)
    check_contract(inp, out)
    assert all(ids.tolist() == [0] for ids in own_ids(out, inp))
    assert all(len(o) == 1 for o in out)  # nothing to add inside the video


def test_crossing_faces_keep_their_ids():
    # Two faces walk towards each other on the same row (8 px/frame each, 40 px boxes)
    # and overlap for ~10 frames. They meet between frames, so at each frame the box
    # nearest to where a face WAS belongs to the other face: only the velocity
    # prediction keeps the ids apart.
    n = 21
    inp = [dets([box(100 + 8 * f, 100), box(264 - 8 * f, 100)]) for f in range(n)]
    out = track_faces(inp)
    check_contract(inp, out)
    assert all(ids.tolist() == [0, 1] for ids in own_ids(out, inp))


def test_crossing_faces_diagonal_with_row_order_swapped():
    # Detector row order says nothing: rows come sorted by x here, so they swap at the crossing.
    inp = []
    for f in range(41):
        a, b = box(100 + 5 * f, 100 + 2 * f), box(302 - 5 * f, 180.8 - 2 * f)
        inp.append(dets(sorted([a, b])))
    out = track_faces(inp)
    check_contract(inp, out)
    for f, (o, i) in enumerate(zip(out, inp)):
        a_row = int(np.argmin(np.abs(i.xyxy[:, 0] - (80 + 5 * f)) + np.abs(i.xyxy[:, 1] - (80 + 2 * f))))
        assert o.track_id[a_row] == 0 and o.track_id[1 - a_row] == 1


def test_gap_of_three_frames_is_interpolated():
    inp = [dets([box(100 + 4 * f, 100)], [0.8 if f < 10 else 0.6]) for f in range(20)]
    for f in (10, 11, 12):
        inp[f] = Detections.empty()
    out = track_faces(inp)
    check_contract(inp, out)
    assert all(ids.tolist() == [0] for ids in own_ids(out, inp) if len(ids))
    for f in (10, 11, 12):
        assert len(out[f]) == 1 and out[f].interpolated[0] and out[f].track_id[0] == 0
        np.testing.assert_allclose(out[f].xyxy[0], box(100 + 4 * f, 100), atol=1e-4)
        expected = dets([box(100 + 4 * f, 100)]).landmarks[0]
        np.testing.assert_allclose(out[f].landmarks[0], expected, atol=1e-4)
        assert out[f].score[0] == np.float32(0.6)  # the lower neighbour score


def test_gap_longer_than_max_gap_starts_a_new_track():
    config = TrackerConfig(max_gap=5, extend=0)
    inp = [dets([box(100, 100)]) for _ in range(20)]
    for f in range(5, 11):  # 6 missing frames > max_gap
        inp[f] = Detections.empty()
    out = track_faces(inp, config)
    check_contract(inp, out)
    first_ids = [int(ids[0]) if len(ids) else None for ids in own_ids(out, inp)]
    assert first_ids == [0] * 5 + [None] * 6 + [1] * 9
    assert all(len(out[f]) == 0 for f in range(5, 11))
    # Exactly max_gap missing frames are still bridged.
    inp[10] = dets([box(100, 100)])
    out = track_faces(inp, config)
    check_contract(inp, out)
    assert all(o.track_id.tolist() == [0] for o in out)


def test_extension_before_and_after_clipped_at_video_ends():
    n = 30
    inp = [Detections.empty() for _ in range(n)]
    for f in range(10, 20):  # face A moving right at 2 px/frame
        inp[f] = dets([box(100 + 2 * f, 100)])
    for f in range(0, 3):  # face B at the very start, static
        inp[f] = Detections.concat([inp[f], dets([box(300, 300)])])
    for f in range(28, 30):  # face C at the very end
        inp[f] = dets([box(200, 300)])
    out = track_faces(inp, TrackerConfig(extend=4))
    check_contract(inp, out)

    def frames_of(tid):
        return [f for f, o in enumerate(out) if tid in o.track_id.tolist()]

    ids_a = {int(own_ids(out, inp)[f][0]) for f in range(10, 20)}
    assert len(ids_a) == 1
    (tid_a,) = ids_a
    assert frames_of(tid_a) == list(range(6, 24))
    # Extension follows the face's velocity (2 px/frame).
    for f in list(range(6, 10)) + list(range(20, 24)):
        row = out[f].track_id.tolist().index(tid_a)
        assert out[f].interpolated[row]
        np.testing.assert_allclose(out[f].xyxy[row], box(100 + 2 * f, 100), atol=1e-4)
    tid_b = int(out[0].track_id[0])
    assert frames_of(tid_b) == list(range(0, 7))
    tid_c = int(own_ids(out, inp)[28][0])
    assert frames_of(tid_c) == list(range(24, 30))
    assert sorted({tid_a, tid_b, tid_c}) == [0, 1, 2] and tid_b == 0 and tid_a == 1


def test_extension_shift_is_capped_at_half_a_box():
    # Two detections 30 px apart: velocity 30 px/frame, but extension stops at half the 40 px box.
    empty3 = [Detections.empty()] * 3
    inp = empty3 + [dets([box(100, 100)]), dets([box(130, 100)])] + empty3
    out = track_faces(inp, TrackerConfig(extend=3))
    check_contract(inp, out)
    np.testing.assert_allclose(out[5].xyxy[0], box(150, 100), atol=1e-4)
    np.testing.assert_allclose(out[7].xyxy[0], box(150, 100), atol=1e-4)
    np.testing.assert_allclose(out[0].xyxy[0], box(80, 100), atol=1e-4)


def test_small_fast_face_keeps_one_id_by_centre_distance():
    # 20 px face at 12 px/frame: IoU with the previous box is 0.25 < 0.3 on the second frame.
    inp = [dets([box(50 + 12 * f, 100, s=20)]) for f in range(30)]
    out = track_faces(inp)
    check_contract(inp, out)
    assert all(ids.tolist() == [0] for ids in own_ids(out, inp))
    # Without the fallback the track breaks: the fallback is what holds it together.
    out = track_faces(inp, TrackerConfig(center_distance=0))
    assert {int(ids[0]) for ids in own_ids(out, inp)} != {0}


def test_distant_faces_are_not_joined_across_a_gap():
    # Face A vanishes; face B appears 3 face sizes away a few frames later: new id, no fill.
    inp = [dets([box(100, 100)]) for _ in range(10)] + [Detections.empty()] * 3
    inp += [dets([box(220, 100)]) for _ in range(10)]
    out = track_faces(inp, TrackerConfig(extend=0))
    check_contract(inp, out)
    assert int(own_ids(out, inp)[0][0]) == 0 and int(own_ids(out, inp)[-1][0]) == 1
    assert all(len(out[f]) == 0 for f in range(10, 13))


def test_online_tracker_hands_each_frame_out_a_bounded_number_of_frames_behind():
    # What lets the pipeline detect ahead in one thread and anonymize behind in another:
    # every frame comes out, in order, at most extend + 4·(max_gap + 1) frames after it went
    # in, already holding the gap fills and extensions that later frames give it.
    rng = np.random.default_rng(99)
    added = 0
    for trial in range(40):
        config = TrackerConfig(max_gap=int(rng.integers(0, 13)), extend=int(rng.integers(0, 16)))
        n_frames, k = int(rng.integers(1, 150)), int(rng.integers(1, 4))
        start, velocity = rng.uniform(50, 400, (k, 2)), rng.normal(0, 4, (k, 2))
        inp = [dets([box(*(start[j] + velocity[j] * f), 40) for j in range(k) if rng.random() > 0.4])
               for f in range(n_frames)]
        tracker, out, worst = Tracker(config), [], 0
        for i, d in enumerate(inp):
            out += tracker.push(d)
            worst = max(worst, i + 1 - len(out))
        out += tracker.finish()
        assert worst <= config.extend + 4 * (config.max_gap + 1)
        check_contract(inp, out)
        reference = track_faces(inp, config)
        for a, b in zip(out, reference):
            np.testing.assert_array_equal(a.xyxy, b.xyxy)
            np.testing.assert_array_equal(a.track_id, b.track_id)
        added += sum(map(len, out)) - sum(map(len, inp))
    assert added > 1000  # gaps and ends were filled


def test_config_is_validated():
    with pytest.raises(ValueError):
        TrackerConfig(iou_threshold=0)
    with pytest.raises(ValueError):
        TrackerConfig(max_gap=-1)


def test_one_hour_of_video_runs_quickly():
    # 90k frames (1 h at 25 fps) x 3 faces moving steadily, with a missed frame now and then.
    n = 90_000
    rng = np.random.default_rng(0)
    t = np.arange(n)
    xs = np.stack([200 + 150 * np.sin(t / 300 + k) for k in range(3)], axis=1)
    inp = []
    for f in range(n):
        inp.append(dets([box(xs[f, k], 100 + 150 * k, 50) for k in range(3) if rng.random() > 0.02]))
    start = time.perf_counter()
    out = track_faces(inp)
    elapsed = time.perf_counter() - start
    print(f"\ntrack_faces: {n} frames x 3 faces in {elapsed:.2f} s")
    assert len(out) == n
    ids = np.concatenate([o.track_id for o in out])
    assert set(ids.tolist()) == {0, 1, 2}  # each face kept its id for the whole hour
    assert all(len(o) == 3 for o in out)  # every missed frame filled


# ---------------------------------------------------------------- weak candidates (issue 12)


def test_weak_candidates_never_start_a_track():
    """A weak candidate that continues no track is not a detection: nothing comes out for it."""
    weak = [dets([box(100 + 2 * f, 100), box(300, 200)], [0.05, 0.1]) for f in range(30)]
    out = track_faces([Detections.empty()] * 30, weak=weak, frame_size=(640, 360))
    assert all(len(o) == 0 for o in out)


def test_weak_candidates_carry_a_track_across_a_long_gap():
    """Detections at frames 0-4 and 60-64, weak candidates every 8 frames between: one track, every frame
    covered, and the detections still come first and unchanged in their frames."""
    config = TrackerConfig(max_gap=12, extend=0, bridge=75)
    inp = [dets([box(100 + 3 * f, 100)]) if f < 5 or f >= 60 else Detections.empty() for f in range(65)]
    weak = [dets([box(100 + 3 * f + 2, 101)], [0.04]) if f % 8 == 0 and 5 <= f < 60 else Detections.empty()
            for f in range(65)]
    out = track_faces(inp, config, weak=weak, frame_size=(640, 360))
    check_contract(inp, out)
    assert all(o.track_id.tolist() == [0] for o in out)
    for f in range(65):  # on the face (a weak sighting's box also covers where the track expected the face)
        assert iou(out[f].xyxy[0], box(100 + 3 * f, 100)) > 0.75
    assert out[8].score[0] == np.float32(0.04) and out[8].interpolated[0]  # a weak sighting, added by the tracker
    # Without the weak candidates the gap of 55 frames splits the face into two tracks and leaves it uncovered.
    plain = track_faces(inp, config)
    assert sum(len(o) == 0 for o in plain) > 40 and plain[-1].track_id.tolist() == [1]


def test_weak_candidates_do_not_replace_detections_or_take_another_track():
    """A frame with a detection for the track keeps it; a weak candidate near an other, detected face is unused."""
    inp = [dets([box(100, 100), box(400, 100)]) for _ in range(10)]
    weak = [dets([box(103, 100), box(250, 250)], [0.1, 0.1]) for _ in range(10)]
    out = track_faces(inp, TrackerConfig(extend=0), weak=weak, frame_size=(640, 360))
    check_contract(inp, out)
    assert all(len(o) == 2 for o in out)


def test_bridge_ends_where_the_predicted_box_leaves_the_frame_or_after_bridge_frames():
    config = TrackerConfig(max_gap=12, extend=0, bridge=20)
    # A face walks right at 10 px/frame and is detected until frame 4 (centre 140); weak candidates follow it.
    inp = [dets([box(100 + 10 * f, 100)]) if f < 5 else Detections.empty() for f in range(60)]
    weak = [dets([box(100 + 10 * f, 100)], [0.05]) if f >= 5 else Detections.empty() for f in range(60)]
    out = track_faces(inp, config, weak=weak, frame_size=(640, 360))
    covered = [f for f, o in enumerate(out) if len(o)]
    assert covered == list(range(0, 25))  # bridge: 20 frames after the last detection at frame 4
    # The same in a frame 260 px wide: the prediction leaves the picture at frame 16 (centre 260).
    out = track_faces(inp, config, weak=weak, frame_size=(260, 360))
    covered = [f for f, o in enumerate(out) if len(o)]
    assert covered == list(range(0, 16))


def test_new_track_reaches_back_through_earlier_weak_candidates():
    """A face entering a dark scene scores weakly before its first detection (frame 30): covered from frame 6."""
    config = TrackerConfig(max_gap=12, extend=2, bridge=75)
    inp = [dets([box(100 + 2 * f, 100)]) if f >= 30 else Detections.empty() for f in range(50)]
    weak = [dets([box(100 + 2 * f, 100)], [0.03]) if 6 <= f < 30 and f % 3 == 0 else Detections.empty()
            for f in range(50)]
    out = track_faces(inp, config, weak=weak, frame_size=(640, 360))
    check_contract(inp, out)
    covered = [f for f, o in enumerate(out) if len(o)]
    assert covered == list(range(4, 50))  # 6 and its extension of 2 frames
    assert {int(t) for o in out for t in o.track_id} == {0}


def test_online_tracker_with_weak_candidates_matches_the_whole_video_run():
    rng = np.random.default_rng(5)
    for trial in range(20):
        config = TrackerConfig(max_gap=int(rng.integers(0, 13)), extend=int(rng.integers(0, 8)),
                               bridge=int(rng.integers(0, 40)))
        n_frames, k = int(rng.integers(1, 120)), int(rng.integers(1, 4))
        start, velocity = rng.uniform(50, 400, (k, 2)), rng.normal(0, 3, (k, 2))
        inp, weak = [], []
        for f in range(n_frames):
            seen = rng.random(k)
            inp.append(dets([box(*(start[j] + velocity[j] * f), 40) for j in range(k) if seen[j] > 0.8]))
            weak.append(dets([box(*(start[j] + velocity[j] * f + rng.normal(0, 2, 2)), 40) for j in range(k)
                              if 0.3 < seen[j] <= 0.8], None))
        tracker, out, worst = Tracker(config, (640, 480)), [], 0
        for i, (d, w) in enumerate(zip(inp, weak)):
            out += tracker.push(d, w)
            worst = max(worst, i + 1 - len(out))
        out += tracker.finish()
        assert worst <= max(config.bridge + config.extend, config.extend + 4 * (config.max_gap + 1))
        check_contract(inp, out)
        reference = track_faces(inp, config, weak=weak, frame_size=(640, 480))
        for a, b in zip(out, reference):
            np.testing.assert_array_equal(a.xyxy, b.xyxy)
            np.testing.assert_array_equal(a.track_id, b.track_id)


def test_weak_candidate_on_the_prediction_beats_a_detection_merely_near_it():
    """Night clip (one encoding): a false detection beside a face, above the threshold, took the face's track by
    centre distance while the face itself scored below the threshold right where the track expected it, and the
    face went uncovered. The weak candidate overlapping the prediction continues the track; the detection, kept
    as every detection is, starts a track of its own."""
    inp = [dets([box(100 + 2 * f, 100, 30)]) if f < 10 else dets([box(118 + 2 * f, 110, 20)]) for f in range(16)]
    weak = [Detections.empty() if f < 10 else dets([box(100 + 2 * f, 100, 30)], [0.15]) for f in range(16)]
    out = track_faces(inp, TrackerConfig(extend=0), weak=weak, frame_size=(640, 360))
    check_contract(inp, out)
    for f in range(10, 16):
        assert out[f].track_id.tolist() == [1, 0]  # the false detection, then the face the tracker added
        np.testing.assert_allclose(out[f].xyxy[1], box(100 + 2 * f, 100, 30))


def test_a_weak_candidate_covering_part_of_a_face_is_anonymized_with_the_whole_expected_face():
    """Night clip: weak candidates are often a part of the face (mouth and chin, an eye) or shifted off it; anonymized
    with their own box, the face's eyes stayed visible. The face added for one covers the box where the track
    expected the face as well."""
    inp = [dets([box(100 + 2 * f, 100)]) if f != 10 else Detections.empty() for f in range(20)]
    chin = box(120, 110, 24)  # the lower middle of the face at frame 10, box(120, 100)
    weak = [dets([chin], [0.1]) if f == 10 else Detections.empty() for f in range(20)]
    out = track_faces(inp, TrackerConfig(extend=0), weak=weak, frame_size=(640, 360))
    check_contract(inp, out)
    assert out[10].track_id.tolist() == [0] and out[10].score[0] == np.float32(0.1)
    x0, y0, x1, y1 = out[10].xyxy[0]
    assert x0 <= 100.5 and y0 <= 80.5 and x1 >= 139.5 and y1 >= 122  # box(120, 100) and the candidate


def test_a_weak_candidate_on_part_of_the_face_does_not_shrink_the_track():
    """Night clip: a face out of the detector's reach was continued by a weak candidate on its mouth and chin (14x18 px
    on a 29x40 px face), the track took that size and moved down, and the weak candidates on the whole face in the
    frames after no longer matched it: up to 20 frames uncovered. A weak candidate moves a track only halfway
    towards it, and the track keeps its size."""
    inp = [dets([box(100 + 3 * f, 100)]) if f < 10 else Detections.empty() for f in range(30)]
    weak = [Detections.empty() if f < 10 else dets([box(130, 114, 20)], [0.06]) if f == 10 else
            dets([box(100 + 3 * f, 100)], [0.08]) for f in range(30)]
    out = track_faces(inp, TrackerConfig(extend=0), weak=weak, frame_size=(640, 360))
    check_contract(inp, out)
    assert all(o.track_id.tolist() == [0] for o in out)
    assert all(iou(out[f].xyxy[0], box(100 + 3 * f, 100)) > 0.7 for f in range(30))
