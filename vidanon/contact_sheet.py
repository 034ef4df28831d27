"""What `vidanon inspect` shows: the track table and the contact sheet.

The contact sheet is a PNG with one row per track: the track id, then the track's (anonymized)
face at up to a few moments, each labelled with its time. It lets an investigator say
"track 7 is the person at the door at 00:01:23" without anyone seeing a real face, and then
export the key of that one track. The faces are cut from the anonymized video itself, which is
read once, front to back, keeping only the frames that are needed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import cv2
import numpy as np

from .atomic import write_atomic
from .errors import InputError, VidanonError
from .manifest import Manifest
from .records import Face, Track
from .video import read_frames

TILE = 128  # px, side of one face tile
MARGIN = 0.25  # of the face box size, added on every side of a tile's crop
LABEL_W = 130  # px, the track label column
CAPTION_H = 18  # px, the time under a tile
HEADER_H = 30
PAD = 6
BG, FG, DIM, KEPT = (38, 38, 38), (235, 235, 235), (160, 160, 160), (40, 170, 255)  # BGR; KEPT: orange
FONT = cv2.FONT_HERSHEY_SIMPLEX


def face_seconds(manifest: Manifest, face: Face) -> float:
    """When a face is shown: pts × time_base (frame / fps when the frame had no pts)."""
    video = manifest.header.video
    if face.pts is not None:
        return float(face.pts * video.time_base)
    return face.frame / (video.fps or 25)


def hms(seconds: float) -> str:
    """HH:MM:SS.mmm"""
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def track_rows(manifest: Manifest) -> list[dict]:
    """One summary per track: id, frame range, first/last time, frames seen, mean face size from the boxes."""
    rows = []
    for t in manifest.tracks:
        faces = t.faces
        w = [f.width for f in faces] or [0.0]
        h = [f.height for f in faces] or [0.0]
        first, last = (face_seconds(manifest, faces[0]), face_seconds(manifest, faces[-1])) if faces else (0.0, 0.0)
        rows.append({
            "id": t.id, "first_frame": t.first_frame, "last_frame": t.last_frame,
            "first_time": hms(first), "last_time": hms(last),
            "first_seconds": round(first, 3), "last_seconds": round(last, 3),
            "frames": len(faces), "interpolated": sum(f.interpolated for f in faces),
            "mean_width": round(float(np.mean(w)), 1), "mean_height": round(float(np.mean(h)), 1),
            # a track left visible (--keep-photo) shows the real face: said wherever it is listed
            "kept": t.kept is not None, "kept_distance": None if t.kept is None else t.kept.distance,
        })
    return rows


def pick_moments(track: Track, count: int = 4) -> list[Face]:
    """Up to `count` faces spread evenly over the track, detected ones preferred over interpolated."""
    faces = [f for f in track.faces if not f.interpolated] or list(track.faces)
    if not faces:
        return []
    idx = np.unique(np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int))
    return [faces[i] for i in idx]


def face_tile(rgb: np.ndarray, box, size: int = TILE, margin: float = MARGIN) -> np.ndarray:
    """A square BGR tile around `box` (x0, y0, x1, y1) with `margin`; outside the frame is background."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0, 2.0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    side = int(round(side))
    h, w = rgb.shape[:2]
    crop = np.full((side, side, 3), BG[::-1], np.uint8)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=interp), cv2.COLOR_RGB2BGR)


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.42, color=FG, thickness: int = 1) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, color, thickness, cv2.LINE_AA)


def make_contact_sheet(video: str | os.PathLike, manifest: Manifest, *, per_track: int = 4, tile: int = TILE) -> np.ndarray:
    """The contact sheet as a BGR uint8 image (one row per track; a note when there are none)."""
    video = Path(video)
    needed: dict[int, list[tuple[int, int, Face]]] = {}  # frame -> [(row, column, face)]
    for row, t in enumerate(manifest.tracks):
        for col, face in enumerate(pick_moments(t, per_track)):
            needed.setdefault(face.frame, []).append((row, col, face))

    row_h = tile + CAPTION_H + PAD
    width = LABEL_W + per_track * (tile + PAD) + PAD
    height = HEADER_H + max(len(manifest.tracks), 1) * row_h + PAD
    sheet = np.full((height, width, 3), BG, np.uint8)
    n, kept = len(manifest.tracks), sum(t.kept is not None for t in manifest.tracks)
    shown = f"{kept} kept visible (REAL faces), the others anonymized" if kept else "faces shown anonymized"
    _text(sheet, f"{video.name}: {n} track{'s' * (n != 1)}; {shown}", PAD, 20, 0.5)
    if not n:
        _text(sheet, "no faces were found in this video", PAD, HEADER_H + 30, 0.5, DIM)
    for row, t in enumerate(manifest.tracks):
        y = HEADER_H + row * row_h
        _text(sheet, f"track {t.id}", PAD, y + 24, 0.6, FG, 2)
        _text(sheet, f"{len(t.faces)} frame{'s' * (len(t.faces) != 1)}", PAD, y + 46, 0.42, DIM)
        _text(sheet, "KEPT: real face" if t.kept is not None else "anonymized", PAD, y + 66, 0.42,
              KEPT if t.kept is not None else DIM)

    # One pass over the video; stop after the last frame we need.
    last = max(needed, default=-1)
    found = 0
    size = (manifest.header.video.height, manifest.header.video.width)
    with contextlib.closing(read_frames(video)) as frames:
        for frame in frames:
            if frame.rgb.shape[:2] != size:
                raise InputError(f"{video}: frames are {frame.rgb.shape[1]}x{frame.rgb.shape[0]}, the manifest says "
                                 f"{size[1]}x{size[0]}; is this the video the manifest belongs to?")
            if frame.index > last:
                break
            for row, col, face in needed.get(frame.index, ()):
                x, y = LABEL_W + col * (tile + PAD), HEADER_H + row * row_h
                sheet[y : y + tile, x : x + tile] = face_tile(frame.rgb, face.box, tile)
                _text(sheet, hms(face_seconds(manifest, face)), x + 2, y + tile + 13, 0.4, DIM)
                found += 1
    if found < sum(len(v) for v in needed.values()):
        raise InputError(f"{video}: has fewer frames than its manifest lists; is this the video the manifest belongs to?")
    return sheet


def write_contact_sheet(video: str | os.PathLike, path: str | os.PathLike, manifest: Manifest, **kw) -> Path:
    """Make the contact sheet and write it as a PNG, atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    ok, png = cv2.imencode(".png", make_contact_sheet(video, manifest, **kw))
    if not ok:
        raise VidanonError(f"{path}: could not encode the contact sheet as PNG")
    try:
        write_atomic(path, png.tobytes())
    except OSError as e:
        raise VidanonError(f"{path}: cannot write the contact sheet ({e.strerror or e})") from None
    return path
