"""Keys: the stable formats of DESIGN §3, frozen by test vectors, and their properties."""

import hashlib
import hmac
import os
import stat

import numpy as np
import pytest

from vidanon import keys
from vidanon.errors import KeyFileError, WrongKeyError

MASTER = bytes(range(32))
VIDEO_ID = bytes(range(100, 116))

# Frozen: changing any of these breaks every archive anonymized before. Never update them.
TRACK7_HEX = "30feadaf05e001dd943c6bf043f52c19a3930c113e5e7eb50651c553c1caf414"
TRACK7_FIRST32 = "+-+-++++-+-----+-+++++-++-+--+++"
MASTER16_TRACK0_HEX = "e5178ef0b5045155d56416c177b105c654c417703793b3539e4a672adc9a07c5"


def rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """An independent HKDF (RFC 5869) to show the frozen vectors follow the spec, not just our code."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def signs_str(r):
    return "".join("+" if v > 0 else "-" for v in r)


def test_frozen_vectors():
    tk = keys.track_key(MASTER, VIDEO_ID, 7)
    assert tk.hex() == TRACK7_HEX
    assert signs_str(keys.flip_signs(tk, 32)) == TRACK7_FIRST32
    assert keys.track_key(bytes(range(16)), VIDEO_ID, 0).hex() == MASTER16_TRACK0_HEX


def test_vectors_follow_the_spec_independently():
    tk = rfc5869_hkdf_sha256(MASTER, VIDEO_ID, b"vidanon/track/v1/7", 32)
    assert tk.hex() == TRACK7_HEX
    stream = hashlib.shake_256(tk + b"vidanon/flip/v1").digest(4)
    bits = [(stream[i // 8] >> (i % 8)) & 1 for i in range(32)]  # LSB-first within each byte
    assert "".join("+" if b else "-" for b in bits) == TRACK7_FIRST32


def test_flip_twice_is_identity_bitwise():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(12288).astype(np.float32)
    r = keys.flip_signs(keys.track_key(MASTER, VIDEO_ID, 3), z.size)
    assert np.array_equal((z * r) * r, z)
    assert set(np.unique(r)) == {-1, 1}


def test_one_master_bit_changes_half_the_signs():
    n = 12288
    base = keys.flip_signs(keys.track_key(MASTER, VIDEO_ID, 0), n)
    for bit in (0, 77, 255):
        other = bytearray(MASTER)
        other[bit // 8] ^= 1 << (bit % 8)
        changed = np.mean(base != keys.flip_signs(keys.track_key(bytes(other), VIDEO_ID, 0), n))
        assert 0.48 <= changed <= 0.52, (bit, changed)


def test_two_tracks_of_one_video_agree_on_half_the_signs():
    n = 12288
    r0 = keys.flip_signs(keys.track_key(MASTER, VIDEO_ID, 0), n)
    r1 = keys.flip_signs(keys.track_key(MASTER, VIDEO_ID, 1), n)
    assert 0.48 <= np.mean(r0 == r1) <= 0.52
    # and the same track in another video is unrelated too
    r0b = keys.flip_signs(keys.track_key(MASTER, bytes(16), 0), n)
    assert 0.48 <= np.mean(r0 == r0b) <= 0.52


def test_master_key_file_roundtrip_and_mode(tmp_path):
    path = tmp_path / "master.key"
    key = keys.generate_master_key()
    assert len(key) == 32
    keys.save_master_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("vidanon-key-v1:") and text.count("\n") == 1 and "=" not in text
    assert keys.load_master_key(path) == key
    with pytest.raises(KeyFileError, match="already exists"):
        keys.save_master_key(path, keys.generate_master_key())
    assert keys.load_master_key(path) == key  # refused overwrite left the key intact


def test_16_byte_key_accepted(tmp_path):
    path = tmp_path / "k16"
    keys.save_master_key(path, bytes(16))
    assert keys.load_master_key(path) == bytes(16)


@pytest.mark.parametrize(
    "content, message",
    [
        ("vidanon-key-v1:AAAA\n", "3 bytes"),
        ("vidanon-key-v1:not*base64\n", "malformed"),
        ("hello\n", "not a vidanon key file"),
        ("", "not a vidanon key file"),
        ("vidanon-key-v1:" + "A" * 64 + "\n", "48 bytes"),
    ],
)
def test_malformed_key_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message) as e:
        keys.load_master_key(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_world_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "open.key"
    keys.save_master_key(path, bytes(32))
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others.*chmod 600"):
        keys.load_master_key(path)


@pytest.mark.parametrize("content", ["# vidanon\n\nReversible face anonymization \u2014 for CCTV video.\n", "x" * 10_000])
def test_a_file_that_is_no_key_is_refused_as_such_before_its_permissions(tmp_path, content):
    """`--key-file README.md`: one line saying it is not a key file and what one is, not a chmod hint first."""
    path = tmp_path / "README.md"
    path.write_text(content)
    os.chmod(path, 0o644)
    for load in (keys.load_master_key, keys.load_track_key, keys.load_key):
        with pytest.raises(KeyFileError) as e:
            load(path)
        message = str(e.value)
        assert message.startswith(f"{path}: not a vidanon key file") and "chmod" not in message and "\n" not in message
        assert keys.MASTER_PREFIX in message and "vidanon keygen" in message


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        keys.load_master_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="is not a file"):
        keys.load_master_key(tmp_path)


def test_track_key_file_roundtrip(tmp_path):
    tk = keys.TrackKey(VIDEO_ID, 7, keys.track_key(MASTER, VIDEO_ID, 7))
    path = tmp_path / "t7.key"
    keys.save_track_key(path, tk)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_track_key(path) == tk
    with pytest.raises(KeyFileError, match="single-track key"):
        keys.load_master_key(path)


def test_seal_unseal_and_wrong_key():
    tk = keys.track_key(MASTER, VIDEO_ID, 0)
    blob = keys.seal(tk, b"mask bits", b"frame 3")
    assert keys.unseal(tk, blob, b"frame 3") == b"mask bits"
    with pytest.raises(WrongKeyError, match="wrong key"):
        keys.unseal(keys.track_key(MASTER, VIDEO_ID, 1), blob, b"frame 3")
    with pytest.raises(WrongKeyError):
        keys.unseal(tk, blob, b"frame 4")  # moved to another face
    assert keys.seal(tk, b"x", b"") != keys.seal(tk, b"x", b"")  # fresh nonce each time


def test_load_key_tells_master_from_track_key(tmp_path):
    keys.save_master_key(tmp_path / "m", MASTER)
    tk = keys.TrackKey(VIDEO_ID, 2, keys.track_key(MASTER, VIDEO_ID, 2))
    keys.save_track_key(tmp_path / "t", tk)
    assert keys.load_key(tmp_path / "m") == MASTER
    assert keys.load_key(tmp_path / "t") == tk
    (tmp_path / "t").chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        keys.load_key(tmp_path / "t")
