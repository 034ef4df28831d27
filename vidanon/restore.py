"""Restore chosen people of an anonymized video with a key (docs/design.md, "Restoring").

Every face of the chosen tracks is re-cropped with the affine its manifest stores (no re-detection),
run through the same core with the same key (the flip is an involution), and pasted back; everything
else is copied through. Steps, schedule, mask feathering and encoding come from the manifest, never
from the model folder or today's defaults, so an archive restores as it was made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from . import keys, stages
from .align import restore_crop
from .atomic import claim
from .binding import check_binding
from .config import Config, restore_config
from .errors import InputError
from .manifest import Manifest, manifest_path, open_tracks, read_manifest, unseal_mask
from .masks import paste_alpha
from .progress import progress_bar
from .records import Face
from .sealed import SidecarIndex, SidecarReader, open_original, restore_into
from .video import Frame, VideoInfo, VideoWriter, probe, read_frames

log = logging.getLogger(__name__)

METHODS = ("auto", "sealed", "flip")
# A restored video's faces are the evidence: a lossy one is encoded at crf <= 8, not the release's 17. Measured
# (tests/test_exact_restore.py), the put-back pixels of a 29 px face keep 39.8 dB at crf 10 and 40.7 dB at crf 8;
# re-encoding the input itself at crf 17 keeps 39.8 dB in a 30 px face box, at crf 8 42.0 dB (files ≈ 2× larger).
RESTORED_CRF = 8


def check_output(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse an output that would replace the input, or an existing file unless `overwrite`."""
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the output would overwrite the input; choose another output")
    if dst.exists() and not overwrite:
        raise InputError(f"{dst}: already exists (use --overwrite to replace it)")
    if dst.exists() and not dst.is_file():
        raise InputError(f"{dst}: exists and is not a file")


def check_video(src: Path, info: VideoInfo, man: Manifest) -> None:
    made = man.header.video
    if (info.width, info.height) != (made.width, made.height) or info.frames not in (None, made.frames):
        raise InputError(f"{src}: is {info.width}x{info.height}, {info.frames or '?'} frames, but its manifest describes "
                         f"{made.width}x{made.height}, {made.frames} frames: the video was re-encoded, resized or "
                         "cut after anonymization, or the manifest belongs to another video")


@dataclass(frozen=True)
class Restoring:
    """What re-cropping a face needs to know about the run."""

    video_id: bytes
    track_keys: dict[int, bytes]
    signs: dict[int, np.ndarray]
    latent_hw: tuple[int, int]
    feather: int


def restore_method(method: str, man: Manifest, manifest: Path) -> SidecarReader | None:
    """The sealed originals to restore from (checked whole against the manifest), or None for the key flip.

    auto: sealed originals where the video has them and its sidecar is at hand, else the key flip (the
    only method when a recipient has the video and manifest alone)."""
    if method not in METHODS:
        raise InputError(f"restore method must be one of {', '.join(METHODS)}, not {method!r}")
    sealed = man.header.originals
    if method == "flip":
        return None
    if sealed is None:
        if method == "sealed":
            raise InputError(f"{manifest}: this video was anonymized without sealed originals (--no-seal or an older "
                             "vidanon): restore with --method flip")
        return None
    path = manifest.parent / sealed.file
    if method == "auto" and not path.exists():
        log.warning("%s: not found; restoring by the key flip, which is approximate", path)
        return None
    return SidecarReader(path, SidecarIndex(sealed.size, sealed.sha256))


def restore_sealed(reader: SidecarReader, video_id: bytes, tkeys: dict[int, bytes], src: Path, info: VideoInfo,
                   by_frame: dict[int, list[tuple[int, Face]]], writer: VideoWriter, bar) -> tuple[int, int]:
    """Replace every pixel of the chosen faces that anonymizing changed by the original: no model, no loss."""
    frames = faces = 0
    for frame in read_frames(src, info):
        for tid, face in by_frame.pop(frame.index, []):
            if face.original is None:
                raise InputError(f"{reader.path}: track {tid}, frame {face.frame} has no sealed original in the manifest")
            blob = reader.read(face.original.offset, face.original.length)
            restore_into(frame.rgb, open_original(tkeys[tid], video_id, tid, face.frame, blob))
            faces += 1
        writer.write(frame.rgb, frame.pts)
        frames += 1
        bar.update()
    return frames, faces


def prepare_faces(run: Restoring, frame: Frame, faces: list[tuple[int, Face]]) -> list[stages.FaceJob]:
    """Unseal the mask and re-crop every chosen face of one frame (in worker threads; nothing shared is changed)."""
    jobs = []
    for tid, face in faces:
        mask = unseal_mask(run.track_keys[tid], run.video_id, tid, face.frame, face.sealed, run.latent_hw)
        affine = face.affine_array
        alpha = paste_alpha(mask, feather=run.feather)
        jobs.append(stages.FaceJob(tid, run.signs[tid], affine, restore_crop(frame.rgb, affine, alpha), mask, alpha))
    return jobs


def deanonymize_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: bytes | keys.TrackKey | str | os.PathLike,
    tracks: Sequence[int] | None = None,
    *,
    manifest: str | os.PathLike | None = None,
    config: Config | None = None,
    model=None,
    model_name: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    compile: bool | None = None,
    progress: bool = True,
    overwrite: bool = False,
    method: str = "auto",
):
    """Restore the chosen tracks (all, with a master key) of an anonymized video into `dst`.

    method: "sealed" puts back the original pixels sealed beside the manifest (exact: bit for bit where the
    output is lossless); "flip" runs the paper's key flip (approximate; needs only the video, manifest and
    key); "auto" (default) uses the sealed originals when the video has them. Result.method says which ran.

    Settings: those the manifest recorded, with this machine's `model_name`, `device`, `batch_size`, `compile`
    where given (or a whole `config`); the steps, schedule and encoding are always the manifest's.
    key: master key bytes, a keys.TrackKey, or the path of a master or track key file. Checked before
    anything is written: the output (an existing `dst` is refused unless `overwrite`), the key (a wrong
    key fails with WrongKeyError, an altered manifest with ManifestAlteredError) and the video. The
    output is private (mode 0600) from its creation. Unselected faces stay anonymized.
    """
    t0 = time.monotonic()
    src, dst = Path(src), Path(dst)
    if isinstance(key, (str, os.PathLike)):
        key = keys.load_key(key)
    info = probe(src)
    mpath = Path(manifest or manifest_path(src))
    man = read_manifest(mpath)
    check_output(src, dst, overwrite)
    tkeys = open_tracks(man, key, tracks)
    check_video(src, info, man)
    reader = restore_method(method, man, mpath)  # a damaged or foreign sidecar is refused before any writing
    check_binding(src, man, tkeys, "flip" if reader is None else "sealed")  # another video or anonymization: refused
    stages.check_output_folder(dst.parent)
    with contextlib.ExitStack() as stack:
        if reader is not None:
            stack.enter_context(reader)  # checks the sidecar whole
        stages.make_output_folder(dst.parent)
        if not stack.enter_context(claim(dst)):
            raise InputError(f"{dst}: another vidanon run is writing this output; choose another output or wait")
        check_output(src, dst, overwrite)  # again, under the lock: another run may have finished it meanwhile
        if reader is not None:
            restore = partial(restore_sealed, reader, man.video_id, tkeys)
        else:
            restore = flip_restorer(src, man, tkeys, config or restore_config(
                man.header.config, model=model_name, device=device, batch_size=batch_size, compile=compile), model)
        by_frame = man.faces_by_frame([t for t in tkeys if man.track(t).kept is None])  # kept tracks were never changed
        h = man.header
        enc = h.encoder  # encoded as the anonymized video was (lossless stays lossless), a lossy one at crf <= 8
        crf = Config().crf if enc.crf is None else min(enc.crf, RESTORED_CRF)
        with VideoWriter(info, dst, lossless=enc.lossless, crf=crf, preset=enc.preset, private=True,
                         replace=overwrite) as writer, \
                progress_bar(info.frames, f"restore {src.name}", "frame", progress, leave=False) as bar:
            frames, faces = restore(src, info, by_frame, writer, bar)
            if frames != h.video.frames:  # containers that store no frame count are checked here, before the rename
                raise InputError(f"{src}: has {frames} frames but its manifest describes {h.video.frames}: "
                                 "the video was cut or re-encoded after anonymization")
    return stages.Result(src, dst, None, frames, faces, len(tkeys), time.monotonic() - t0,
                         method="flip" if reader is None else "sealed")


def flip_restorer(src: Path, man: Manifest, tkeys: dict[int, bytes], cfg: Config, model=None):
    """The paper's key flip (eqs. 6-7) as a restore function: loads the model and rebuilds the recorded schedule."""
    # torch only once the checks above have passed: a wrong key or a wrong file is answered at once.
    from .diffusion import make_schedule
    from .models import latent_numel, load_model

    model = model or load_model(cfg.model, device=cfg.device, compile=cfg.compile)
    stages.check_model(model)
    h = man.header
    if model.digest != h.model.digest:
        log.warning("%s was made with model weights %s, restoring with %s: faces will not come back exactly",
                    src, h.model.digest, model.digest)
    schedule = make_schedule(h.scheduler, h.steps)  # the recorded schedule, never the model folder's
    n = latent_numel(model)
    run = Restoring(man.video_id, tkeys, {t: keys.flip_signs(tk, n) for t, tk in tkeys.items()}, h.latent_hw, h.feather)
    batch = stages.batch_size(cfg.batch_size, model)

    def restore(src: Path, info: VideoInfo, by_frame, writer: VideoWriter, bar) -> tuple[int, int]:
        frames = faces = 0
        work = ((f, by_frame.pop(f.index, [])) for f in read_frames(src, info))
        written = stages.process(work, partial(prepare_faces, run), model, schedule, batch, writer)
        with contextlib.closing(written):  # however this ends, every stage thread stops
            for count, jobs in written:
                frames, faces = frames + count, faces + len(jobs)
                bar.update(count)
        return frames, faces

    return restore
