"""The sidecar manifest `<video stem>.vidanon.json` (DESIGN.md §4).

Holds no key and nothing that identifies a face in the clear: where each face was (box, affine),
how the video was made, and per face its latent mask sealed under that person's track key.
Each track carries an HMAC (under a key derived from its track key) over the header and the track,
so any key holder can check that what they restore from was not altered.

While a video is anonymized its face entries go to a `FaceLog` on disk, not to memory (an hour of
a busy camera makes ~0.4 GB of them); `write_manifest` then streams each track from the log
through its HMAC into the file.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import keys
from .atomic import atomic_file
from .errors import InputError, WrongKeyError

FORMAT = "vidanon-manifest"
VERSION = 1
SUFFIX = ".vidanon.json"


def manifest_path(video: str | os.PathLike) -> Path:
    video = Path(video)
    return video.with_name(video.stem + SUFFIX)


def manifest_for(path: str | os.PathLike) -> Path:
    """The manifest of an anonymized video, or `path` itself when it is a manifest."""
    path = Path(path)
    return path if path.name.endswith(SUFFIX) else manifest_path(path)


def _aad(video_id: bytes, track_id: int, frame: int) -> bytes:
    return b"vidanon/face/v1|" + video_id + f"|{track_id}|{frame}".encode()


def seal_mask(tkey: bytes, video_id: bytes, track_id: int, frame: int, mask: np.ndarray) -> str:
    """Seal a binary latent mask (h×w), bound to its video, track and frame."""
    packed = zlib.compress(np.packbits(np.asarray(mask, bool)).tobytes(), 9)
    return base64.b64encode(keys.seal(tkey, packed, _aad(video_id, track_id, frame))).decode("ascii")


def unseal_mask(tkey: bytes, video_id: bytes, track_id: int, frame: int, blob: str, shape: tuple[int, int]) -> np.ndarray:
    packed = keys.unseal(tkey, base64.b64decode(blob), _aad(video_id, track_id, frame))
    bits = np.unpackbits(np.frombuffer(zlib.decompress(packed), np.uint8))[: shape[0] * shape[1]]
    return bits.reshape(shape).astype(bool)


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _signed_part(header: dict, track: dict) -> bytes:
    return _canonical({"header": header, "track": {k: v for k, v in track.items() if k != "mac"}})


@dataclass(frozen=True)
class Manifest:
    header: dict  # everything but the tracks
    tracks: list[dict]  # {"id", "first_frame", "last_frame", "faces": [...], "mac"}

    @property
    def video_id(self) -> bytes:
        return bytes.fromhex(self.header["video_id"])

    @property
    def latent_hw(self) -> tuple[int, int]:
        return tuple(self.header["model"]["latent_shape"][1:])

    def track(self, track_id: int) -> dict:
        for t in self.tracks:
            if t["id"] == track_id:
                return t
        raise InputError(f"track {track_id} is not in this video (tracks: {', '.join(str(t['id']) for t in self.tracks) or 'none'})")

    def faces_by_frame(self, track_ids) -> dict[int, list[tuple[int, dict]]]:
        """frame index -> [(track id, face record)] for the chosen tracks."""
        out: dict[int, list[tuple[int, dict]]] = {}
        for tid in track_ids:
            for face in self.track(tid)["faces"]:
                out.setdefault(face["frame"], []).append((tid, face))
        return out

    def check_key(self, track_id: int, tkey: bytes) -> None:
        """Wrong key -> WrongKeyError; right key but altered manifest -> InputError. Runs before any frame is written."""
        track = self.track(track_id)
        if track["faces"]:
            face = track["faces"][0]
            try:
                unseal_mask(tkey, self.video_id, track_id, face["frame"], face["sealed"], self.latent_hw)
            except WrongKeyError:
                raise WrongKeyError(f"wrong key for track {track_id}: it does not open this video's sealed face data") from None
        if not keys.mac_ok(tkey, _signed_part(self.header, track), track.get("mac", "")):
            raise InputError(f"manifest does not match its checksum for track {track_id}: it was altered or belongs to another video")

    def to_json(self) -> dict:
        return {**self.header, "tracks": self.tracks}


class FaceLog:
    """The face entries of a video being anonymized, in an unnamed temporary file: 16 bytes per face stay
    in memory (where it is in the file), so memory does not grow with the video's length.
    Add each track's faces in frame order."""

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        # Unnamed (nothing is left behind, whatever happens); beside the output by default, not in a /tmp
        # that may be a small RAM disk.
        self._file = tempfile.TemporaryFile(dir=folder)
        self._size = 0
        self._spans: dict[int, array] = {}  # track id -> offset, length, offset, length, ... in the file
        self._summaries: dict[int, dict] = {}  # track id -> its id, first/last frame and pts

    def add(self, track_id: int, face: dict) -> None:
        data = _canonical(face)
        self._file.write(data)
        self._spans.setdefault(track_id, array("q")).extend((self._size, len(data)))
        self._size += len(data)
        summary = self._summaries.setdefault(track_id, {"id": track_id, "first_frame": face["frame"],
                                                        "first_pts": face["pts"]})
        summary.update(last_frame=face["frame"], last_pts=face["pts"])

    def track_ids(self) -> list[int]:
        return sorted(self._spans)

    def summary(self, track_id: int) -> dict:
        """The track's fields besides its faces: id, first/last frame and pts."""
        return self._summaries[track_id]

    def faces(self, track_id: int) -> Iterator[bytes]:
        """The track's face entries, each in canonical JSON."""
        self._file.flush()
        spans = self._spans[track_id]
        for i in range(0, len(spans), 2):
            yield os.pread(self._file.fileno(), spans[i + 1], spans[i])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FaceLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_manifest(path: str | os.PathLike, header: dict, log: FaceLog, track_keys: dict[int, bytes]) -> None:
    """Write the manifest atomically (a temporary file in the same folder, renamed when complete).

    Each track is written in canonical form, which is byte for byte what its HMAC covers (`_signed_part`),
    so one stream from the log feeds both the file and the HMAC and no track is ever held whole."""
    canon_header = _canonical(header)
    with atomic_file(path) as out:
        out.write(canon_header[:-1] + b',"tracks":[')
        for i, tid in enumerate(log.track_ids()):
            mac = keys.mac_hasher(track_keys[tid])
            mac.update(b'{"header":' + canon_header + b',"track":')
            out.write(b"," if i else b"")

            def both(chunk: bytes) -> None:
                mac.update(chunk)
                out.write(chunk)

            both(b'{"faces":[')
            for j, face in enumerate(log.faces(tid)):
                both(b"," + face if j else face)
            both(b"]," + _canonical(log.summary(tid))[1:-1])  # sorted keys: "faces" comes first
            mac.update(b"}}")
            out.write(b',"mac":"' + mac.hexdigest().encode() + b'"}')
        out.write(b"]}")


def _well_formed(header: dict, tracks) -> bool:
    """The fields restoration relies on are there and of the right kind (no KeyError halfway through a video)."""
    try:
        ok = (len(bytes.fromhex(header["video_id"])) == 16 and len(header["model"]["latent_shape"]) == 3
              and isinstance(header["diffusion"]["steps"], int) and isinstance(header["video"]["frames"], int)
              and isinstance(header["mask"]["feather"], int) and isinstance(tracks, list))
        return ok and all(
            isinstance(t["id"], int) and isinstance(t["mac"], str) and isinstance(t["faces"], list)
            and all(isinstance(f["frame"], int) and isinstance(f["sealed"], str)
                    and [len(row) for row in f["affine"]] == [3, 3] for f in t["faces"])
            for t in tracks)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def read_manifest(path: str | os.PathLike) -> Manifest:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found (it is written beside the anonymized video as <stem>{SUFFIX})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable manifest ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not a vidanon manifest")
    if data.get("version") != VERSION:
        raise InputError(f"{path}: manifest version {data.get('version')} is not supported by this vidanon (reads {VERSION})")
    tracks = data.pop("tracks", None)
    if not _well_formed(data, tracks):
        raise InputError(f"{path}: manifest is damaged or incomplete (missing or malformed fields)")
    return Manifest(data, tracks)
