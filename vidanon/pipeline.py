"""Video in, video out: anonymize every face, or restore chosen people with a key (DESIGN.md §1).

Anonymizing decodes the file twice at once. Pass 1 detects faces in every frame and tracks them,
running ahead: the tracker hands a frame on once no later frame can change it (a few dozen frames
behind), so gaps are filled from both sides and every detection keeps a track. Pass 2 follows
behind it: it crops and masks every face, runs the diffusion core in batches that gather faces
across frames and tracks, pastes the faces back and encodes. Detection, preparing, the core, and
pasting + encoding run in their own threads so the core stays busy. Memory is bounded by the
windows in flight, whatever the video's length.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from . import __version__, keys
from .align import CROP_SIZE, crop_face, face_affine, landmarks_in_crop, paste_face, restore_crop
from .config import Config, restore_config
from .detect import Detections, detect_upright, make_detector, onnx_providers, split_weak
from .diffusion import flip_faces
from .errors import InputError, VidanonError
from .manifest import FORMAT, VERSION, FaceLog, Manifest, manifest_for, manifest_path, read_manifest, seal_mask, unseal_mask, write_manifest
from .masks import FaceParser, landmark_mask, latent_mask, load_face_parser, paste_alpha
from .models import latent_numel, load_model
from .track import Tracker, TrackerConfig
from .video import Frame, VideoInfo, VideoWriter, probe, read_frames

log = logging.getLogger(__name__)

ALIGNMENT = "ffhq-5point-v1"
T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """What a run did; the CLI's report is built from these."""

    input: Path
    output: Path
    manifest: Path | None
    frames: int
    faces: int
    tracks: int
    seconds: float


# --- face jobs and the batched core ------------------------------------------------------------


@dataclass
class FaceJob:
    """One face of one frame on its way through the core."""

    track: int
    signs: np.ndarray  # (n,) float32 ±1: its track's flip vector (kept per face: ~12k floats, cheap next to the crop)
    affine: np.ndarray  # 2×3 frame -> crop
    crop: np.ndarray  # (256, 256, 3) float32 in 0..255
    mask: np.ndarray  # (h, w) bool latent mask
    alpha: np.ndarray  # (256, 256) float32 paste weights
    record: dict | None = None  # its manifest entry (anonymize)
    method: str = ""  # how its mask was made (anonymize)
    slot: int = -1  # index of its frame in the window in flight
    out: np.ndarray | None = None  # (256, 256, 3) uint8 after the core


def run_core(model, jobs: list[FaceJob], steps: int, batch_size: int) -> None:
    """Run the key flip on every job, batch_size faces at a time (faces of any tracks share a batch)."""
    for i in range(0, len(jobs), batch_size):
        batch = jobs[i : i + batch_size]
        x = torch.from_numpy(np.stack([j.crop for j in batch])).permute(0, 3, 1, 2) / 127.5 - 1
        m = torch.from_numpy(np.stack([j.mask for j in batch]).astype(np.float32))
        r = torch.from_numpy(np.stack([j.signs for j in batch]))
        if model.device.type == "cuda":
            x, m, r = (t.pin_memory().to(model.device, non_blocking=True) for t in (x, m, r))
        y = flip_faces(model, x, m, r, steps)
        out = ((y.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        for job, face in zip(batch, out):
            job.out = face


def _prefetch(items: Iterable, depth: int) -> Iterator:
    """Iterate `items` in a background thread, at most `depth` ahead; its errors are re-raised here.

    When the consumer stops early (an error, Ctrl-C) the thread stops at its next hand-over and
    closes `items`, which stops the stages upstream of it in turn. The threads are not daemons:
    the interpreter waits for a stage busy in native code (a core batch) rather than killing it."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # handed to the consumer
            put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="vidanon-stage")
    thread.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


_WINDOW_BYTES = 512 << 20  # frames per window: 20 at 4K, 64 (2 batches' worth) at 1080p


# Native compute that fills every CPU core takes turns: onnxruntime's and torch's thread pools each size
# themselves to the whole machine, and detection running beside a core on the CPU measured 40 % slower
# (2 cores) than the two one after the other. A core on the GPU runs beside detection freely.
_CPU_BUSY = threading.Lock()


def _cpu_turn(device: torch.device):
    return _CPU_BUSY if device.type == "cpu" else contextlib.nullcontext()


def _windows(frames: Iterator[tuple[Frame, T]], faces_of: Callable[[Frame, T], list[FaceJob]], batch_size: int,
             pool: ThreadPoolExecutor):
    """Group frames into windows holding about one batch of faces, bounded to 2·batch_size frames and to
    about _WINDOW_BYTES of frames (where faces are sparse, a 4K window would otherwise hold 64 frames, 1.6 GB).
    The faces of a few frames at a time are prepared in parallel (crop, mask; restore's least squares)."""
    window: list[Frame] = []
    jobs: list[FaceJob] = []
    with contextlib.closing(frames):  # stopping here stops the stage feeding us
        while chunk := list(itertools.islice(frames, 8)):
            for (frame, _), faces in zip(chunk, pool.map(lambda item: faces_of(*item), chunk)):
                for job in faces:
                    job.slot = len(window)
                jobs.extend(faces)
                window.append(frame)
                most_frames = max(min(2 * batch_size, _WINDOW_BYTES // frame.rgb.nbytes), 8)
                if len(jobs) >= batch_size or len(window) >= most_frames:
                    yield window, jobs
                    window, jobs = [], []
        if window:
            yield window, jobs


def _with_core(windows: Iterator, model, steps: int, batch_size: int):
    with contextlib.closing(windows):
        for window, jobs in windows:
            with _cpu_turn(model.device):
                run_core(model, jobs, steps, batch_size)
            yield window, jobs


def _process_frames(frames: Iterator[tuple[Frame, T]], writer: VideoWriter, faces_of: Callable[[Frame, T], list[FaceJob]],
                    model, steps: int, batch_size: int, bar: tqdm,
                    written: Callable[[list[FaceJob]], None] = lambda jobs: None) -> tuple[int, int]:
    """Three stages in three threads, so the core never waits for the CPU work around it:
    decode + crop + mask  ->  diffusion core  ->  paste back + encode (here), in frame order.
    `frames` pairs each frame with what faces_of needs to find its faces (detections, manifest entries).
    Each hand-over queue holds two windows, which bounds memory whatever the video's length.
    CPU work inside a stage (preparing faces, pasting frames) is spread over a thread pool
    (NumPy and OpenCV release the GIL: pasting measured 1.9× faster on 2 cores).
    `written` sees each window's faces in frame order once they are written.

    Returns (frames, faces) written."""

    def pasted(item: tuple[Frame, list[FaceJob]]) -> np.ndarray:
        frame, faces = item
        rgb = frame.rgb
        for job in faces:  # one frame's faces in order: they may overlap
            rgb = paste_face(rgb, job.out, job.affine, job.alpha)
        return rgb

    n_frames = n_faces = 0
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), "vidanon-work") as pool:
        stages = _prefetch(_with_core(_prefetch(_windows(_prefetch(frames, depth=8), faces_of, batch_size, pool), depth=2),
                                      model, steps, batch_size), depth=2)
        with contextlib.closing(stages):
            for window, jobs in stages:
                by_frame: dict[int, list[FaceJob]] = {}
                for job in jobs:
                    by_frame.setdefault(job.slot, []).append(job)
                for frame, rgb in zip(window, pool.map(pasted, [(f, by_frame.get(k, [])) for k, f in enumerate(window)])):
                    writer.write(rgb, frame.pts)
                written(jobs)
                n_frames, n_faces = n_frames + len(window), n_faces + len(jobs)
                bar.update(len(window))
    return n_frames, n_faces


@functools.cache
def _warn_once(message: str) -> None:  # once per process, not once per file of a directory run
    log.warning(message)


def check_model(model) -> None:
    if tuple(model.image_shape[1:]) != (CROP_SIZE, CROP_SIZE):
        raise VidanonError(f"model {model.name!r} works on {model.image_shape[1]}x{model.image_shape[2]} images; "
                           f"vidanon aligns faces to {CROP_SIZE}x{CROP_SIZE} (FFHQ / CelebA-HQ 256 LDMs)")


def _batch_size(cfg: Config, model) -> int:
    return cfg.batch_size or (32 if model.device.type == "cuda" else 4)


# --- anonymize ---------------------------------------------------------------------------------


def _master(key) -> bytes:
    if isinstance(key, bytes):
        if len(key) not in keys.MASTER_SIZES:
            raise VidanonError("master key must be 16 or 32 bytes")
        return key
    return keys.load_master_key(key)


def _mask_for(crop: np.ndarray, lm_crop: np.ndarray, parser: FaceParser | None) -> tuple[np.ndarray, str]:
    """Latent mask of one aligned face: the parser's face classes, never less than the landmark template,
    so a parser that misses part of a blurry, tiny CCTV face cannot leave that part un-anonymized."""
    template = landmark_mask(lm_crop)
    if parser is None:
        return latent_mask(template), "landmarks"
    return latent_mask(parser(crop[None].astype(np.uint8))[0] | template), "parser+landmarks"


@functools.lru_cache(maxsize=4)
def _face_parser(weights: str | None, download: bool, device: str) -> FaceParser | None:
    """Loaded once per process, not once per file of a directory run. Only `--mask parser` downloads:
    `auto` uses cached weights or none, so a run on an air-gapped CCTV server never reaches out."""
    return load_face_parser(weights, download=download, providers=onnx_providers(device))


def detector_for(cfg: Config):
    """The face detector the settings ask for (built once per run and shared by its files)."""
    floor = cfg.floor if cfg.threshold is None else min(cfg.floor, cfg.threshold)  # a threshold below it: no weak ones
    return make_detector(cfg.detector, threshold=cfg.threshold, device=cfg.device, min_face=cfg.min_face, floor=floor)


def detect_and_track(path: Path, info: VideoInfo, cfg: Config, detector, progress: bool = True) -> Iterator[Detections]:
    """Pass 1: every frame's faces, each with a track id (plus the faces the tracker adds), in frame order,
    each as soon as it is final: a bounded number of frames behind detection (see track.Tracker)."""
    tracker = Tracker(TrackerConfig(iou_threshold=cfg.iou_threshold, max_gap=cfg.max_gap, extend=cfg.extend,
                                    bridge=cfg.bridge), frame_size=(info.width, info.height))
    threshold = getattr(detector, "threshold", 0.0)  # below it: weak candidates (a detector built with a floor)
    frames = _prefetch(read_frames(path, info), depth=4)
    with tqdm(total=info.frames, desc=f"detect {path.name}", unit="frame", disable=not progress, leave=False) as bar, \
            contextlib.closing(frames):
        for frame in frames:
            with _CPU_BUSY:
                dets = detect_upright(detector, frame.rgb, info.rotation)
            yield from tracker.push(*split_weak(dets, threshold))
            bar.update()
    yield from tracker.finish()


def _paired(frames: Iterator[Frame], tracked: Iterator[Detections]) -> Iterator[tuple[Frame, Detections]]:
    """Pass 2's frames with pass 1's faces. Both passes decode the same file, so they agree on the frame
    count; if they ever did not, this fails the file rather than pass a frame on without its faces."""
    with contextlib.closing(frames), contextlib.closing(tracked):
        for frame, dets in itertools.zip_longest(frames, tracked):
            if frame is None or dets is None:
                raise VidanonError("the detection pass and the anonymizing pass decoded different frame counts")
            yield frame, dets


def anonymize_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key: bytes | str | os.PathLike,
    config: Config = Config(),
    *,
    model=None,
    detector=None,
    progress: bool = True,
) -> Result:
    """Anonymize every face of `src` into `dst`, with the manifest `<dst stem>.vidanon.json` beside it.

    key: the master key (bytes) or the path of a key file. `model`/`detector` may be passed in to
    reuse them across files. Nothing is written under `dst` or its manifest's name unless the run completes.
    """
    t0 = time.monotonic()
    src, dst, cfg = Path(src), Path(dst), config
    master = _master(key)
    info = probe(src)
    model = model or load_model(cfg.model, device=cfg.device, compile=cfg.compile)
    check_model(model)
    parser = None if cfg.mask == "landmarks" else _face_parser(cfg.parser_weights, cfg.mask == "parser", cfg.device)
    if cfg.mask == "parser" and parser is None:
        raise InputError("mask 'parser' asked for but no face-parser weights are available; use --mask landmarks or --parser-weights")
    detector = detector or detector_for(cfg)
    if model.device.type == "cuda" and getattr(detector, "on_gpu", True) is False:
        _warn_once("face detection runs on the CPU while the diffusion core runs on the GPU, and will likely hold it "
                   "back: install onnxruntime-gpu (pip install 'vidanon[gpu]') for detection on the GPU")
    _output_folder(dst)  # an unusable output folder is reported now, not after decoding starts

    video_id = secrets.token_bytes(16)
    n = latent_numel(model)
    tkeys: dict[int, bytes] = {}  # track id -> key, filled as tracks appear
    log = FaceLog(dst.parent)  # the manifest's face entries, on disk until the manifest is written
    mask_methods: set[str] = set()

    def faces_of(frame: Frame, dets: Detections) -> list[FaceJob]:
        jobs = []
        for i in range(len(dets)):
            tid = int(dets.track_id[i])
            if tid not in tkeys:  # several worker threads may derive it at once: same bytes, harmless
                tkeys[tid] = keys.track_key(master, video_id, tid)
            affine, lm = face_affine(dets.landmarks[i], dets.xyxy[i])
            crop = crop_face(frame.rgb, affine)
            mask, method = _mask_for(crop, landmarks_in_crop(lm, affine), parser)
            record = {
                "frame": frame.index,
                "pts": frame.pts,
                "affine": affine.tolist(),
                "box": [round(float(v), 2) for v in dets.xyxy[i]],
                "score": round(float(dets.score[i]), 4),
                "interpolated": bool(dets.interpolated[i]),
                "sealed": seal_mask(tkeys[tid], video_id, tid, frame.index, mask),
            }
            jobs.append(FaceJob(tid, keys.flip_signs(tkeys[tid], n), affine, crop.astype(np.float32), mask,
                                paste_alpha(mask, feather=cfg.feather), record, method))
        return jobs

    def written(jobs: list[FaceJob]) -> None:  # in frame order, so each track's faces are too
        for job in jobs:
            log.add(job.track, job.record)
            mask_methods.add(job.method)

    batch = _batch_size(cfg, model)
    with log:
        with VideoWriter(info, dst, lossless=cfg.lossless, crf=cfg.crf, preset=cfg.preset) as writer:
            with tqdm(total=info.frames, desc=f"anonymize {src.name}", unit="frame", disable=not progress, leave=False) as bar:
                # Pass 1 runs up to a few hundred frames ahead (its detections are small), so the core does not wait on it.
                tracked = _prefetch(detect_and_track(src, info, cfg, detector, progress), depth=256)
                frames, faces = _process_frames(_paired(read_frames(src, info), tracked), writer, faces_of, model,
                                                cfg.steps, batch, bar, written)
            header = _header(info, cfg, model, video_id, sorted(mask_methods) or [cfg.mask], frames)
            writer.close()  # the manifest's final name is the mark of a complete output: rename the video first
        mpath = manifest_path(dst)
        write_manifest(mpath, header, log, tkeys)
        return Result(src, dst, mpath, frames, faces, len(log.track_ids()), time.monotonic() - t0)


def _output_folder(dst: Path) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{dst.parent}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(dst.parent, os.W_OK):
        raise InputError(f"{dst.parent}: the output folder is not writable")


def _header(info: VideoInfo, cfg: Config, model, video_id: bytes, mask_methods, frames: int) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "vidanon_version": __version__,
        "video_id": video_id.hex(),
        "video": {"width": info.width, "height": info.height, "frames": frames,
                  "time_base": f"{info.time_base.numerator}/{info.time_base.denominator}", "fps": info.fps},
        "model": {"name": model.name, "digest": model.digest, "latent_shape": list(model.latent_shape),
                  "image_shape": list(model.image_shape)},
        "diffusion": {"steps": cfg.steps, "sampler": "ddim-eta0", "scheduler": model.scheduler_config},
        "crop": {"size": CROP_SIZE, "alignment": ALIGNMENT},
        "mask": {"methods": list(mask_methods), "feather": cfg.feather},
        "encoder": {"lossless": cfg.lossless, "crf": None if cfg.lossless else cfg.crf, "preset": cfg.preset},
        "key_derivation": {"track": "hkdf-sha256/vidanon/track/v1", "flip": "shake256/vidanon/flip/v1",
                           "seal": "aes-256-gcm/vidanon/seal/v1", "mac": "hmac-sha256/vidanon/manifest-mac/v1"},
        "config": cfg.to_dict(),
    }


# --- restore -----------------------------------------------------------------------------------


def _track_keys(manifest: Manifest, key, tracks: Sequence[int] | None) -> dict[int, bytes]:
    """Track keys for the tracks to restore, from a master key (bytes/file) or a single-track key (TrackKey/file)."""
    if isinstance(key, (str, os.PathLike)):
        key = keys.load_key(key)
    if isinstance(key, keys.TrackKey):
        if key.video_id != manifest.video_id:
            raise keys.WrongKeyError(f"this track key belongs to another video (video {key.video_id.hex()[:8]}…, not {manifest.video_id.hex()[:8]}…)")
        if tracks and set(tracks) != {key.track_id}:
            raise keys.WrongKeyError(f"this key restores track {key.track_id} only, not {', '.join(map(str, tracks))}")
        return {key.track_id: key.key}
    master = _master(key)
    chosen = list(tracks) if tracks else [t["id"] for t in manifest.tracks]
    return {t: keys.track_key(master, manifest.video_id, t) for t in chosen}


def deanonymize_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    key,
    tracks: Sequence[int] | None = None,
    *,
    manifest: str | os.PathLike | None = None,
    config: Config | None = None,
    model=None,
    progress: bool = True,
) -> Result:
    """Restore the chosen tracks (all, with a master key) of an anonymized video into `dst`.

    key: master key bytes, a keys.TrackKey, or the path of a master or track key file.
    A wrong key fails with WrongKeyError before anything is written. Unselected faces stay anonymized.
    """
    t0 = time.monotonic()
    src, dst = Path(src), Path(dst)
    info = probe(src)
    man = read_manifest(manifest or manifest_path(src))
    tkeys = _track_keys(man, key, tracks)
    for tid, tk in tkeys.items():
        man.check_key(tid, tk)  # before any frame is written
    made = man.header["video"]
    if (info.width, info.height) != (made["width"], made["height"]) or info.frames not in (None, made["frames"]):
        raise InputError(f"{src}: is {info.width}x{info.height}, {info.frames or '?'} frames, but its manifest describes "
                         f"{made['width']}x{made['height']}, {made['frames']} frames: the video was re-encoded, resized or "
                         "cut after anonymization, or the manifest belongs to another video")
    cfg = config or restore_config(man.header["config"])
    model = model or load_model(cfg.model, device=cfg.device, compile=cfg.compile)
    check_model(model)
    if model.digest != man.header["model"]["digest"]:
        log.warning("%s was made with model weights %s, restoring with %s: faces will not come back exactly",
                    src, man.header["model"]["digest"], model.digest)
    n = latent_numel(model)
    signs = {t: keys.flip_signs(tk, n) for t, tk in tkeys.items()}
    by_frame = man.faces_by_frame(tkeys)
    steps, feather = man.header["diffusion"]["steps"], man.header["mask"]["feather"]

    def faces_of(frame: Frame, faces: list[tuple[int, dict]]) -> list[FaceJob]:
        jobs = []
        for tid, face in faces:
            mask = unseal_mask(tkeys[tid], man.video_id, tid, face["frame"], face["sealed"], man.latent_hw)
            affine = np.array(face["affine"], dtype=np.float64)
            alpha = paste_alpha(mask, feather=feather)
            jobs.append(FaceJob(tid, signs[tid], affine, restore_crop(frame.rgb, affine, alpha), mask, alpha))
        return jobs

    _output_folder(dst)
    with VideoWriter(info, dst, lossless=cfg.lossless, crf=cfg.crf, preset=cfg.preset) as writer:
        with tqdm(total=info.frames, desc=f"restore {src.name}", unit="frame", disable=not progress, leave=False) as bar:
            frames, faces = _process_frames(((f, by_frame.pop(f.index, [])) for f in read_frames(src, info)), writer,
                                            faces_of, model, steps, _batch_size(cfg, model), bar)
        if frames != made["frames"]:  # containers that store no frame count are checked here, before the rename
            raise InputError(f"{src}: has {frames} frames but its manifest describes {made['frames']}: "
                             "the video was cut or re-encoded after anonymization")
    os.chmod(dst, 0o600)  # real faces again: readable by the investigator only, like a key
    return Result(src, dst, None, frames, faces, len(tkeys), time.monotonic() - t0)


def inspect_video(path: str | os.PathLike) -> Manifest:
    """The manifest of an anonymized video (or the manifest file itself)."""
    path = Path(path)
    return read_manifest(manifest_for(path))
