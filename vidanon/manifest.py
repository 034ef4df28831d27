"""The sidecar manifest `<video stem>.vidanon.json` (DESIGN.md §4).

Holds no key and nothing that identifies a face in the clear: where each face was (box, affine),
how the video was made, and per face its latent mask sealed under that person's track key.
Each track carries an HMAC (under a key derived from its track key) over the header and the track,
so any key holder can check that what they restore from was not altered.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import keys
from .atomic import write_atomic
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


def sign_tracks(header: dict, tracks: list[dict], track_keys: dict[int, bytes]) -> list[dict]:
    return [{**t, "mac": keys.mac(track_keys[t["id"]], _signed_part(header, t))} for t in tracks]


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Atomic: a temporary file in the same folder, renamed when complete."""
    write_atomic(path, json.dumps(manifest.to_json(), separators=(",", ":")).encode())


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
