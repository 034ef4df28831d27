"""Offline face tracking over a whole video: track ids, gap filling, extension.

Pass 1 of the pipeline detects faces in every frame and keeps only the small
per-frame `Detections`; `track_faces` then runs over the whole list at once (so it
may look ahead) and pass 2 anonymizes with the tracks known.

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
violates the first rule above; this tracker is small and runs offline with the
whole video in view. Cost is linear in frames (90k frames x 3 faces in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


def _associate(xyxy: np.ndarray, offsets: np.ndarray, config: TrackerConfig) -> np.ndarray:
    """Forward pass over frames: the track id of every detection (rows of `xyxy`;
    frame f holds rows offsets[f]:offsets[f+1]). Few numpy calls per frame: it runs
    90k times an hour of video."""
    track_of = np.full(len(xyxy), -1, dtype=np.int64)
    boxes_cs = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    n_tracks = 0
    # The live tracks (those that may still be matched), one row each.
    ids = np.empty(0, dtype=np.int64)
    last = np.empty(0)  # frame of the last detection
    state = np.empty((0, 6))  # centre x, y, width, height, velocity x, y (px/frame)
    gain = np.empty(0)  # velocity update weight: 1 for a track's first measurement, then 1/2
    for f in range(len(offsets) - 1):
        lo, hi = int(offsets[f]), int(offsets[f + 1])
        if len(ids) and f - last.min() - 1 > config.max_gap:
            keep = f - last - 1 <= config.max_gap
            ids, last, state, gain = ids[keep], last[keep], state[keep], gain[keep]
        if lo == hi:
            continue
        new = np.arange(lo, hi)
        if len(ids):
            steps = f - last
            pred_c = state[:, :2] + steps[:, None] * state[:, 4:]
            half = state[:, 2:4] / 2
            ti, di = _assign(np.concatenate([pred_c - half, pred_c + half], axis=1), xyxy[lo:hi], config)
            rows = lo + di
            measured = (boxes_cs[rows, :2] - state[ti, :2]) / steps[ti, None]
            state[ti, 4:] += gain[ti, None] * (measured - state[ti, 4:])  # halves detector jitter
            state[ti, :4] = boxes_cs[rows]
            gain[ti] = 0.5
            last[ti] = f
            track_of[rows] = ids[ti]
            if len(rows) < hi - lo:
                new = np.setdiff1d(new, rows)
            else:
                continue
        # Unmatched rows start tracks, in row order: ids follow order of first appearance.
        new_ids = n_tracks + np.arange(len(new))
        n_tracks += len(new)
        track_of[new] = new_ids
        ids = np.concatenate([ids, new_ids])
        last = np.concatenate([last, np.full(len(new), float(f))])
        new_state = np.concatenate([boxes_cs[new], np.zeros((len(new), 2))], axis=1)
        state = np.concatenate([state, new_state])
        gain = np.concatenate([gain, np.ones(len(new))])
    return track_of


def _end_velocity(centers: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Mean velocity over the first up to _VELOCITY_SPAN detections of the given order."""
    k = min(_VELOCITY_SPAN, len(frames)) - 1
    if k == 0:
        return np.zeros(2)
    return (centers[k] - centers[0]) / (frames[k] - frames[0])


def track_faces(
    per_frame: Sequence[Detections], config: TrackerConfig = TrackerConfig()
) -> list[Detections]:
    """Assign a track id to every detection of a video and add interpolated faces.

    per_frame[i] holds the detections of frame i. See the module docstring for the
    contract; in short: nothing is dropped or changed, gaps <= max_gap are filled,
    tracks are extended by `extend` frames at both ends, added faces come after the
    frame's own rows with interpolated=True.
    """
    n_frames = len(per_frame)
    # Work on all detections of the video at once; frame f holds rows offsets[f]:offsets[f+1].
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in per_frame])]).astype(np.int64)
    if offsets[-1] == 0:
        return [d.with_tracks(np.empty(0, dtype=np.int64)) for d in per_frame]
    xyxy = np.concatenate([d.xyxy for d in per_frame]).astype(np.float64)
    marks = np.concatenate([d.landmarks for d in per_frame]).astype(np.float64)
    scores = np.concatenate([d.score for d in per_frame])
    frame_of = np.repeat(np.arange(n_frames), np.diff(offsets))
    track_of = _associate(xyxy, offsets, config)

    added: list[list[tuple[int, np.ndarray, np.ndarray, float]]] = [[] for _ in range(n_frames)]
    order = np.argsort(track_of, kind="stable")  # rows grouped by track, in frame order
    starts = np.flatnonzero(np.diff(track_of[order], prepend=-1))
    for rows in np.split(order, starts[1:]):
        tid = int(track_of[rows[0]])
        frames, boxes, lms, score = frame_of[rows], xyxy[rows], marks[rows], scores[rows]

        # Gaps: linear interpolation of boxes and landmarks between the neighbours.
        for i in np.flatnonzero(np.diff(frames) > 1):
            f0, f1 = frames[i], frames[i + 1]
            fill_score = float(min(score[i], score[i + 1]))
            for f in range(f0 + 1, f1):
                t = (f - f0) / (f1 - f0)
                box = (1 - t) * boxes[i] + t * boxes[i + 1]
                lm = (1 - t) * lms[i] + t * lms[i + 1]
                added[f].append((tid, box, lm, fill_score))

        # Extension at both ends: constant velocity, at most half a box from the end face.
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        for end, sign in ((0, -1), (-1, 1)):
            velocity = _end_velocity(centers[::-sign], frames[::-sign])
            half = (boxes[end, 2:] - boxes[end, :2]) / 2
            for k in range(1, config.extend + 1):
                f = int(frames[end]) + sign * k
                if not 0 <= f < n_frames:
                    break
                shift = np.clip(velocity * sign * k, -half, half)
                box = boxes[end] + np.tile(shift, 2)
                added[f].append((tid, box, lms[end] + shift, float(score[end])))

    out = []
    for f, dets in enumerate(per_frame):
        own = dets.with_tracks(track_of[offsets[f] : offsets[f + 1]])
        if not added[f]:
            out.append(own)
            continue
        extra = sorted(added[f], key=lambda a: a[0])
        new = Detections(
            xyxy=np.array([a[1] for a in extra], dtype=np.float32),
            landmarks=np.array([a[2] for a in extra], dtype=np.float32).reshape(-1, 5, 2),
            score=np.array([a[3] for a in extra], dtype=np.float32),
            track_id=np.array([a[0] for a in extra], dtype=np.int64),
            interpolated=np.ones(len(extra), dtype=bool),
        )
        out.append(Detections.concat([own, new]))
    return out
