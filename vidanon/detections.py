"""Detections: the faces of one frame as parallel arrays (boxes, five landmarks, scores, track ids).

What detectors return and the tracker passes on; no detector code here (that is `detect.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class Detections:
    """Parallel arrays for the faces of one frame (like supervision's Detections).

    xyxy: (N, 4) float32 pixel box x1, y1, x2, y2.
    landmarks: (N, 5, 2) float32 (x, y): image-left eye, image-right eye, nose,
        image-left mouth corner, image-right mouth corner (insightface order).
    score: (N,) float32 detector confidence.
    track_id: (N,) int64, -1 = not assigned yet (the default).
    interpolated: (N,) bool, True for faces added by the tracker (default False).
    """

    xyxy: np.ndarray
    landmarks: np.ndarray
    score: np.ndarray
    track_id: np.ndarray = field(default=None)  # type: ignore[assignment]
    interpolated: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        xyxy = _as_float32("xyxy", self.xyxy)
        n = len(xyxy) if xyxy.ndim >= 1 else -1
        landmarks = _as_float32("landmarks", self.landmarks)
        score = _as_float32("score", self.score)
        _check_shape("xyxy", xyxy, (n, 4))
        _check_shape("landmarks", landmarks, (n, 5, 2))
        _check_shape("score", score, (n,))

        if self.track_id is None:
            track_id = np.full(n, -1, dtype=np.int64)
        else:
            track_id = np.asarray(self.track_id)
            if track_id.dtype.kind not in "iu" and not (track_id.size == 0 and track_id.dtype.kind == "f"):
                raise ValueError(f"Detections.track_id must hold integers, got dtype {track_id.dtype}")
            track_id = track_id.astype(np.int64, copy=False)
            _check_shape("track_id", track_id, (n,))

        if self.interpolated is None:
            interpolated = np.zeros(n, dtype=bool)
        else:
            interpolated = np.asarray(self.interpolated)
            if interpolated.dtype != bool and not (interpolated.size == 0 and interpolated.dtype.kind == "f"):
                raise ValueError(f"Detections.interpolated must be bool, got dtype {interpolated.dtype}")
            interpolated = interpolated.astype(bool, copy=False)
            _check_shape("interpolated", interpolated, (n,))

        for name, value in (("xyxy", xyxy), ("landmarks", landmarks), ("score", score)):
            if not np.isfinite(value).all():
                raise ValueError(f"Detections.{name} contains NaN or infinity")

        # Frozen dataclass: fields can only be set through object.__setattr__.
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "score", score)
        object.__setattr__(self, "track_id", track_id)
        object.__setattr__(self, "interpolated", interpolated)

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index) -> "Detections":
        """Select faces by int, int array, bool mask or slice; always returns Detections."""
        if isinstance(index, (int, np.integer)):
            index = [index]  # keep the face axis
        return Detections(
            xyxy=self.xyxy[index],
            landmarks=self.landmarks[index],
            score=self.score[index],
            track_id=self.track_id[index],
            interpolated=self.interpolated[index],
        )

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, track_id={self.track_id.tolist()})"

    @classmethod
    def empty(cls) -> "Detections":
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            landmarks=np.zeros((0, 5, 2), np.float32),
            score=np.zeros(0, np.float32),
        )

    @classmethod
    def concat(cls, items: Sequence["Detections"]) -> "Detections":
        items = list(items)
        if not items:
            return cls.empty()
        return cls(
            xyxy=np.concatenate([d.xyxy for d in items]),
            landmarks=np.concatenate([d.landmarks for d in items]),
            score=np.concatenate([d.score for d in items]),
            track_id=np.concatenate([d.track_id for d in items]),
            interpolated=np.concatenate([d.interpolated for d in items]),
        )

    def with_tracks(self, track_id) -> "Detections":
        """A copy with track ids set (an array of length N, or one id for all)."""
        track_id = np.asarray(track_id)
        if track_id.ndim == 0:
            track_id = np.full(len(self), track_id)
        return replace(self, track_id=track_id)


def _as_float32(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Detections.{name} must be numeric: {exc}") from None
    return array


def _check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> None:
    # expected[0] == -1 means xyxy itself was not even 1-D.
    if array.shape != expected or expected[0] < 0:
        want = "(N, " + ", ".join(map(str, expected[1:])) + ")" if len(expected) > 1 else "(N,)"
        raise ValueError(f"Detections.{name} must have shape {want} with N={max(expected[0], 0)} faces, got {array.shape}")
