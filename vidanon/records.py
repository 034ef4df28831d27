"""The manifest's records as typed, frozen values: a header, its tracks, their faces (docs/formats.md).

`from_json` parses and validates what a manifest file holds (version 1 or 2); `to_json` gives the
version-2 form the writer stores. Fields that version 1 lacks, and those that later features fill in
(the sealed-originals index, the binding to the video, identities, kept tracks), are optional: None
when absent, and left out of the JSON. MACs are never computed from these records but from the JSON
as it was read (manifest.py), so re-serialising can never break the verification of a stored manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

FORMAT = "vidanon-manifest"
VERSION = 2  # written; 1 and 2 are read
READABLE = (1, 2)


class Malformed(ValueError):
    """A field is missing or of the wrong kind (the reader turns it into one InputError line)."""


def _get(data: dict, key: str, kind, optional: bool = False):
    if not isinstance(data, dict):
        raise Malformed(f"expected an object where {key!r} should be")
    value = data.get(key)
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Malformed(f"{key!r} is missing or not {getattr(kind, '__name__', kind)}")
    return value


def _ints(values, n: int | None = None) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise Malformed("expected a list of whole numbers")
    if n is not None and len(values) != n:
        raise Malformed(f"expected {n} numbers")
    return tuple(values)


def _floats(values, n: int) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != n or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise Malformed(f"expected {n} numbers")
    return tuple(float(v) for v in values)


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


# --- faces and tracks -------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedRef:
    """Where a face's sealed original pixels lie in the sidecar (sealed.py)."""

    offset: int
    length: int


@dataclass(frozen=True)
class Face:
    frame: int  # 0-based decode-order index
    pts: int | None  # in the video stream's time_base
    affine: tuple[tuple[float, float, float], tuple[float, float, float]]  # frame -> 256² crop
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    interpolated: bool  # added by the tracker (gap fill, extension)
    sealed: str | None  # base64 latent mask sealed under the track key; None only for a kept track's face
    fingerprint: str | None = None  # v2, binding to the video: base64 luminance thumbnail of the face as written
    original: SealedRef | None = None  # v2, sealed originals: this face's piece of the sidecar

    @property
    def affine_array(self) -> np.ndarray:
        return np.array(self.affine, dtype=np.float64)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def to_json(self) -> dict:
        original = None if self.original is None else {"offset": self.original.offset, "length": self.original.length}
        return {"frame": self.frame, "pts": self.pts, "affine": [list(row) for row in self.affine], "box": list(self.box),
                "score": self.score, "interpolated": self.interpolated,
                **_drop_none({"sealed": self.sealed, "fingerprint": self.fingerprint, "original": original})}

    @classmethod
    def from_json(cls, d: dict) -> Face:
        affine = d.get("affine")
        if not isinstance(affine, list) or len(affine) != 2:
            raise Malformed("'affine' must be 2 rows of 3 numbers")
        original = _get(d, "original", dict, optional=True)
        return cls(
            frame=_get(d, "frame", int), pts=_get(d, "pts", int, optional=True),
            affine=(_floats(affine[0], 3), _floats(affine[1], 3)), box=_floats(d.get("box"), 4),
            score=_get(d, "score", float), interpolated=bool(d.get("interpolated", False)),
            sealed=_get(d, "sealed", str, optional=True), fingerprint=_get(d, "fingerprint", str, optional=True),
            original=None if original is None else SealedRef(_get(original, "offset", int), _get(original, "length", int)),
        )


@dataclass(frozen=True)
class Kept:
    """A track left visible on purpose (anonymize --keep-photo): how close it was to the photo."""

    distance: float


@dataclass(frozen=True)
class Track:
    id: int
    first_frame: int
    last_frame: int
    first_pts: int | None
    last_pts: int | None
    faces: tuple[Face, ...]
    mac: str  # HMAC under the track key of the header and this track (see manifest.py)
    key_check: str | None = None  # v2: key check value of the track key
    identity: str | None = None  # v2, identities: base64 embedding sealed under the track key
    kept: Kept | None = None  # v2, kept tracks

    def summary_json(self) -> dict:
        """Every field but the faces and the MAC (the writer streams the faces and computes the MAC)."""
        return _drop_none({"id": self.id, "first_frame": self.first_frame, "last_frame": self.last_frame,
                           "first_pts": self.first_pts, "last_pts": self.last_pts, "key_check": self.key_check,
                           "identity": self.identity,
                           "kept": None if self.kept is None else {"distance": self.kept.distance}})

    @classmethod
    def from_json(cls, d: dict) -> Track:
        kept = _get(d, "kept", dict, optional=True)
        faces = tuple(Face.from_json(f) for f in _get(d, "faces", list))
        if kept is None and any(f.sealed is None for f in faces):
            raise Malformed("a face of an anonymized track has no sealed data")
        return cls(
            id=_get(d, "id", int), first_frame=_get(d, "first_frame", int), last_frame=_get(d, "last_frame", int),
            first_pts=_get(d, "first_pts", int, optional=True), last_pts=_get(d, "last_pts", int, optional=True),
            faces=faces, mac=_get(d, "mac", str), key_check=_get(d, "key_check", str, optional=True),
            identity=_get(d, "identity", str, optional=True),
            kept=None if kept is None else Kept(_get(kept, "distance", float)),
        )


# --- the header -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoFacts:
    width: int
    height: int
    frames: int
    time_base: Fraction
    fps: float

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "frames": self.frames,
                "time_base": f"{self.time_base.numerator}/{self.time_base.denominator}", "fps": self.fps}

    @classmethod
    def from_json(cls, d: dict) -> VideoFacts:
        try:
            time_base = Fraction(_get(d, "time_base", str))
        except (ValueError, ZeroDivisionError):
            raise Malformed("'time_base' is not a fraction") from None
        return cls(_get(d, "width", int), _get(d, "height", int), _get(d, "frames", int), time_base, _get(d, "fps", float))


@dataclass(frozen=True)
class ModelFacts:
    name: str
    digest: str  # sha256 of the weight files ("closed-form" for the test model)
    latent_shape: tuple[int, int, int]
    image_shape: tuple[int, int, int]

    @classmethod
    def from_json(cls, d: dict) -> ModelFacts:
        return cls(_get(d, "name", str), _get(d, "digest", str), _ints(d.get("latent_shape"), 3),
                   _ints(d.get("image_shape"), 3))


@dataclass(frozen=True)
class EncoderFacts:
    lossless: bool
    crf: int | None  # None when lossless
    preset: str


@dataclass(frozen=True)
class KeyCheck:
    """v2: the master key's check value, salted per video (keys.key_check)."""

    salt: bytes
    value: str


@dataclass(frozen=True)
class Binding:
    """v2, binding to the video (binding.py): the container tag that carries the video_id, and the
    kind of per-face fingerprint (Face.fingerprint) stored."""

    container_tag: str
    fingerprint: str


@dataclass(frozen=True)
class SealedFile:
    """v2, sealed originals: the sidecar beside the manifest (sealed.py), and how to check it."""

    file: str
    size: int
    sha256: str
    encoding: str


@dataclass(frozen=True)
class IdentityScheme:
    """v2, identities (--index-identities, --keep-photo): the recognizer whose embeddings Track.identity seals,
    and its same-person distance."""

    recognizer: str
    threshold: float


@dataclass(frozen=True)
class Header:
    version: int
    vidanon_version: str
    video_id: bytes
    video: VideoFacts
    model: ModelFacts
    steps: int
    scheduler: dict  # the diffusers DDIM scheduler settings used: restoring rebuilds the schedule from these
    crop_size: int
    alignment: str
    mask_methods: tuple[str, ...]
    feather: int
    encoder: EncoderFacts
    key_derivation: dict  # label of each derivation used, for the record
    config: dict  # the run's resolved settings, as recorded (a later vidanon may have added keys)
    key_check: KeyCheck | None = None  # v2
    track_ids: tuple[int, ...] | None = None  # v2: the commitment to the track list (count = len)
    header_mac: str | None = None  # v2: HMAC under the master key of everything but the tracks
    binding: Binding | None = None  # v2, later
    originals: SealedFile | None = None  # v2, later
    identity: IdentityScheme | None = None  # v2, later

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.model.latent_shape[1], self.model.latent_shape[2]

    def to_json(self) -> dict:
        """The version-2 JSON of the header (without "tracks"; "header_mac" only once it is set)."""
        enc = self.encoder
        optional = {
            "key_check": None if self.key_check is None else {"salt": self.key_check.salt.hex(), "value": self.key_check.value},
            "track_list": None if self.track_ids is None else {"count": len(self.track_ids), "ids": list(self.track_ids)},
            "header_mac": self.header_mac,
            "binding": None if self.binding is None else vars(self.binding),
            "originals": None if self.originals is None else vars(self.originals),
            "identity": None if self.identity is None else vars(self.identity),
        }
        return {
            "format": FORMAT, "version": VERSION, "vidanon_version": self.vidanon_version,
            "video_id": self.video_id.hex(), "video": self.video.to_json(), "model": {
                "name": self.model.name, "digest": self.model.digest, "latent_shape": list(self.model.latent_shape),
                "image_shape": list(self.model.image_shape)},
            "diffusion": {"steps": self.steps, "sampler": "ddim-eta0", "scheduler": self.scheduler},
            "crop": {"size": self.crop_size, "alignment": self.alignment},
            "mask": {"methods": list(self.mask_methods), "feather": self.feather},
            "encoder": {"lossless": enc.lossless, "crf": enc.crf, "preset": enc.preset},
            "key_derivation": self.key_derivation, "config": self.config, **_drop_none(optional),
        }

    @classmethod
    def from_json(cls, d: dict) -> Header:
        try:
            video_id = bytes.fromhex(_get(d, "video_id", str))
        except ValueError:
            raise Malformed("'video_id' is not hex") from None
        if len(video_id) != 16:
            raise Malformed("'video_id' is not 16 bytes")
        diffusion, mask, enc = _get(d, "diffusion", dict), _get(d, "mask", dict), _get(d, "encoder", dict)
        crop = _get(d, "crop", dict)
        kc, tl = _get(d, "key_check", dict, optional=True), _get(d, "track_list", dict, optional=True)
        track_ids = None
        if tl is not None:
            track_ids = _ints(tl.get("ids"))
            if _get(tl, "count", int) != len(track_ids):
                raise Malformed("'track_list' count and ids disagree")
        parts = {name: _get(d, name, dict, optional=True) for name in ("binding", "originals", "identity")}
        return cls(
            version=_get(d, "version", int), vidanon_version=_get(d, "vidanon_version", str), video_id=video_id,
            video=VideoFacts.from_json(_get(d, "video", dict)), model=ModelFacts.from_json(_get(d, "model", dict)),
            steps=_get(diffusion, "steps", int), scheduler=_get(diffusion, "scheduler", dict),
            crop_size=_get(crop, "size", int), alignment=_get(crop, "alignment", str),
            mask_methods=tuple(_get(mask, "methods", list)), feather=_get(mask, "feather", int),
            encoder=EncoderFacts(_get(enc, "lossless", bool), _get(enc, "crf", int, optional=True), _get(enc, "preset", str)),
            key_derivation=_get(d, "key_derivation", dict), config=_get(d, "config", dict),
            key_check=None if kc is None else KeyCheck(bytes.fromhex(_get(kc, "salt", str)), _get(kc, "value", str)),
            track_ids=track_ids, header_mac=_get(d, "header_mac", str, optional=True),
            binding=None if parts["binding"] is None else Binding(**parts["binding"]),
            originals=None if parts["originals"] is None else SealedFile(**parts["originals"]),
            identity=None if parts["identity"] is None else IdentityScheme(**parts["identity"]),
        )
