"""Keys: master key files, per-track keys, flip signs, sealing and key checks (docs/formats.md).

Everything here is a stable format: an archive anonymized today must open in ten years,
so the constants below never change (a new scheme gets a new version string).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .atomic import write_atomic
from .errors import KeyFileError, WrongKeyError

MASTER_PREFIX = "vidanon-key-v1:"
TRACK_PREFIX = "vidanon-track-key-v1:"
MASTER_SIZES = (16, 32)  # 128-bit (the paper's size) accepted on input; we generate 256-bit
TRACK_INFO = b"vidanon/track/v1/"
FLIP_INFO = b"vidanon/flip/v1"
SEAL_INFO = b"vidanon/seal/v1"
ORIGINAL_INFO = b"vidanon/original/v1"  # original face pixels (sealed originals)
IDENTITY_INFO = b"vidanon/identity/v1"  # a track's identity embedding (--index-identities)
MAC_INFO = b"vidanon/manifest-mac/v1"
KEY_CHECK_INFO = b"vidanon/key-check/v1"
HEADER_MAC_INFO = b"vidanon/manifest-header-mac/v1"
KEY_CHECK_SIZE = 16  # bytes of the key check value kept: enough that a wrong key never passes by chance
NONCE_SIZE = 12


def generate_master_key() -> bytes:
    return secrets.token_bytes(32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _write_secret(path: Path, line: str, overwrite: bool) -> None:
    """Written whole or not at all, mode 0600 from the start, so the key is never readable by others
    and a crash never leaves an empty key file behind."""
    try:
        write_atomic(path, (line + "\n").encode("ascii"), mode=0o600, replace=overwrite)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key file") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot write key file ({e.strerror or e})") from None


KEY_FILE_IS = ("a key file is one plain ASCII line, '" + MASTER_PREFIX + "...' as `vidanon keygen` writes it or '"
               + TRACK_PREFIX + "...' as `vidanon export-key` writes it")
MAX_KEY_FILE = 4096  # bytes: a key file is one short line; a video passed by mistake is not read whole


def _read_secret(path: Path) -> str:
    """The key file's line. What is not a key file is refused as such first, before its permissions are
    judged: `--key-file README.md` is a wrong file, not a key to chmod."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: is not a file ({KEY_FILE_IS})")
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: key file not found") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read key file ({e.strerror or e})") from None
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise KeyFileError(f"{path}: not a vidanon key file (it starts with a byte-order mark, as some editors "
                           f"save text; {KEY_FILE_IS})")
    text = data.decode("ascii", errors="replace").strip()
    if len(data) > MAX_KEY_FILE or not text.isascii() or not text.startswith((MASTER_PREFIX, TRACK_PREFIX)):
        raise KeyFileError(f"{path}: not a vidanon key file ({KEY_FILE_IS})")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: key file is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    return text


def save_master_key(path: str | os.PathLike, key: bytes, *, overwrite: bool = False) -> None:
    if len(key) not in MASTER_SIZES:
        raise ValueError(f"master key must be 16 or 32 bytes, got {len(key)}")
    _write_secret(Path(path), MASTER_PREFIX + _b64(key), overwrite)


def load_master_key(path: str | os.PathLike) -> bytes:
    text = _read_secret(Path(path))
    if not text.startswith(MASTER_PREFIX):
        hint = " (this is a single-track key: use --track-key)" if text.startswith(TRACK_PREFIX) else ""
        raise KeyFileError(f"{path}: not a vidanon master key file (expected '{MASTER_PREFIX}...'){hint}")
    try:
        key = _unb64(text[len(MASTER_PREFIX):])
    except ValueError:
        raise KeyFileError(f"{path}: malformed key (not base64url)") from None
    if len(key) not in MASTER_SIZES:
        raise KeyFileError(f"{path}: key is {len(key)} bytes; expected 16 or 32")
    return key


def track_key(master: bytes, video_id: bytes, track_id: int) -> bytes:
    """HKDF-SHA256(ikm=master, salt=video_id, info='vidanon/track/v1/<id>') -> 32 bytes."""
    if track_id < 0:
        raise ValueError("track id must be >= 0")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=video_id, info=TRACK_INFO + str(track_id).encode())
    return hkdf.derive(master)


@dataclass(frozen=True)
class TrackKey:
    """The key of one person in one video: restores that track and nothing else."""

    video_id: bytes
    track_id: int
    key: bytes


def save_track_key(path: str | os.PathLike, tk: TrackKey, *, overwrite: bool = False) -> None:
    line = f"{TRACK_PREFIX}{tk.video_id.hex()}:{tk.track_id}:{_b64(tk.key)}"
    _write_secret(Path(path), line, overwrite)


def load_track_key(path: str | os.PathLike) -> TrackKey:
    text = _read_secret(Path(path))
    parts = text[len(TRACK_PREFIX):].split(":") if text.startswith(TRACK_PREFIX) else []
    try:
        video_hex, tid, key_b64 = parts
        tk = TrackKey(bytes.fromhex(video_hex), int(tid), _unb64(key_b64))
    except ValueError:
        raise KeyFileError(f"{path}: not a vidanon track key file (expected '{TRACK_PREFIX}<video>:<track>:<key>')") from None
    if len(tk.key) != 32 or len(tk.video_id) != 16 or tk.track_id < 0:
        raise KeyFileError(f"{path}: malformed track key")
    return tk


def load_key(path: str | os.PathLike) -> bytes | TrackKey:
    """A master key (bytes) or a single-track key (TrackKey), whichever the file holds."""
    text = _read_secret(Path(path))
    return load_track_key(path) if text.startswith(TRACK_PREFIX) else load_master_key(path)


def flip_signs(tkey: bytes, n: int) -> np.ndarray:
    """r in {-1,+1}^n: first n bits of SHAKE-256(track_key || 'vidanon/flip/v1'), LSB-first, 1 -> +1.

    Element i of r multiplies element i of the latent in C order (channel, row, column).
    Never a framework RNG: their streams change between versions and devices.
    """
    stream = hashlib.shake_256(tkey + FLIP_INFO).digest((n + 7) // 8)
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")[:n]
    return bits.astype(np.int8) * 2 - 1


def _subkey(tkey: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(tkey)


def mac_hasher(tkey: bytes) -> hmac.HMAC:
    """Streaming form of `mac`, for data too large to hold at once: .update() it, then .hexdigest()."""
    return hmac.new(_subkey(tkey, MAC_INFO), digestmod=hashlib.sha256)


def mac(tkey: bytes, data: bytes) -> str:
    """HMAC-SHA256 under a key derived from the track key: lets a key holder check a manifest's integrity."""
    h = mac_hasher(tkey)
    h.update(data)
    return h.hexdigest()


def mac_ok(tkey: bytes, data: bytes, tag: str) -> bool:
    return hmac.compare_digest(mac(tkey, data), tag)


def key_check(key: bytes, salt: bytes = b"") -> str:
    """Key check value: HMAC-SHA256(key, 'vidanon/key-check/v1' ‖ salt), first 16 bytes, hex.

    It answers one question, "is this the key?", so that a wrong key is told apart from an altered
    manifest. The master key's value is salted per video, so two manifests do not show that they share
    a master key."""
    return hmac.new(key, KEY_CHECK_INFO + salt, hashlib.sha256).digest()[:KEY_CHECK_SIZE].hex()


def key_check_ok(key: bytes, value: str, salt: bytes = b"") -> bool:
    return hmac.compare_digest(key_check(key, salt), value)


def header_mac(master: bytes, video_id: bytes, data: bytes) -> str:
    """HMAC-SHA256 of a manifest header under a key derived from the master key (HKDF, salt = video_id,
    info = 'vidanon/manifest-header-mac/v1'): covers the header and its commitment to the track list."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=video_id, info=HEADER_MAC_INFO)
    return hmac.new(hkdf.derive(master), data, hashlib.sha256).hexdigest()


def seal(tkey: bytes, data: bytes, aad: bytes, info: bytes = SEAL_INFO) -> bytes:
    """AES-256-GCM under a key derived from the track key with the HKDF label `info` (one label per kind of
    sealed data); aad binds the blob to its place (video, track, frame)."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + AESGCM(_subkey(tkey, info)).encrypt(nonce, data, aad)


def unseal(tkey: bytes, blob: bytes, aad: bytes, info: bytes = SEAL_INFO) -> bytes:
    """Inverse of seal; a failed tag means the key is not the one the data was sealed with."""
    try:
        return AESGCM(_subkey(tkey, info)).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
    except (InvalidTag, ValueError):
        raise WrongKeyError("wrong key: it does not open this video's sealed face data") from None
