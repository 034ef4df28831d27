"""Face tracking with look-ahead: track ids, gap filling, extension.

`Tracker` takes one frame's detections at a time and hands back each frame once
nothing later can change it: a bounded number of frames behind (at most
extend + 4·(max_gap + 1), 56 with the defaults: a young track's backward
extension waits for its first five detections, which give its start velocity;
with weak candidates at most the larger of that and bridge + extend, 79).
So the pipeline can detect ahead in one thread while it anonymizes behind in
another, and the result is the same as tracking the whole video at once
(`track_faces`).

Contract (a privacy tool: a missed face is the worst error):

- The output has one `Detections` per input frame. Its first rows are that frame's
  input rows, in input order, with xyxy/landmarks/score/interpolated unchanged and
  a track id >= 0. No detection is ever dropped, however low its score or short
  its track: a one-frame track is still a track. The rows after them are faces
  the tracker added (interpolated=True), sorted by track id: gap fills, extensions
  and weak candidates that continue a track (below).
- Track ids are consecutive from 0 in order of first detection; a frame holds at
  most one face per track id.
- A track lost for <= max_gap frames may be matched again; the frames in between
  get linearly interpolated boxes and landmarks with score = the LOWER of the two
  neighbouring detection scores (not 0), so that a downstream score threshold that
  keeps both neighbours also keeps the fill.
- A longer gap starts a new track. There is no re-identification: a person who
  leaves and comes back gets a new id (and so a new key).
- Each track is extended `extend` frames before its first and after its last
  detection (never past the video's ends), moving at the track's velocity near
  that end (estimated over up to 5 detections), but never more than half a box
  from the end detection so that a noisy velocity cannot throw the box off the
  face. Extended faces carry the end detection's score.

Weak candidates (the ByteTrack idea; `push(dets, weak)`): faces the detector
scored below its threshold but above a much lower floor. At night a small face
in noise often scores below the threshold in most frames while still being the
best guess of where it is. A weak candidate is used only to continue a live
track that no detection continued in this frame; it never starts a track, and
one that continues none is discarded. Its box says where the face is more than
how big it is (it is often a part of the face: mouth and chin, an eye): it matches
a track by overlap with the predicted box or by a centre within half the track's
face size of the predicted centre (only a candidate over twice the track's size
is refused), and it moves the track halfway from its predicted centre towards its
own, keeping the track's size (that of its detections). Matched, it is
a sighting like a detection (it ends a gap, moves the track on, and later gaps
and extensions count from it) and becomes an added face with its own score. Its
box covers both the candidate's box and the box where the track expected the face:
anonymized alone, a candidate's box (part of the face, or shifted off it) left the
eyes visible (night clip).
Its landmarks are placed in that box by the alignment's template: the landmarks
of a face that small and noisy are too unreliable to align with (measured on the
night clip: eyes bunched on one side of the box, the mask off the face).
So a track may cross a stretch without detections longer than max_gap, as
long as weak candidates keep appearing (at most max_gap frames apart), the
track's predicted box centre stays inside the frame (`frame_size`), and the
stretch lasts at most `bridge` frames after the track's last detection. The
bound keeps a track from living on weak candidates from the background after
its face has gone; docs/tracking.md says how these lengths were chosen.
The same holds backwards in time: a new track (always started by a detection)
reaches back through the weak candidates of the frames before it, up to
`bridge` frames, so a face that scored weakly before its first detection (the
usual case for a small face entering a dark scene) is covered from its first
weak sighting. While unused weak candidates are pending, frames are therefore handed out
up to bridge + extend frames behind (75 + 4 with the defaults) instead of 56.

Association is frame to frame: each live track predicts its box with a
constant-velocity model on the box centre (size held), the cost is IoU with the
detections, and `scipy.optimize.linear_sum_assignment` finds the optimal matching.
A pair below the IoU threshold may still match on centre distance (at most
`center_distance` times the mean face size, sizes within 2x): small fast faces
move more than their own size's worth of IoU between frames, notably on a track's
second frame where there is no velocity yet (a 20 px face moving 12 px/frame has
IoU 0.25 with its previous box). Overlap comes first: the tracks are matched in
four rounds, detections overlapping the prediction, then weak candidates
overlapping it, then detections near it, then weak candidates near it; so a weak
candidate on the prediction wins over a detection that is only near it (which
then starts a track of its own: detections are never dropped).

Why not a maintained tracker (roboflow `trackers` ByteTrack, `supervision`)?
They drop unconfirmed and low-score detections and do not fill gaps, which
violates the first rule above; this tracker is small and looks far enough ahead
to fill gaps from both sides. Cost is linear in frames (90k frames x 3 faces in seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from vidanon.align import landmarks_from_box
from vidanon.detect import Detections

_NO_MATCH = 1e9  # cost of a pair that may not match; finite so the solver always succeeds
_FALLBACK = 1e3  # base cost of a centre-distance match: above any sum of IoU costs
_MAX_SIZE_RATIO = 2.0  # a face does not double in size between two sightings
_VELOCITY_SPAN = 5  # detections used to estimate a track end's velocity for extension
_WEAK_CENTER_DISTANCE = 0.5  # in the track's face size
_WEAK_GAIN = 0.5  # how far a weak candidate moves a track from where it expected the face towards it


@dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.3  # match threshold (on predicted boxes)
    max_gap: int = 12  # frames a track may be lost and still be matched; the gap is interpolated
    extend: int = 4  # frames added before a track's first and after its last detection
    center_distance: float = 1.0  # fallback match: centre distance / mean face size (0 = off)
    bridge: int = 75  # frames after a track's last detection in which weak candidates may still continue it

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_gap < 0 or self.extend < 0 or self.center_distance < 0 or self.bridge < 0:
            raise ValueError("max_gap, extend, center_distance and bridge must be >= 0")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes a (T, 4) and b (D, 4), xyxy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    wh = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _add_distance_matches(
    cost: np.ndarray, pred: np.ndarray, det: np.ndarray, config: TrackerConfig, weak: bool = False
) -> np.ndarray:
    """Let pairs without an IoU match match on centre distance, at a cost above any
    IoU match (so the solver uses them only where IoU alone leaves a face unmatched).
    Distance in mean face sizes, sizes within 2x; for `weak` candidates, whose size says little (often a part
    of the face), in the track's face size, and a candidate may be smaller than half the track's face."""
    scale_p = np.sqrt(np.maximum((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]), 0))[:, None]
    scale_d = np.sqrt(np.maximum((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]), 0))[None]
    offset = (pred[:, None, :2] + pred[:, None, 2:] - det[None, :, :2] - det[None, :, 2:]) / 2
    if weak:
        dist = np.hypot(offset[..., 0], offset[..., 1]) / np.maximum(scale_p, 1e-9)
        near = (dist <= config.center_distance) & (scale_d <= _MAX_SIZE_RATIO * scale_p)
    else:
        dist = np.hypot(offset[..., 0], offset[..., 1]) / np.maximum((scale_p + scale_d) / 2, 1e-9)
        sizes = np.maximum(scale_p, scale_d) / np.maximum(np.minimum(scale_p, scale_d), 1e-9)
        near = (dist <= config.center_distance) & (sizes <= _MAX_SIZE_RATIO)
    return np.where((cost == _NO_MATCH) & near, _FALLBACK + dist, cost)


def _assign(pred: np.ndarray, det: np.ndarray, config: TrackerConfig, weak: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
    """Optimal matching of predicted track boxes to detections: (track rows, detection rows).

    Costs: 1 - IoU for IoU matches, _FALLBACK + distance for centre-distance matches,
    _NO_MATCH otherwise; the solver first maximizes the number of matches, then
    prefers IoU matches. The distance costs are only computed when IoU alone
    leaves a track and a detection unmatched (rare; this runs on every frame)."""
    iou = _iou(pred, det)
    cost = np.where(iou >= config.iou_threshold, 1.0 - iou, _NO_MATCH)
    ti, di = linear_sum_assignment(cost)
    good = cost[ti, di] < _NO_MATCH
    if config.center_distance > 0 and good.sum() < min(cost.shape):
        cost = _add_distance_matches(cost, pred, det, config, weak)
        ti, di = linear_sum_assignment(cost)
        good = cost[ti, di] < _NO_MATCH
    return ti[good], di[good]


def _halfway(expected: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Where a weak candidate centred at `seen` puts a face expected at `expected`: halfway, as its box is imprecise."""
    return expected + _WEAK_GAIN * (seen - expected)


def _cover(candidate: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The box anonymized for a weak candidate continuing a track: it and the box where the track expected the face.
    A weak candidate's box is imprecise: often a part of the face (mouth and chin, an eye) or shifted off it."""
    return np.concatenate([np.minimum(candidate[:2], expected[:2]), np.maximum(candidate[2:], expected[2:])])


class _Face(NamedTuple):
    frame: int
    box: np.ndarray  # xyxy, float64
    landmarks: np.ndarray  # (5, 2), float64
    score: float


@dataclass
class _Track:
    """What gap filling and extension need of a live track: its first and last few detections."""

    head: list[_Face]  # the first up to _VELOCITY_SPAN detections
    tail: deque = field(default_factory=lambda: deque(maxlen=_VELOCITY_SPAN))  # the last ones
    extended_back: bool = False


def _extension(end: list[_Face], sign: int, extend: int) -> Iterator[_Face]:
    """Faces beyond a track's end: `end` holds its end detections, from the end inwards; sign -1 = before.
    Constant velocity (over those detections), at most half a box from the end face."""
    frames = np.array([face.frame for face in end])
    centers = np.array([(face.box[:2] + face.box[2:]) / 2 for face in end])
    k = len(end) - 1
    velocity = np.zeros(2) if k == 0 else (centers[k] - centers[0]) / (frames[k] - frames[0])
    last = end[0]
    half = (last.box[2:] - last.box[:2]) / 2
    for step in range(1, extend + 1):
        shift = np.clip(velocity * sign * step, -half, half)
        yield _Face(last.frame + sign * step, last.box + np.tile(shift, 2), last.landmarks + shift, last.score)


class Tracker:
    """Online form of `track_faces`: push() each frame's detections in order, then finish().

    Both return the frames that became final, in order, each with its track ids and added faces
    (see the module docstring); over a whole video they return exactly what `track_faces` does.
    """

    def __init__(self, config: TrackerConfig = TrackerConfig(), frame_size: tuple[int, int] | None = None) -> None:
        """frame_size: (width, height); weak candidates continue a track only while its predicted box centre
        lies inside it (None: anywhere)."""
        self.config = config
        self.frame_size = frame_size
        # Weak candidates include noise: they match a track more strictly than detections do.
        self._weak_config = replace(config, center_distance=min(config.center_distance, _WEAK_CENTER_DISTANCE))
        self._overlap_only = replace(config, center_distance=0.0)  # the first rounds of matching (_associate)
        self._next = 0  # index of the next frame to push
        self._n_tracks = 0
        # Live tracks (those that may still be matched), one row each, for the vectorized matching.
        self._ids = np.empty(0, dtype=np.int64)
        self._last = np.empty(0)  # frame of the last detection
        self._state = np.empty((0, 6))  # centre x, y, width, height (of its last detection), velocity x, y (px/frame)
        self._gain = np.empty(0)  # velocity update weight: 1 for a track's first measurement, then 1/2
        self._strong = np.empty(0)  # frame of the last detection (not weak candidate)
        self._tracks: dict[int, _Track] = {}
        # Frames pushed but not final: (own rows with track ids, [(track id, added face)]).
        self._pending: deque[tuple[Detections, list[tuple[int, _Face]]]] = deque()
        self._first_pending = 0
        self._later: dict[int, list[tuple[int, _Face]]] = {}  # added faces for frames not pushed yet
        self._weak: dict[int, tuple[Detections, np.ndarray]] = {}  # pending frame -> (weak candidates, unused)

    def push(self, dets: Detections, weak: Detections | None = None) -> list[Detections]:
        """One frame: its detections (each kept, with a track id) and optionally its weak candidates
        (used only to continue live tracks; see the module docstring)."""
        f = self._next
        self._next += 1
        xyxy = dets.xyxy.astype(np.float64)
        marks = dets.landmarks.astype(np.float64)
        weak_xyxy = np.empty((0, 4)) if weak is None else weak.xyxy.astype(np.float64)
        track_of, weak_tracks, weak_rows, expected = self._associate(f, xyxy, weak_xyxy)
        self._pending.append((dets.with_tracks(track_of), self._later.pop(f, [])))
        for row, tid in enumerate(track_of.tolist()):
            face = _Face(f, xyxy[row], marks[row], dets.score[row])
            if tid not in self._tracks:  # a new track: first its weak sightings before this frame, if any
                for earlier in self._reach_back(face):
                    self._sighting(tid, earlier)
                    self._add(tid, earlier)
            self._sighting(tid, face)
        if len(weak_xyxy):
            for tid, d, pred in zip(weak_tracks.tolist(), weak_rows.tolist(), expected):  # weak ones continuing a track
                box = _cover(weak_xyxy[d], pred)
                face = _Face(f, box, landmarks_from_box(box), float(weak.score[d]))
                self._sighting(tid, face)
                self._add(tid, face)
            unused = np.ones(len(weak_xyxy), bool)
            unused[weak_rows] = False
            if unused.any():  # kept for a new track to reach back to
                self._weak[f] = (weak, unused)
        # Tracks that cannot be matched at the next frame have ended.
        keep = f - self._last <= self.config.max_gap
        for tid in self._ids[~keep].tolist():
            self._close(tid, end=None)
        self._ids, self._last, self._state, self._gain, self._strong = (
            a[keep] for a in (self._ids, self._last, self._state, self._gain, self._strong))
        return self._emit(self._final_before())

    def _sighting(self, tid: int, face: _Face) -> None:
        """Track `tid` was seen (a detection, or a weak candidate continuing it): fill the gap since its last
        sighting, and record the face for its extensions."""
        track = self._tracks.get(tid)
        if track is None:
            track = self._tracks[tid] = _Track(head=[])
        elif face.frame - track.tail[-1].frame > 1:  # a gap: linear interpolation between the neighbours
            prev = track.tail[-1]
            fill_score = float(min(prev.score, face.score))
            for g in range(prev.frame + 1, face.frame):
                t = (g - prev.frame) / (face.frame - prev.frame)
                self._add(tid, _Face(g, (1 - t) * prev.box + t * face.box,
                                     (1 - t) * prev.landmarks + t * face.landmarks, fill_score))
        if len(track.head) < _VELOCITY_SPAN:
            track.head.append(face)
            if len(track.head) == _VELOCITY_SPAN:
                self._extend_back(tid)
        track.tail.append(face)

    def _reach_back(self, face: _Face) -> list[_Face]:
        """The weak sightings of a face before its first detection `face`, oldest first: unused weak candidates
        of pending frames, each matching the one after it (held box, the same matching rule; its face covers both),
        at most max_gap frames apart and at most `bridge` frames back, staying clear of frames whose extension is
        final."""
        found: list[_Face] = []
        after, expected = face, face.box  # the last sighting and where the face is expected before it (held)
        half = (face.box[2:] - face.box[:2]) / 2  # the size of the detection, kept
        # A face found at frame g is extended back to g - extend, which must still be pending (or before frame 0).
        stop = max(face.frame - self.config.bridge, self._first_pending + self.config.extend if self._first_pending else 0)
        for g in range(face.frame - 1, stop - 1, -1):
            if after.frame - g > self.config.max_gap:
                break
            if g not in self._weak:
                continue
            weak, unused = self._weak[g]
            rows = np.flatnonzero(unused)
            if not len(rows):
                continue
            xyxy = weak.xyxy[rows].astype(np.float64)
            _, di = _assign(expected[None], xyxy, self._weak_config, weak=True)
            if len(di):
                d = rows[di[0]]
                unused[d] = False
                box = _cover(xyxy[di[0]], expected)
                after = _Face(g, box, landmarks_from_box(box), float(weak.score[d]))
                centre = _halfway((expected[:2] + expected[2:]) / 2, (xyxy[di[0], :2] + xyxy[di[0], 2:]) / 2)
                expected = np.concatenate([centre - half, centre + half])
                found.append(after)
        return found[::-1]

    def _update(self, rows: np.ndarray, xyxy: np.ndarray, f: int, weak: bool = False) -> None:
        """Move the live tracks `rows` to their new boxes `xyxy`, seen in frame f. Boxes of `weak` candidates
        only move a track halfway from its predicted centre towards theirs, and keep its size."""
        state = self._state
        steps = (f - self._last[rows])[:, None]
        centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
        if weak:
            centre = _halfway(state[rows, :2] + steps * state[rows, 4:], centre)
        else:
            state[rows, 2:4] = xyxy[:, 2:] - xyxy[:, :2]
        measured = (centre - state[rows, :2]) / steps
        state[rows, 4:] += self._gain[rows, None] * (measured - state[rows, 4:])  # halves detector jitter
        state[rows, :2] = centre
        self._gain[rows] = 0.5
        self._last[rows] = f

    def finish(self) -> list[Detections]:
        """End of the video: close the live tracks (extensions stop at the last frame), return the rest."""
        for tid in sorted(self._tracks):
            self._close(tid, end=self._next)
        self._ids, self._last, self._state, self._gain, self._strong = (
            a[:0] for a in (self._ids, self._last, self._state, self._gain, self._strong))
        self._later.clear()
        out = self._emit(self._next)
        self._weak.clear()
        return out

    def _associate(self, f: int, xyxy: np.ndarray, weak: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Match the live tracks to frame f's detections `xyxy` and weak candidates `weak` (boxes), and move them.
        Returns the track id of each detection (unmatched ones start tracks, in row order) and the weak candidates
        that continue a track: (track ids, candidate rows, the tracks' predicted boxes).

        In four rounds, each an optimal matching (`_assign`) of the tracks still unmatched: detections that overlap
        a track's predicted box (IoU), then weak candidates that overlap it, then detections near it (centre
        distance), then weak candidates near it. So a weak candidate right where a track is expected wins over a
        detection that is merely near: measured on the night clip, a false detection beside a face (scoring
        above the threshold) took its track by centre distance while the face itself, scoring below it, sat on
        the prediction; the face then went uncovered for 6 frames. The detection is not lost: it starts a track."""
        track_of = np.full(len(xyxy), -1, dtype=np.int64)
        weak_tracks = weak_rows = np.empty(0, dtype=np.int64)
        expected = np.empty((0, 4))
        if len(self._ids):
            pred_c = self._state[:, :2] + (f - self._last)[:, None] * self._state[:, 4:]
            half = self._state[:, 2:4] / 2
            pred = np.concatenate([pred_c - half, pred_c + half], axis=1)
            # Weak candidates continue only tracks detected at most `bridge` frames ago and predicted in the frame.
            bridging = f - self._strong <= self.config.bridge
            if self.frame_size is not None:
                width, height = self.frame_size
                bridging &= (pred_c[:, 0] >= 0) & (pred_c[:, 0] < width) & (pred_c[:, 1] >= 0) & (pred_c[:, 1] < height)
            free = np.ones(len(self._ids), bool)  # tracks not continued yet in this frame
            det_free, weak_free = np.ones(len(xyxy), bool), np.ones(len(weak), bool)
            by_det, by_weak = [], []
            for overlap_only in (True, False):
                for is_weak, boxes, unused, config, found, may in (
                        (False, xyxy, det_free, self._overlap_only if overlap_only else self.config, by_det, True),
                        (True, weak, weak_free, self._overlap_only if overlap_only else self._weak_config, by_weak,
                         bridging)):
                    rows, cols = np.flatnonzero(free & may), np.flatnonzero(unused)
                    if len(rows) and len(cols):
                        ti, di = _assign(pred[rows], boxes[cols], config, is_weak)
                        free[rows[ti]] = False
                        unused[cols[di]] = False
                        found.append((rows[ti], cols[di]))
            if by_det:
                ti, di = (np.concatenate(a) for a in zip(*by_det))
                self._update(ti, xyxy[di], f)
                self._strong[ti] = f
                track_of[di] = self._ids[ti]
            if by_weak:
                ti, weak_rows = (np.concatenate(a) for a in zip(*by_weak))
                self._update(ti, weak[weak_rows], f, weak=True)
                weak_tracks, expected = self._ids[ti], pred[ti]
        new = np.flatnonzero(track_of < 0)
        if not len(new):
            return track_of, weak_tracks, weak_rows, expected
        boxes_cs = np.concatenate([(xyxy[new, :2] + xyxy[new, 2:]) / 2, xyxy[new, 2:] - xyxy[new, :2]], axis=1)
        new_ids = self._n_tracks + np.arange(len(new))
        self._n_tracks += len(new)
        track_of[new] = new_ids
        self._ids = np.concatenate([self._ids, new_ids])
        self._last = np.concatenate([self._last, np.full(len(new), float(f))])
        self._state = np.concatenate([self._state, np.concatenate([boxes_cs, np.zeros((len(new), 2))], axis=1)])
        self._gain = np.concatenate([self._gain, np.ones(len(new))])
        self._strong = np.concatenate([self._strong, np.full(len(new), float(f))])
        return track_of, weak_tracks, weak_rows, expected

    def _add(self, tid: int, face: _Face) -> None:
        if face.frame >= self._next:
            self._later.setdefault(face.frame, []).append((tid, face))
        elif face.frame >= 0:
            assert face.frame >= self._first_pending, "a face added to a frame already handed out"
            self._pending[face.frame - self._first_pending][1].append((tid, face))

    def _extend_back(self, tid: int) -> None:
        track = self._tracks[tid]
        track.extended_back = True
        for face in _extension(track.head, -1, self.config.extend):
            self._add(tid, face)

    def _close(self, tid: int, end: int | None) -> None:
        """Track `tid` has ended: extend it at both ends (not at or past frame `end`)."""
        if not self._tracks[tid].extended_back:
            self._extend_back(tid)
        track = self._tracks.pop(tid)
        for face in _extension(list(reversed(track.tail)), 1, self.config.extend):
            if end is not None and face.frame >= end:
                break
            self._add(tid, face)

    def _final_before(self) -> int:
        """Frames before this one can no longer change: no live track can add a face to them."""
        bound = self._next - self.config.extend  # a track starting at the next frame extends back to here
        if self._weak:  # ... or reaches back through the weak candidates still unused, then extends
            bound = min(bound, max(self._next - self.config.bridge, next(iter(self._weak))) - self.config.extend)
        if len(self._last):
            bound = min(bound, int(self._last.min()) + 1)  # a live track may fill a gap or extend after its last face
        for track in self._tracks.values():
            if not track.extended_back:  # waits for its start velocity
                bound = min(bound, track.head[0].frame - self.config.extend)
        return bound

    def _emit(self, before: int) -> list[Detections]:
        out = []
        while self._pending and self._first_pending < before:
            own, added = self._pending.popleft()
            self._weak.pop(self._first_pending, None)
            self._first_pending += 1
            if not added:
                out.append(own)
                continue
            added.sort(key=lambda a: a[0])
            out.append(Detections.concat([own, Detections(
                xyxy=np.array([face.box for _, face in added], dtype=np.float32),
                landmarks=np.array([face.landmarks for _, face in added], dtype=np.float32).reshape(-1, 5, 2),
                score=np.array([face.score for _, face in added], dtype=np.float32),
                track_id=np.array([tid for tid, _ in added], dtype=np.int64),
                interpolated=np.ones(len(added), dtype=bool),
            )]))
        return out


def track_faces(
    per_frame: Sequence[Detections],
    config: TrackerConfig = TrackerConfig(),
    weak: Sequence[Detections] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> list[Detections]:
    """Assign a track id to every detection of a video and add interpolated faces.

    per_frame[i] holds the detections of frame i. See the module docstring for the
    contract; in short: nothing is dropped or changed, gaps <= max_gap are filled,
    tracks are extended by `extend` frames at both ends, added faces come after the
    frame's own rows with interpolated=True. weak[i], if given, holds frame i's weak candidates,
    which only continue live tracks (while their predicted box centre is inside `frame_size`).
    """
    tracker = Tracker(config, frame_size)
    weak = [None] * len(per_frame) if weak is None else weak
    out = [final for dets, cands in zip(per_frame, weak, strict=True) for final in tracker.push(dets, cands)]
    return out + tracker.finish()
