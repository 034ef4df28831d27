"""Face tracking with look-ahead: track ids, gap filling, extension.

`Tracker` takes one frame's detections at a time and hands back each frame once
nothing later can change it: a bounded number of frames behind (at most
extend + 4·(max_gap + 1), 56 with the defaults: a young track's backward
extension waits for its first five detections, which give its start velocity).
So the pipeline can detect ahead in one thread while it anonymizes behind in
another, and the result is the same as tracking the whole video at once
(`track_faces`).

Contract (a privacy tool: a missed face is the worst error):

- The output has one `Detections` per input frame. Its first rows are that frame's
  input rows, in input order, with xyxy/landmarks/score/interpolated unchanged and
  a track id >= 0. No detection is ever dropped, however low its score or short
  its track: a one-frame track is still a track. The rows after them are faces
  the tracker added (interpolated=True), sorted by track id.
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

Association is frame to frame: each live track predicts its box with a
constant-velocity model on the box centre (size held), the cost is IoU with the
detections, and `scipy.optimize.linear_sum_assignment` finds the optimal matching.
A pair below the IoU threshold may still match on centre distance (at most
`center_distance` times the mean face size, sizes within 2x): small fast faces
move more than their own size's worth of IoU between frames, notably on a track's
second frame where there is no velocity yet (a 20 px face moving 12 px/frame has
IoU 0.25 with its previous box).

Why not a maintained tracker (roboflow `trackers` ByteTrack, `supervision`)?
They drop unconfirmed and low-score detections and do not fill gaps, which
violates the first rule above; this tracker is small and looks far enough ahead
to fill gaps from both sides. Cost is linear in frames (90k frames x 3 faces in seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from vidanon.detect import Detections

_NO_MATCH = 1e9  # cost of a pair that may not match; finite so the solver always succeeds
_FALLBACK = 1e3  # base cost of a centre-distance match: above any sum of IoU costs
_MAX_SIZE_RATIO = 2.0  # a face does not double in size between two sightings
_VELOCITY_SPAN = 5  # detections used to estimate a track end's velocity for extension


@dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.3  # match threshold (on predicted boxes)
    max_gap: int = 12  # frames a track may be lost and still be matched; the gap is interpolated
    extend: int = 4  # frames added before a track's first and after its last detection
    center_distance: float = 1.0  # fallback match: centre distance / mean face size (0 = off)

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.max_gap < 0 or self.extend < 0 or self.center_distance < 0:
            raise ValueError("max_gap, extend and center_distance must be >= 0")


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between boxes a (T, 4) and b (D, 4), xyxy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    wh = np.maximum(np.minimum(a[:, None, 2:], b[None, :, 2:]) - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _add_distance_matches(
    cost: np.ndarray, pred: np.ndarray, det: np.ndarray, config: TrackerConfig
) -> np.ndarray:
    """Let pairs without an IoU match match on centre distance, at a cost above any
    IoU match (so the solver uses them only where IoU alone leaves a face unmatched)."""
    scale_p = np.sqrt(np.maximum((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]), 0))
    scale_d = np.sqrt(np.maximum((det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1]), 0))
    offset = (pred[:, None, :2] + pred[:, None, 2:] - det[None, :, :2] - det[None, :, 2:]) / 2
    mean_scale = np.maximum((scale_p[:, None] + scale_d[None]) / 2, 1e-9)
    dist = np.hypot(offset[..., 0], offset[..., 1]) / mean_scale
    small = np.maximum(np.minimum(scale_p[:, None], scale_d[None]), 1e-9)
    big = np.maximum(scale_p[:, None], scale_d[None])
    near = (dist <= config.center_distance) & (big / small <= _MAX_SIZE_RATIO)
    return np.where((cost == _NO_MATCH) & near, _FALLBACK + dist, cost)


def _assign(pred: np.ndarray, det: np.ndarray, config: TrackerConfig) -> tuple[np.ndarray, np.ndarray]:
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
        cost = _add_distance_matches(cost, pred, det, config)
        ti, di = linear_sum_assignment(cost)
        good = cost[ti, di] < _NO_MATCH
    return ti[good], di[good]


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

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self._next = 0  # index of the next frame to push
        self._n_tracks = 0
        # Live tracks (those that may still be matched), one row each, for the vectorized matching.
        self._ids = np.empty(0, dtype=np.int64)
        self._last = np.empty(0)  # frame of the last detection
        self._state = np.empty((0, 6))  # centre x, y, width, height, velocity x, y (px/frame)
        self._gain = np.empty(0)  # velocity update weight: 1 for a track's first measurement, then 1/2
        self._tracks: dict[int, _Track] = {}
        # Frames pushed but not final: (own rows with track ids, [(track id, added face)]).
        self._pending: deque[tuple[Detections, list[tuple[int, _Face]]]] = deque()
        self._first_pending = 0
        self._later: dict[int, list[tuple[int, _Face]]] = {}  # added faces for frames not pushed yet

    def push(self, dets: Detections) -> list[Detections]:
        f = self._next
        self._next += 1
        xyxy = dets.xyxy.astype(np.float64)
        marks = dets.landmarks.astype(np.float64)
        track_of = self._associate(f, xyxy)
        self._pending.append((dets.with_tracks(track_of), self._later.pop(f, [])))
        for row, tid in enumerate(track_of.tolist()):
            face = _Face(f, xyxy[row], marks[row], dets.score[row])
            track = self._tracks.get(tid)
            if track is None:
                track = self._tracks[tid] = _Track(head=[])
            elif f - track.tail[-1].frame > 1:  # a gap: linear interpolation between the neighbours
                prev = track.tail[-1]
                fill_score = float(min(prev.score, face.score))
                for g in range(prev.frame + 1, f):
                    t = (g - prev.frame) / (f - prev.frame)
                    self._add(tid, _Face(g, (1 - t) * prev.box + t * face.box,
                                         (1 - t) * prev.landmarks + t * face.landmarks, fill_score))
            if len(track.head) < _VELOCITY_SPAN:
                track.head.append(face)
                if len(track.head) == _VELOCITY_SPAN:
                    self._extend_back(tid)
            track.tail.append(face)
        # Tracks that cannot be matched at the next frame have ended.
        keep = f - self._last <= self.config.max_gap
        for tid in self._ids[~keep].tolist():
            self._close(tid, end=None)
        self._ids, self._last, self._state, self._gain = (a[keep] for a in (self._ids, self._last, self._state, self._gain))
        return self._emit(self._final_before())

    def finish(self) -> list[Detections]:
        """End of the video: close the live tracks (extensions stop at the last frame), return the rest."""
        for tid in sorted(self._tracks):
            self._close(tid, end=self._next)
        self._ids, self._last, self._state, self._gain = self._ids[:0], self._last[:0], self._state[:0], self._gain[:0]
        self._later.clear()
        return self._emit(self._next)

    def _associate(self, f: int, xyxy: np.ndarray) -> np.ndarray:
        """Track id of each detection of frame f; unmatched ones start tracks, in row order."""
        track_of = np.full(len(xyxy), -1, dtype=np.int64)
        if not len(xyxy):
            return track_of
        boxes_cs = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        new = np.arange(len(xyxy))
        if len(self._ids):
            state = self._state
            steps = f - self._last
            pred_c = state[:, :2] + steps[:, None] * state[:, 4:]
            half = state[:, 2:4] / 2
            ti, di = _assign(np.concatenate([pred_c - half, pred_c + half], axis=1), xyxy, self.config)
            measured = (boxes_cs[di, :2] - state[ti, :2]) / steps[ti, None]
            state[ti, 4:] += self._gain[ti, None] * (measured - state[ti, 4:])  # halves detector jitter
            state[ti, :4] = boxes_cs[di]
            self._gain[ti] = 0.5
            self._last[ti] = f
            track_of[di] = self._ids[ti]
            if len(di) == len(xyxy):
                return track_of
            new = np.setdiff1d(new, di)
        new_ids = self._n_tracks + np.arange(len(new))
        self._n_tracks += len(new)
        track_of[new] = new_ids
        self._ids = np.concatenate([self._ids, new_ids])
        self._last = np.concatenate([self._last, np.full(len(new), float(f))])
        self._state = np.concatenate([self._state, np.concatenate([boxes_cs[new], np.zeros((len(new), 2))], axis=1)])
        self._gain = np.concatenate([self._gain, np.ones(len(new))])
        return track_of

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
    per_frame: Sequence[Detections], config: TrackerConfig = TrackerConfig()
) -> list[Detections]:
    """Assign a track id to every detection of a video and add interpolated faces.

    per_frame[i] holds the detections of frame i. See the module docstring for the
    contract; in short: nothing is dropped or changed, gaps <= max_gap are filled,
    tracks are extended by `extend` frames at both ends, added faces come after the
    frame's own rows with interpolated=True.
    """
    tracker = Tracker(config)
    out = [final for dets in per_frame for final in tracker.push(dets)]
    return out + tracker.finish()
