"""What ties a manifest to its video (docs/formats.md, "binding"; docs/reliability.md).

Two ties, both written by anonymize and checked by restore before anything is written:

- the container tag `vidanon_video_id`: the video's own id (hex) in its container metadata. It is lost
  when a tool strips metadata, but when it is there and differs from the manifest's video_id, the
  manifest belongs to another video, or to another anonymization of the same recording;
- per face a fingerprint of the face **as written** (anonymized, never the original): its box on the
  frame reduced to 16×16 luminance levels (`luma-16x16-v1`). It survives re-encoding, and two anonymizations
  of one recording differ in it, because their faces do. The threshold is measured
  (benchmarks/bench_binding.py, docs/benchmarks.md "Binding").

The bytes of encoded packets read back differ from those handed to the muxer (H.264 in MP4/MKV), so no
hash of the file or its packets can serve as the binding.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import InputError
from .records import Binding, Face

log = logging.getLogger(__name__)

TAG = "vidanon_video_id"
KIND = "luma-16x16-v1"
SIZE = 16
BINDING = Binding(TAG, KIND)
CHECKED_FACES = 32  # the first faces (in frame order) of the chosen tracks whose fingerprints are compared
# Median RMS distance (luma levels, 0-255) of the checked faces' fingerprints, measured on the closed-form test
# model at 10 steps (docs/benchmarks.md "Binding"): the video as written 1.5 (crf 17) and 0 (lossless);
# re-encoded at crf 18-28 2.7-3.5, crf 35 5.7, crf 40 8.8; another anonymization of the same input >= 4.5
# (its noise faces differ only in fine detail; realistic faces differ more); another recording 55.
REENCODED = 2.0  # above: the pixels were re-encoded: restored, with a warning
MISMATCH = 4.0  # above, when the container tag is gone: another anonymization or another video: refused
MISMATCH_TAGGED = 20.0  # above, even with the right container tag: not the video the manifest describes: refused


def fingerprint(rgb: np.ndarray, box: Iterable[float]) -> str:
    """The face's box on the frame `rgb` as 16×16 luminance levels (area average), base64 of 256 bytes."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = min(max(int(np.floor(x0)), 0), w - 1), min(max(int(np.floor(y0)), 0), h - 1)
    x1, y1 = max(min(int(np.ceil(x1)), w), x0 + 1), max(min(int(np.ceil(y1)), h), y0 + 1)
    region = rgb[y0:y1, x0:x1].astype(np.float32)
    luma = region @ np.array([0.299, 0.587, 0.114], np.float32)
    small = cv2.resize(luma, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return base64.b64encode(np.clip(np.rint(small), 0, 255).astype(np.uint8).tobytes()).decode("ascii")


def distance(a: str, b: str) -> float:
    """RMS difference of two fingerprints, in luma levels."""
    x, y = (np.frombuffer(base64.b64decode(v), np.uint8).astype(np.float32) for v in (a, b))
    if x.shape != y.shape:
        return float("inf")
    return float(np.sqrt(np.mean((x - y) ** 2)))


def container_tag(path: str | Path) -> str | None:
    """The video_id the container carries (hex), or None when its metadata holds none (stripped)."""
    with av.open(str(path), metadata_errors="replace") as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}
    return tags.get(TAG)


def faces_distance(path: str | Path, faces: list[Face]) -> float:
    """Median fingerprint distance of `faces` (in frame order) against the video `path`, decoding it only up to
    the last of them."""
    from .video import read_frames

    wanted: dict[int, list[Face]] = {}
    for face in faces:
        wanted.setdefault(face.frame, []).append(face)
    got = []
    frames = read_frames(path)
    try:
        for frame in frames:
            for face in wanted.pop(frame.index, []):
                got.append(distance(face.fingerprint, fingerprint(frame.rgb, face.box)))
            if not wanted:
                break
    finally:
        frames.close()
    got += [float("inf")] * sum(map(len, wanted.values()))  # faces beyond the video's end
    return float(np.median(got)) if got else 0.0


def check_binding(src: Path, man, track_ids: Iterable[int], method: str) -> str | None:
    """Refuse a video that is not the one `man` (manifest.Manifest) describes; say so when it was re-encoded
    or its metadata stripped. Returns the warning given, or None. `method`: "sealed" or "flip"."""
    h = man.header
    if h.binding is None:
        return None  # made before the binding (manifest version 1, or 2 written by vidanon 0.1 before it)
    tag = container_tag(src)
    if tag is not None and tag.lower() != h.video_id.hex():
        raise InputError(f"{src}: this video carries video id {tag[:8]}… but its manifest describes "
                         f"{h.video_id.hex()[:8]}…: the manifest belongs to another video, or to another "
                         "anonymization of the same recording; nothing was restored")
    if h.binding.fingerprint != KIND:
        raise InputError(f"{src}: its manifest's face fingerprints are of kind {h.binding.fingerprint!r}, which this "
                         "vidanon does not know")
    faces = sorted((f for tid in track_ids for f in man.track(tid).faces if f.fingerprint), key=lambda f: f.frame)
    d = faces_distance(src, faces[:CHECKED_FACES])
    limit = MISMATCH if tag is None else MISMATCH_TAGGED  # the right tag already names the video
    if d > limit:
        raise InputError(f"{src}: its faces do not match its manifest (fingerprint distance {d:.1f} > {limit}): "
                         "the video or the manifest belongs to another video or another anonymization; "
                         "nothing was restored")
    if tag is None or d > REENCODED:
        what = "its metadata was stripped" if tag is None else "it was re-encoded"
        how = ("the sealed originals are put back exactly, the rest of each frame keeps the re-encoding's loss"
               if method == "sealed" else "key-flip restoration will be approximate")
        warning = (f"{src}: {what} after anonymization (fingerprint distance {d:.1f}); its faces still match the "
                   f"manifest, so restoring, but {how}")
        log.warning(warning)
        return warning
    return None
