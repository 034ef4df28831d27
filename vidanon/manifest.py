"""The sidecar manifest `<video stem>.vidanon.json`: written, read, and checked against a key (docs/formats.md).

Holds no key and nothing that identifies a face in the clear: where each face was (box, affine), how
the video was made, and per face its latent mask sealed under that person's track key. Integrity
(version 2): a key check value per track and one for the master key, so that a wrong key is told apart
from an altered manifest; an HMAC per track (under its track key) over the header and the track; and an
HMAC under the master key over the header, which commits to the list of track ids.

While a video is anonymized its face entries go to a `FaceLog` on disk, not to memory (an hour of
a busy camera makes ~0.4 GB of them); `write_manifest` then streams each track from the log
through its HMAC into the file. The typed records are in records.py.
"""

from __future__ import annotations

import base64
import glob
import hmac
import json
import os
import secrets
import tempfile
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import keys
from .atomic import atomic_file
from .errors import InputError, ManifestAlteredError, WrongKeyError
from .records import FORMAT, READABLE, VERSION, EncoderFacts, Face, Header, KeyCheck, Kept, Malformed, ModelFacts, Track, VideoFacts

SUFFIX = ".vidanon.json"


def manifest_path(video: str | os.PathLike) -> Path:
    video = Path(video)
    return video.with_name(video.stem + SUFFIX)


def manifest_for(path: str | os.PathLike) -> Path:
    """The manifest of an anonymized video, or `path` itself when it is a manifest."""
    path = Path(path)
    return path if path.name.endswith(SUFFIX) else manifest_path(path)


def inspect_video(path: str | os.PathLike) -> Manifest:
    """The manifest of an anonymized video (or the manifest file itself). Its structure is checked;
    its authenticity needs a key (open_tracks)."""
    path = Path(path)
    if not path.name.endswith(SUFFIX) and not path.exists():
        raise InputError(f"{path}: no such file")
    return read_manifest(manifest_for(path))


def video_for(path: str | os.PathLike) -> Path:
    """The anonymized video `path` names: itself, or for a manifest the video beside it (`<stem>.*`)."""
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        return path
    stem = path.name[: -len(SUFFIX)]
    videos = sorted(p for p in path.parent.glob(glob.escape(stem) + ".*") if p.suffix != ".json" and p.is_file())
    return videos[0] if videos else path.with_name(stem + ".mp4")


# --- sealed per-face data ----------------------------------------------------------------------


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


# --- the manifest as read ----------------------------------------------------------------------


def canonical(obj) -> bytes:
    """Sorted keys, no spaces: the bytes every MAC covers."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _signed_header(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k != "tracks"}


@dataclass(frozen=True)
class Manifest:
    header: Header
    tracks: tuple[Track, ...]
    raw: dict = field(repr=False, compare=False)  # the JSON as read: what the MACs are checked against

    @property
    def video_id(self) -> bytes:
        return self.header.video_id

    def track(self, track_id: int) -> Track:
        for t in self.tracks:
            if t.id == track_id:
                return t
        raise InputError(f"track {track_id} is not in this video (tracks: {', '.join(str(t.id) for t in self.tracks) or 'none'})")

    def faces_by_frame(self, track_ids) -> dict[int, list[tuple[int, Face]]]:
        """frame index -> [(track id, face)] for the chosen tracks."""
        out: dict[int, list[tuple[int, Face]]] = {}
        for tid in track_ids:
            for face in self.track(tid).faces:
                out.setdefault(face.frame, []).append((tid, face))
        return out

    def raw_track(self, track_id: int) -> dict:
        return next(t for t in self.raw["tracks"] if t.get("id") == track_id)


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and check the structure of a manifest (version 1 or 2); authenticity needs a key (open_tracks)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: manifest not found (it is written beside the anonymized video as <stem>{SUFFIX})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable manifest ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise InputError(f"{path}: not a vidanon manifest")
    if raw.get("version") not in READABLE:
        raise InputError(f"{path}: manifest version {raw.get('version')} is not supported by this vidanon "
                         f"(reads {', '.join(map(str, READABLE))})")
    try:
        header = Header.from_json(raw)
        tracks = tuple(Track.from_json(t) for t in _list(raw.get("tracks")))
    except (Malformed, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{path}: manifest is damaged or incomplete ({e})") from None
    ids = [t.id for t in tracks]
    if len(set(ids)) != len(ids):
        raise ManifestAlteredError(f"{path}: the manifest was altered: a track is listed twice")
    if header.version >= 2 and (header.track_ids is None or list(header.track_ids) != ids):
        raise ManifestAlteredError(f"{path}: the manifest was altered: its tracks ({len(ids)}) are not the "
                                   f"{len(header.track_ids or ())} it committed to")
    return Manifest(header, tracks, raw)


def read_header(path: str | os.PathLike) -> Header:
    """The header alone, without reading the tracks (an hour of a busy camera is ~0.4 GB of them): a
    manifest vidanon wrote is canonical JSON, whose "tracks" come last. Anything else is read whole."""
    path = Path(path)
    marker, head = b',"tracks":[', b""
    try:
        with open(path, "rb") as f:
            while marker not in head and (chunk := f.read(1 << 16)):
                head += chunk
        raw = json.loads(head[: head.index(marker)] + b"}")
        if raw.get("format") == FORMAT and raw.get("version") in READABLE:
            return Header.from_json(raw)
    except (OSError, ValueError, UnicodeDecodeError, Malformed, TypeError, AttributeError):
        pass
    return read_manifest(path).header  # its error says what is wrong


def _list(value) -> list:
    if not isinstance(value, list):
        raise Malformed("'tracks' is not a list")
    return value


def open_tracks(man: Manifest, key: bytes | keys.TrackKey, tracks: Sequence[int] | None = None) -> dict[int, bytes]:
    """The track keys of the chosen tracks (all, for a master key), once key and manifest check out.

    WrongKeyError only when the key is wrong: its key check value fails (version 1, which has none:
    the first sealed mask does not open). ManifestAlteredError when the key is right but a MAC fails."""
    if isinstance(key, keys.TrackKey):
        if key.video_id != man.video_id:
            raise WrongKeyError(f"this track key belongs to another video (video {key.video_id.hex()[:8]}…, "
                                f"not {man.video_id.hex()[:8]}…), or the manifest's video_id was altered")
        if tracks and set(tracks) != {key.track_id}:
            raise WrongKeyError(f"this key restores track {key.track_id} only, not {', '.join(map(str, tracks))}")
        tkeys = {key.track_id: key.key}
        master_checked = False
    else:
        if len(key) not in keys.MASTER_SIZES:
            raise WrongKeyError("a master key is 16 or 32 bytes")
        _check_master(man, key)
        master_checked = man.header.version >= 2
        chosen = list(tracks) if tracks else [t.id for t in man.tracks]
        tkeys = {t: keys.track_key(key, man.video_id, t) for t in chosen}
    for tid, tk in tkeys.items():
        _check_track(man, man.track(tid), tk, key_known_good=master_checked)
    return tkeys


def _check_master(man: Manifest, master: bytes) -> None:
    h = man.header
    if h.version < 2:
        return  # version 1 has no master key check: each track's sealed mask tells
    if h.key_check is None or h.header_mac is None:
        raise ManifestAlteredError("the manifest was altered: its key check value or header MAC is missing")
    if not keys.key_check_ok(master, h.key_check.value, h.key_check.salt):
        raise WrongKeyError("wrong key: this is not the master key this video was anonymized with")
    signed = {k: v for k, v in _signed_header(man.raw).items() if k != "header_mac"}
    if not hmac.compare_digest(keys.header_mac(master, h.video_id, canonical(signed)), h.header_mac):
        raise ManifestAlteredError("the manifest was altered: its header does not match its MAC (video id, "
                                   "settings or the list of tracks changed)")


def _check_track(man: Manifest, track: Track, tkey: bytes, key_known_good: bool) -> None:
    if man.header.version >= 2:
        if track.key_check is None or not keys.key_check_ok(tkey, track.key_check):
            if key_known_good:  # the master key passed its own check: the track's value was changed
                raise ManifestAlteredError(f"the manifest was altered: track {track.id}'s key check value does not match")
            raise WrongKeyError(f"wrong key for track {track.id}: it is not the key this track was anonymized with")
    elif track.faces:
        face = track.faces[0]
        try:
            unseal_mask(tkey, man.video_id, track.id, face.frame, face.sealed, man.header.latent_hw)
        except WrongKeyError:
            raise WrongKeyError(f"wrong key for track {track.id}: it does not open this video's sealed face data") from None
    signed = canonical({"header": _signed_header(man.raw), "track": {k: v for k, v in man.raw_track(track.id).items() if k != "mac"}})
    if not keys.mac_ok(tkey, signed, track.mac):
        raise ManifestAlteredError(f"the manifest was altered: track {track.id} does not match its MAC "
                                   "(or the manifest belongs to another video)")


# --- writing -----------------------------------------------------------------------------------


KEY_DERIVATION = {"track": "hkdf-sha256/vidanon/track/v1", "flip": "shake256/vidanon/flip/v1",
                  "seal": "aes-256-gcm/vidanon/seal/v1", "mac": "hmac-sha256/vidanon/manifest-mac/v1",
                  "key_check": "hmac-sha256/vidanon/key-check/v1", "header_mac": "hmac-sha256/vidanon/manifest-header-mac/v1"}


def build_header(info, cfg, model, video_id: bytes, schedule_config: dict, mask_methods: Sequence[str], frames: int) -> Header:
    """The header of a new anonymization of the video `info` (video.VideoInfo) with the settings `cfg`
    (config.Config) and `model`; the writer adds the key check value, track list and MAC."""
    from . import __version__
    from .align import ALIGNMENT, CROP_SIZE

    return Header(
        version=VERSION, vidanon_version=__version__, video_id=video_id,
        video=VideoFacts(info.width, info.height, frames, info.time_base, info.fps),
        model=ModelFacts(model.name, model.digest, tuple(model.latent_shape), tuple(model.image_shape)),
        steps=cfg.steps, scheduler=dict(schedule_config), crop_size=CROP_SIZE, alignment=ALIGNMENT,
        mask_methods=tuple(mask_methods), feather=cfg.feather,
        encoder=EncoderFacts(cfg.lossless, None if cfg.lossless else cfg.crf, cfg.preset),
        # compile as it ran (true/false), not "auto": readers that know compile only as a boolean still read it
        key_derivation=dict(KEY_DERIVATION), config={**cfg.to_dict(), "compile": bool(getattr(model, "compiled", False))},
    )


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
        self._ends: dict[int, tuple[Face, Face]] = {}  # track id -> its first and last face
        self._extra: dict[int, dict] = {}  # track id -> its sealed identity and kept record, where it has them

    def add(self, track_id: int, face: Face) -> None:
        data = canonical(face.to_json())
        self._file.write(data)
        self._spans.setdefault(track_id, array("q")).extend((self._size, len(data)))
        self._size += len(data)
        first = self._ends.get(track_id, (face, face))[0]
        self._ends[track_id] = (first, face)

    def track_ids(self) -> list[int]:
        return sorted(self._spans)

    def annotate(self, track_id: int, *, identity: str | None = None, kept: Kept | None = None) -> None:
        """Record a track's sealed identity embedding and/or that it was kept visible (identity.py)."""
        self._extra.setdefault(track_id, {}).update({k: v for k, v in (("identity", identity), ("kept", kept)) if v is not None})

    def summary(self, track_id: int, tkey: bytes) -> dict:
        """The track's fields besides its faces and MAC."""
        first, last = self._ends[track_id]
        return Track(track_id, first.frame, last.frame, first.pts, last.pts, (), "", keys.key_check(tkey),
                     **self._extra.get(track_id, {})).summary_json()

    def faces(self, track_id: int) -> Iterator[bytes]:
        """The track's face entries, each in canonical JSON."""
        self._file.flush()
        spans = self._spans[track_id]
        for i in range(0, len(spans), 2):
            yield os.pread(self._file.fileno(), spans[i + 1], spans[i])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FaceLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_manifest(path: str | os.PathLike, header: Header, log: FaceLog, master: bytes) -> None:
    """Write the version-2 manifest atomically, with its key check values, track list and MACs.

    Each track is written in canonical form, which is byte for byte what its HMAC covers, so one
    stream from the log feeds both the file and the HMAC and no track is ever held whole."""
    salt = secrets.token_bytes(16)
    header = replace(header, key_check=KeyCheck(salt, keys.key_check(master, salt)), track_ids=tuple(log.track_ids()))
    signed = header.to_json()
    signed["header_mac"] = keys.header_mac(master, header.video_id, canonical(signed))
    canon_header = canonical(signed)
    with atomic_file(path) as out:
        out.write(canon_header[:-1] + b',"tracks":[')
        for i, tid in enumerate(log.track_ids()):
            tkey = keys.track_key(master, header.video_id, tid)
            mac = keys.mac_hasher(tkey)
            mac.update(b'{"header":' + canon_header + b',"track":')
            out.write(b"," if i else b"")

            def both(chunk: bytes) -> None:
                mac.update(chunk)
                out.write(chunk)

            both(b'{"faces":[')
            for j, face in enumerate(log.faces(tid)):
                both(b"," + face if j else face)
            both(b"]," + canonical(log.summary(tid, tkey))[1:-1])  # sorted keys: "faces" comes first
            mac.update(b"}}")
            out.write(b',"mac":"' + mac.hexdigest().encode() + b'"}')
        out.write(b"]}")
