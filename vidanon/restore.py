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
from tqdm import tqdm

from . import keys, stages
from .align import restore_crop
from .config import Config, restore_config
from .errors import InputError
from .manifest import Manifest, manifest_path, open_tracks, read_manifest, unseal_mask
from .masks import paste_alpha
from .records import Face
from .video import Frame, VideoInfo, VideoWriter, probe, read_frames

log = logging.getLogger(__name__)


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
):
    """Restore the chosen tracks (all, with a master key) of an anonymized video into `dst`.

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
    man = read_manifest(manifest or manifest_path(src))
    check_output(src, dst, overwrite)
    tkeys = open_tracks(man, key, tracks)
    check_video(src, info, man)
    cfg = config or restore_config(man.header.config, model=model_name, device=device, batch_size=batch_size,
                                   compile=compile)
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
    by_frame = man.faces_by_frame(tkeys)
    stages.check_output_folder(dst.parent)
    stages.make_output_folder(dst.parent)
    frames = faces = 0
    enc = h.encoder  # encoded as the anonymized video was (lossless stays lossless)
    crf = cfg.crf if enc.crf is None else enc.crf
    with VideoWriter(info, dst, lossless=enc.lossless, crf=crf, preset=enc.preset, private=True) as writer, \
            tqdm(total=info.frames, desc=f"restore {src.name}", unit="frame", disable=not progress, leave=False) as bar:
        work = ((f, by_frame.pop(f.index, [])) for f in read_frames(src, info))
        batch = stages.batch_size(cfg.batch_size, model)
        written = stages.process(work, partial(prepare_faces, run), model, schedule, batch, writer)
        with contextlib.closing(written):  # however this ends, every stage thread stops
            for count, jobs in written:
                frames, faces = frames + count, faces + len(jobs)
                bar.update(count)
        if frames != h.video.frames:  # containers that store no frame count are checked here, before the rename
            raise InputError(f"{src}: has {frames} frames but its manifest describes {h.video.frames}: "
                             "the video was cut or re-encoded after anonymization")
    return stages.Result(src, dst, None, frames, faces, len(tkeys), time.monotonic() - t0)
