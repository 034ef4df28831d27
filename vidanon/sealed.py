"""Sealed originals: each face's original pixels, encrypted under its own track's key, for exact restoration.

Pasting an anonymized face changes only the frame pixels where its paste weight is > 0 (its footprint,
`align.paste_weights`). Keeping those pixels as decoded from the input, sealed per face with AES-256-GCM
under a key derived from the track key (HKDF label `vidanon/original/v1`), lets a key holder put back
exactly what was recorded — no diffusion, no loss — where the paper's key flip only comes close.

Where two faces' footprints overlap, a pixel belongs to one face only: the one whose paste weight there
is largest (ties: the lower track id). A face's sealed data holds only its own pixels
(the others are zero), so one person's key never reveals another person's face, and restoring one person
leaves the other's pixels as they are in the anonymized video.

Each face's pixels are one lossless WebP image (RGB, alpha = the pixels it owns) of its footprint's
bounding box. Per-track video (x264 RGB qp 0) measured 30 % smaller (docs/benchmarks.md, "Sealed
originals"), but an image per face needs no codec state per live track, opens any one frame alone, and
is sealed with exactly that frame in its associated data.

The sidecar `<stem>.vidanon.sealed` is the magic line followed by the sealed pieces, back to back; the
manifest holds each piece's offset and length and the sidecar's size and SHA-256, so a truncated, edited,
reordered or swapped sidecar is refused before anything is restored.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from . import keys
from .atomic import commit, temp_beside
from .errors import InputError, WrongKeyError

MAGIC = b"vidanon-sealed-v1\n"
SUFFIX = ".vidanon.sealed"
ENCODING = "webp-lossless-rgba/v1"  # the manifest's name for: each piece = u32 y0, u32 x0, lossless WebP (alpha = owned)


class SealedDataError(InputError):
    """The sidecar of sealed originals is missing, altered or not this video's."""


@dataclass(frozen=True)
class Original:
    """One face's original pixels on a frame: a box at (y0, x0), its pixels (zero where not owned) and which it owns."""

    y0: int
    x0: int
    pixels: np.ndarray  # (h, w, 3) uint8
    owned: np.ndarray  # (h, w) bool

    def __post_init__(self):
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[:2] != self.owned.shape:
            raise ValueError(f"pixels {self.pixels.shape} {self.pixels.dtype} do not match owned {self.owned.shape}")


def sidecar_path(video: str | os.PathLike) -> Path:
    video = Path(video)
    return video.with_name(video.stem + SUFFIX)


def originals(frame: np.ndarray, footprints: Sequence[tuple[int, int, np.ndarray]],
              tracks: Sequence[int]) -> list[Original]:
    """Each face's own original pixels of `frame`, given every face's footprint (y0, x0, weights) on it
    and its track id. A face owns the pixels of its footprint (weight > 0) where no other face weighs
    more; on equal weights the lower track id owns the pixel. Owned sets are disjoint and together
    cover every footprint."""
    out = []
    for k, (y0, x0, w) in enumerate(footprints):
        owned = w > 0
        for j, (yj, xj, wj) in enumerate(footprints):
            if j == k:
                continue
            # the overlap of the two boxes, in each one's own coordinates
            top, left = max(y0, yj), max(x0, xj)
            bottom, right = min(y0 + w.shape[0], yj + wj.shape[0]), min(x0 + w.shape[1], xj + wj.shape[1])
            if top >= bottom or left >= right:
                continue
            mine = w[top - y0 : bottom - y0, left - x0 : right - x0]
            theirs = wj[top - yj : bottom - yj, left - xj : right - xj]
            loses = (theirs > mine) | ((theirs == mine) & (tracks[j] < tracks[k]))
            owned[top - y0 : bottom - y0, left - x0 : right - x0] &= ~loses
        region = frame[y0 : y0 + w.shape[0], x0 : x0 + w.shape[1]]
        out.append(Original(y0, x0, np.where(owned[..., None], region, 0).astype(np.uint8), owned))
    return out


def restore_into(frame: np.ndarray, original: Original) -> None:
    """Put a face's original pixels back into `frame` (in place): replaced, not blended, so they are bit-exact."""
    h, w = original.owned.shape
    region = frame[original.y0 : original.y0 + h, original.x0 : original.x0 + w]
    region[original.owned] = original.pixels[original.owned]


def _aad(video_id: bytes, track_id: int, frame: int) -> bytes:
    return keys.ORIGINAL_INFO + b"|" + video_id + f"|{track_id}|{frame}".encode()


def seal_original(tkey: bytes, video_id: bytes, track_id: int, frame: int, original: Original) -> bytes:
    """The face's pixels as lossless WebP (alpha = owned), sealed under the track key, bound to its video, track, frame."""
    bgra = np.dstack([original.pixels[..., ::-1], original.owned.astype(np.uint8) * 255])
    ok, webp = cv2.imencode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, 101])  # > 100: lossless
    if not ok:
        raise ValueError("WebP encoding of a face's original pixels failed")
    plain = struct.pack("<II", original.y0, original.x0) + webp.tobytes()
    return keys.seal(tkey, plain, _aad(video_id, track_id, frame), info=keys.ORIGINAL_INFO)


def open_original(tkey: bytes, video_id: bytes, track_id: int, frame: int, blob: bytes) -> Original:
    """Inverse of seal_original. WrongKeyError when the key, the video, the track or the frame is not the sealed one."""
    try:
        plain = keys.unseal(tkey, blob, _aad(video_id, track_id, frame), info=keys.ORIGINAL_INFO)
    except WrongKeyError:
        raise WrongKeyError(f"the sealed original of track {track_id}, frame {frame} does not open with this key") from None
    y0, x0 = struct.unpack("<II", plain[:8])
    bgra = cv2.imdecode(np.frombuffer(plain[8:], np.uint8), cv2.IMREAD_UNCHANGED)
    return Original(y0, x0, np.ascontiguousarray(bgra[..., 2::-1]), bgra[..., 3] == 255)


@dataclass(frozen=True)
class SidecarIndex:
    """What the manifest records of a sidecar, so that a reader can check it before trusting any piece."""

    size: int
    sha256: str


class SidecarWriter:
    """Appends sealed pieces to a temporary file beside `path`; `close()` renames it onto `path`.

    Pieces stream to disk as faces are written, so memory stays flat in video length. Nothing appears
    under the final name unless `close()` is reached; `abort()` (or an exception in a `with`) removes it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tmp = temp_beside(self.path, mode=0o600)  # encrypted, but nobody else's business either
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._size = 0
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def add(self, blob: bytes) -> tuple[int, int]:
        """Append one sealed piece; returns its (offset, length) for the manifest."""
        offset = self._size
        self._write(blob)
        return offset, len(blob)

    def close(self) -> SidecarIndex:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        commit(self._tmp, self.path)
        return SidecarIndex(self._size, self._hash.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SidecarWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not self._file.closed:
            self.abort()


class SidecarReader:
    """A sidecar checked against its manifest's index (size and SHA-256) before any piece is read."""

    def __init__(self, path: str | os.PathLike, index: SidecarIndex):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise SealedDataError(f"{self.path}: no such file: the sealed originals this manifest names are missing") from None
        if size != index.size:
            raise SealedDataError(f"{self.path}: is {size} bytes, its manifest says {index.size}: the sidecar was "
                                  "truncated, extended or belongs to another video")
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise SealedDataError(f"{self.path}: not a vidanon sidecar of sealed originals")
            h.update(MAGIC)
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != index.sha256:
            raise SealedDataError(f"{self.path}: its content does not match its manifest (SHA-256): the sidecar was "
                                  "edited or reordered, or belongs to another video")
        self._file = open(self.path, "rb")

    def read(self, offset: int, length: int) -> bytes:
        if offset < len(MAGIC) or length <= 0:
            raise SealedDataError(f"{self.path}: a piece at {offset} (+{length}) is outside its sealed data")
        self._file.seek(offset)
        blob = self._file.read(length)
        if len(blob) != length:
            raise SealedDataError(f"{self.path}: a piece at {offset} (+{length}) runs past the end")
        return blob

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SidecarReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
