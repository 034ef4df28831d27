"""Anonymize every face of a video (docs/design.md, "Data flow").

The file is decoded twice at once. Pass 1 detects faces in every frame and tracks them, running
ahead: the tracker hands a frame on once no later frame can change it (a few dozen frames behind),
so gaps are filled from both sides and every detection keeps a track. Pass 2 follows behind it
through the stages of stages.py: crop and mask every face, run the core in batches that gather
faces across frames and tracks, paste back, encode. The manifest is written last.

`detect_upright` is looked up here at call time, so a benchmark can time detection.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from . import binding, keys, stages
from .align import crop_face, face_affine, landmarks_in_crop, paste_weights
from .config import Config
from .detect import Detections, detect_upright, detector_input, make_detector, split_weak
from .diffusion import make_schedule
from .errors import InputError, VidanonError
from .identity import BestFaces, Recognizer, closest, load_recognizer, photo_embedding, seal_identity
from .manifest import FaceLog, build_header, manifest_path, seal_mask, write_manifest
from .masks import FaceParser, face_mask, face_parser, paste_alpha
from .models import latent_numel, load_model
from .progress import progress_bar
from .records import Face, IdentityScheme, Kept, SealedFile, SealedRef
from .sealed import ENCODING, SidecarWriter, originals, seal_original, sidecar_path
from .track import Tracker, TrackerConfig
from .video import Frame, VideoInfo, VideoWriter, probe_input, read_frames


def master_key(key: bytes | str | os.PathLike) -> bytes:
    """The master key from bytes or from a key file."""
    if isinstance(key, bytes):
        if len(key) not in keys.MASTER_SIZES:
            raise VidanonError("master key must be 16 or 32 bytes")
        return key
    return keys.load_master_key(key)


def detector_for(cfg: Config):
    """The face detector the settings ask for (built once per run and shared by its files)."""
    floor = cfg.floor if cfg.threshold is None else min(cfg.floor, cfg.threshold)  # a threshold below it: no weak ones
    return make_detector(cfg.detector, threshold=cfg.threshold, device=cfg.device, min_face=cfg.min_face, floor=floor)


def parser_for(cfg: Config) -> FaceParser | None:
    """The face parser for `cfg.mask` (None: landmark masks)."""
    if cfg.mask == "landmarks":
        return None
    parser = face_parser(cfg.parser_weights, cfg.mask == "parser", cfg.device)
    if cfg.mask == "parser" and parser is None:
        raise InputError("mask 'parser' asked for but no face-parser weights are available; use --mask landmarks or --parser-weights")
    return parser


def detect_and_track(path: Path, info: VideoInfo, cfg: Config, detector, progress: bool = True) -> Iterator[Detections]:
    """Pass 1: every frame's faces, each with a track id (plus the faces the tracker adds), in frame order,
    each as soon as it is final: a bounded number of frames behind detection (see track.Tracker)."""
    tracker = Tracker(TrackerConfig(iou_threshold=cfg.iou_threshold, max_gap=cfg.max_gap, extend=cfg.extend,
                                    bridge=cfg.bridge), frame_size=(info.width, info.height))
    threshold = getattr(detector, "threshold", 0.0)  # below it: weak candidates (a detector built with a floor)
    frames = stages.prefetch(read_frames(path, info), depth=4)
    with progress_bar(info.frames, f"detect {path.name}", "frame", progress, leave=False) as bar, \
            contextlib.closing(frames):
        for frame in frames:
            with stages.CPU_BUSY:
                dets = detect_upright(detector, detector_input(frame.rgb, cfg.detect_blur), info.rotation)
            yield from tracker.push(*split_weak(dets, threshold))
            bar.update()
    yield from tracker.finish()


def paired(frames: Iterator[Frame], tracked: Iterator[Detections]) -> Iterator[tuple[Frame, Detections]]:
    """Pass 2's frames with pass 1's faces. Both passes decode the same file, so they agree on the frame
    count; if they ever did not, this fails the file rather than pass a frame on without its faces."""
    with contextlib.closing(frames), contextlib.closing(tracked):
        for frame, dets in itertools.zip_longest(frames, tracked):
            if frame is None or dets is None:
                raise VidanonError("the detection pass and the anonymizing pass decoded different frame counts")
            yield frame, dets


@dataclass(frozen=True)
class Anonymizing:
    """What preparing a face needs to know about the run."""

    master: bytes
    video_id: bytes
    latent_numel: int
    parser: FaceParser | None
    feather: int
    seal: bool  # seal each face's original pixels (sealed.py)
    kept: frozenset[int] = frozenset()  # tracks left visible (--keep-photo): not anonymized, nothing sealed
    best: BestFaces | None = None  # each track's best original faces, for its identity (--index-identities)
    visible: dict | None = None  # frame index -> [(track id, Face)] of the kept tracks, for the manifest


@dataclass(frozen=True)
class Prepared:
    """What anonymizing keeps of a face for the manifest (and, sealing, for the sidecar)."""

    face: Face
    mask_method: str
    original: bytes | None = None  # the face's original pixels, sealed under its track key


def prepare_faces(run: Anonymizing, frame: Frame, dets: Detections) -> list[stages.FaceJob]:
    """Crop, mask and seal every face of one frame (called for several frames at once, in worker threads).
    Track keys are derived per face (an HKDF, microseconds): nothing is shared between threads."""
    jobs = []
    for i in range(len(dets)):
        tid = int(dets.track_id[i])
        if run.best is not None:
            run.best.offer(tid, frame.rgb, dets, i)
        affine, lm = face_affine(dets.landmarks[i], dets.xyxy[i])
        if tid in run.kept:  # left as it is; the manifest still says where it was
            run.visible.setdefault(frame.index, []).append((tid, face_record(frame, dets, i, affine, None)))
            continue
        tkey = keys.track_key(run.master, run.video_id, tid)
        crop = crop_face(frame.rgb, affine)
        mask, method = face_mask(crop, landmarks_in_crop(lm, affine), run.parser)
        face = face_record(frame, dets, i, affine, seal_mask(tkey, run.video_id, tid, frame.index, mask))
        jobs.append(stages.FaceJob(tid, keys.flip_signs(tkey, run.latent_numel), affine, crop.astype(np.float32), mask,
                                   paste_alpha(mask, feather=run.feather), Prepared(face, method)))
    return seal_originals(run, frame, jobs) if run.seal else jobs


def face_record(frame: Frame, dets: Detections, i: int, affine: np.ndarray, sealed: str | None) -> Face:
    return Face(frame=frame.index, pts=frame.pts, affine=tuple(tuple(row) for row in affine.tolist()),
                box=tuple(round(float(v), 2) for v in dets.xyxy[i]), score=round(float(dets.score[i]), 4),
                interpolated=bool(dets.interpolated[i]), sealed=sealed)


def decide_keeps(src: Path, info: VideoInfo, cfg: Config, detector, recognizer: Recognizer, photos: list[np.ndarray],
                 progress: bool) -> tuple[list[Detections], dict[int, np.ndarray], dict[int, float]]:
    """--keep-photo: a track must be decided before any of its faces is written, so a first pass reads the
    whole video (detect and track, then each track's best faces). Returns every frame's faces, each track's
    embedding, and the tracks to keep with their distance to the closest photo: those within the
    recognizer's keep threshold, stricter than its verification threshold (a false match leaves a bystander
    visible)."""
    tracked = list(detect_and_track(src, info, cfg, detector, progress))
    best = BestFaces()
    for frame, dets in paired(read_frames(src, info), (d for d in tracked)):
        for i in range(len(dets)):
            best.offer(int(dets.track_id[i]), frame.rgb, dets, i)
    embeddings = best.embeddings(recognizer)
    distances = {tid: closest(e, photos, recognizer) for tid, e in embeddings.items()}
    return tracked, embeddings, {tid: d for tid, d in distances.items() if d <= recognizer.keep_threshold}


def fingerprint_faces(rgb: np.ndarray, jobs: list[stages.FaceJob]) -> None:
    """Each face's fingerprint as written (binding.py): the anonymized pixels handed to the encoder."""
    for job in jobs:
        face = job.record.face
        job.record = replace(job.record, face=replace(face, fingerprint=binding.fingerprint(rgb, face.box)))


def seal_originals(run: Anonymizing, frame: Frame, jobs: list[stages.FaceJob]) -> list[stages.FaceJob]:
    """Seal each face's own original pixels: those its paste will change, less those another face of this
    frame weighs more (sealed.originals), so a track key never opens another person's pixels."""
    prints = [paste_weights(job.affine, job.alpha, frame.rgb.shape[:2]) for job in jobs]
    for job, original in zip(jobs, originals(frame.rgb, prints, [job.track for job in jobs])):
        tkey = keys.track_key(run.master, run.video_id, job.track)
        job.record = replace(job.record, original=seal_original(tkey, run.video_id, job.track, frame.index, original))
    return jobs


def anonymize_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: bytes | str | os.PathLike,
    config: Config = Config(),
    *,
    model=None,
    detector=None,
    progress: bool = True,
    keep_photos: Sequence[str | os.PathLike] = (),
    still_images: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> stages.Result:
    """Anonymize every face of `src` into `dst`, with the manifest `<dst stem>.vidanon.json` beside it.

    key: the master key (bytes) or the path of a key file. `model`/`detector` may be passed in to
    reuse them across files. `keep_photos`: tracks matching any of these photos stay visible (identity.py;
    costs a first pass over the video). Everything is checked before anything is written, and nothing is written
    under `dst` or its manifest's name unless the run completes. A still image (a PNG named .mp4) is refused
    unless `still_images`: then it is anonymized as a one-frame video.
    `on_progress(frames, faces)` is called as each window of frames is written (what it wrote since the
    last call); an exception it raises (KeyboardInterrupt to stop) stops the run like any other.
    """
    t0 = time.monotonic()
    src, dst, cfg = Path(src), Path(dst), config
    master = master_key(key)
    info = check_source(src, dst, still_images)
    model = model or load_model(cfg.model, device=cfg.device, compile=cfg.compile)
    stages.check_model(model)
    parser = parser_for(cfg)
    detector = detector or detector_for(cfg)
    if model.device.type == "cuda" and getattr(detector, "on_gpu", True) is False:
        stages.warn_once("face detection runs on the CPU while the diffusion core runs on the GPU, and will likely hold "
                         "it back: install onnxruntime-gpu (pip install 'vidanon[gpu]') for detection on the GPU")
    recognizer = load_recognizer(cfg.recognizer) if cfg.index_identities or keep_photos else None
    photos = [photo_embedding(p, recognizer, detector) for p in keep_photos]
    schedule = make_schedule(model.scheduler_config, cfg.steps)  # once per run
    stages.check_output_folder(dst.parent)

    stages.make_output_folder(dst.parent)
    embeddings, kept, pass1 = None, {}, None
    if photos:
        pass1, embeddings, kept = decide_keeps(src, info, cfg, detector, recognizer, photos, progress)
    best = BestFaces() if cfg.index_identities and embeddings is None else None
    run = Anonymizing(master, secrets.token_bytes(16), latent_numel(model), parser, cfg.feather, cfg.seal,
                      frozenset(kept), best, {})
    with FaceLog(dst.parent) as log, contextlib.ExitStack() as sealing:  # faces on disk until the manifest is written
        sidecar = sealing.enter_context(SidecarWriter(sidecar_path(dst))) if cfg.seal else None
        # Pass 1 runs up to a few hundred frames ahead (its detections are small), so the core does not wait on it.
        tracked = (d for d in pass1) if pass1 is not None else \
            stages.prefetch(detect_and_track(src, info, cfg, detector, progress), depth=256)
        frames, faces, kept_faces, mask_methods = write_video(src, dst, info, cfg, run, model, schedule, tracked, log, sidecar,
                                                  progress, on_progress)
        header = build_header(info, cfg, model, run.video_id, model.scheduler_config, sorted(mask_methods) or [cfg.mask], frames)
        header = replace(header, binding=binding.BINDING)
        if recognizer is not None:
            header = replace(header, identity=IdentityScheme(recognizer.name, recognizer.threshold))
            record_identities(log, run, embeddings if best is None else best.embeddings(recognizer), kept, cfg.index_identities)
        if sidecar is not None:  # then the sidecar; the manifest commits to its size and digest
            index = sidecar.close()
            header = replace(header, originals=SealedFile(sidecar.path.name, index.size, index.sha256, ENCODING))
        mpath = manifest_path(dst)
        write_manifest(mpath, header, log, master)
        if sidecar is None:  # a redo without sealing: an older run's sidecar no longer belongs to this output
            sidecar_path(dst).unlink(missing_ok=True)
        present = set(log.track_ids())
        return stages.Result(src, dst, mpath, frames, faces, len(present - run.kept), time.monotonic() - t0,
                             kept_faces=kept_faces, kept_tracks=len(present & run.kept))


def check_source(src: Path, dst: Path, still_images: bool) -> VideoInfo:
    """The source's facts, once it is known to be a video (or a still image, when asked) that `dst` would not overwrite."""
    info = probe_input(src, still_images)
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the output would overwrite the input")
    return info


def write_video(src: Path, dst: Path, info: VideoInfo, cfg: Config, run: Anonymizing, model, schedule,
                tracked: Iterator[Detections], log: FaceLog, sidecar: SidecarWriter | None, progress: bool,
                on_progress: Callable[[int, int], None] | None) -> tuple[int, int, int, set[str]]:
    """Pass 2: anonymize every frame into `dst` and log each face (its sealed original into `sidecar`), in frame
    order; returns the frames written, the faces anonymized, the faces left visible and the mask methods used. The video is complete (renamed to
    `dst`) on return: the manifest's final name, written after it, is the mark of a complete output."""
    frames = faces = kept_faces = 0
    mask_methods: set[str] = set()
    with VideoWriter(info, dst, lossless=cfg.lossless, crf=cfg.crf, preset=cfg.preset,
                     tags={binding.TAG: run.video_id.hex()}) as writer, \
            progress_bar(info.frames, f"anonymize {src.name}", "frame", progress, leave=False) as bar:
        work = paired(read_frames(src, info), tracked)
        batch = stages.batch_size(cfg.batch_size, model)
        written = stages.process(work, partial(prepare_faces, run), model, schedule, batch, writer, fingerprint_faces)
        with contextlib.closing(written):  # however this ends, every stage thread stops
            for n, jobs in written:
                for job in jobs:  # in frame order, so each track's faces are too
                    face = job.record.face
                    if sidecar is not None:
                        face = replace(face, original=SealedRef(*sidecar.add(job.record.original)))
                    log.add(job.track, face)
                    mask_methods.add(job.record.mask_method)
                for index in range(frames, frames + n):  # the kept tracks' faces of these frames
                    for tid, face in run.visible.pop(index, ()):
                        log.add(tid, face)
                        kept_faces += 1
                frames, faces = frames + n, faces + len(jobs)
                bar.update(n)
                if on_progress is not None:
                    on_progress(n, len(jobs))
        writer.close()
    return frames, faces, kept_faces, mask_methods


def record_identities(log: FaceLog, run: Anonymizing, embeddings: dict[int, np.ndarray], kept: dict[int, float],
                      index: bool) -> None:
    """Each track's identity embedding sealed under its own key (only when asked: a biometric template is not
    made otherwise), and which tracks were kept visible and how close they were to a photo (not the photo)."""
    present = set(log.track_ids())
    for tid, embedding in embeddings.items():
        if index and tid in present:
            log.annotate(tid, identity=seal_identity(keys.track_key(run.master, run.video_id, tid), run.video_id, tid, embedding))
    for tid, distance in kept.items():
        if tid in present:
            log.annotate(tid, kept=Kept(round(float(distance), 4)))
