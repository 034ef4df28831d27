"""The threaded machinery that anonymizing and restoring share (docs/design.md, "Threads and memory").

A video goes through four stages, each in its own thread, joined by bounded queues:

    decode  ->  prepare faces (crop, mask)  ->  diffusion core  ->  paste back + encode

so the core (the GPU) never waits for the CPU work around it. Frames travel in *windows* of about
one batch of faces; each queue holds two windows and the core stage at most two more (it carries a
window's leftover faces into the next window's batch), which bounds memory whatever the video's length.
CPU work inside a stage (preparing a window's faces, pasting its frames) is spread over a thread
pool: NumPy and OpenCV release the GIL (pasting measured 1.9× faster on 2 cores).

`run_core` and `CPU_BUSY` are looked up here at call time, so a benchmark or a test can wrap them.
torch is imported by the core stage when it first runs, so that the checks made before it (a wrong
key, a missing file) are answered without waiting for torch to load.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .align import CROP_SIZE, paste_face
from .errors import InputError, VidanonError
from .video import Frame, VideoWriter

if TYPE_CHECKING:
    from .diffusion import Schedule

log = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW_BYTES = 512 << 20  # frames per window: 20 at 4K, 64 (2 batches' worth) at 1080p

# Native compute that fills every CPU core takes turns: onnxruntime's and torch's thread pools each size
# themselves to the whole machine, and detection running beside a core on the CPU measured 40 % slower
# (2 cores) than the two one after the other. A core on the GPU runs beside detection freely.
CPU_BUSY = threading.Lock()


@dataclass(frozen=True)
class Result:
    """What a run did; the CLI's report is built from these."""

    input: Path
    output: Path
    manifest: Path | None
    frames: int
    faces: int  # faces anonymized (restored, for a restore)
    tracks: int  # tracks anonymized (restored)
    seconds: float
    method: str | None = None  # how faces were restored: "sealed" (original pixels) or "flip" (key flip)
    kept_faces: int = 0  # faces of the tracks left visible (--keep-photo): counted apart, never as anonymized
    kept_tracks: int = 0


@dataclass
class FaceJob:
    """One face of one frame on its way through the core (mutable: each stage fills in its part)."""

    track: int
    signs: np.ndarray  # (n,) ±1: its track's flip vector (kept per face: ~12k values, cheap next to the crop)
    affine: np.ndarray  # 2×3 frame -> crop
    crop: np.ndarray  # (256, 256, 3) float32 in 0..255
    mask: np.ndarray  # (h, w) bool latent mask
    alpha: np.ndarray  # (256, 256) float32 paste weights
    record: object = None  # what the caller keeps of it (anonymize: its manifest face and mask method)
    slot: int = -1  # index of its frame in the window in flight
    out: np.ndarray | None = None  # (256, 256, 3) uint8 after the core


def batch_size(requested: int, model) -> int:
    """Faces per core batch: as requested, or 32 on a GPU and 4 on a CPU."""
    return requested or (32 if model.device.type == "cuda" else 4)


def check_model(model) -> None:
    if tuple(model.image_shape[1:]) != (CROP_SIZE, CROP_SIZE):
        raise VidanonError(f"model {model.name!r} works on {model.image_shape[1]}x{model.image_shape[2]} images; "
                           f"vidanon aligns faces to {CROP_SIZE}x{CROP_SIZE} (FFHQ / CelebA-HQ 256 LDMs)")


def check_output_folder(folder: Path) -> None:
    """The folder exists or can be made, and can be written: checked without creating anything."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{folder}: cannot create the output folder ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: the output folder is not writable")


def make_output_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{folder}: cannot create the output folder ({e.strerror or e})") from None


@functools.cache
def warn_once(message: str) -> None:  # once per process, not once per file of a folder run
    log.warning(message)


def cpu_turn(device):
    return CPU_BUSY if device.type == "cpu" else contextlib.nullcontext()


def one_shape(model) -> bool:
    """Whether the core pads a short batch to the full one: on a GPU (cuDNN autotunes each new shape) and for a
    compiled model (each new shape is a compile of its own)."""
    return model.device.type == "cuda" or getattr(model, "compiled", False)


def run_core(model, jobs: list[FaceJob], schedule: Schedule, batch: int) -> None:
    """Run the key flip on every job, `batch` faces at a time (faces of any tracks share a batch).

    Faces go to the device as float crops in 0..255 and are scaled there; masks and signs stay on the host,
    where flip_faces checks them without waiting for the device. The result is read back once per batch."""
    import torch

    from .diffusion import flip_faces

    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        n = len(chunk)
        if one_shape(model):
            chunk = chunk + [chunk[-1]] * (batch - n)
        x = torch.from_numpy(np.stack([j.crop for j in chunk]))
        if model.device.type == "cuda":
            x = x.pin_memory().to(model.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2) / 127.5 - 1
        m = torch.from_numpy(np.stack([j.mask for j in chunk]))
        r = torch.from_numpy(np.stack([j.signs for j in chunk]))
        y = flip_faces(model, x, m, r, schedule)
        out = ((y.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        for job, face in zip(chunk[:n], out):
            job.out = face


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
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


Prepare = Callable[[Frame, T], list[FaceJob]]


def windows(frames: Iterator[tuple[Frame, T]], prepare: Prepare, batch: int, pool: ThreadPoolExecutor
            ) -> Iterator[tuple[list[Frame], list[FaceJob]]]:
    """Group frames into windows holding about one batch of faces, bounded to 2·batch frames and to
    about WINDOW_BYTES of frames (where faces are sparse, a 4K window would otherwise hold 64 frames,
    1.6 GB). The faces of a few frames at a time are prepared in parallel."""
    window: list[Frame] = []
    jobs: list[FaceJob] = []
    with contextlib.closing(frames):  # stopping here stops the stage feeding us
        while chunk := list(itertools.islice(frames, 8)):
            for (frame, _), faces in zip(chunk, pool.map(lambda item: prepare(*item), chunk)):
                for job in faces:
                    job.slot = len(window)
                jobs.extend(faces)
                window.append(frame)
                most_frames = max(min(2 * batch, WINDOW_BYTES // frame.rgb.nbytes), 8)
                if len(jobs) >= batch or len(window) >= most_frames:
                    yield window, jobs
                    window, jobs = [], []
        if window:
            yield window, jobs


def with_core(windows_in: Iterator[tuple[list[Frame], list[FaceJob]]], model, schedule: Schedule, batch: int,
              most_waiting: int = 2):
    """Run the core on full batches of faces gathered across windows; yield each window, in order, once all its
    faces are done. A window's leftover faces wait for the next window's rather than run as a short batch (a
    short batch wastes the GPU, and every new batch shape costs a cuDNN autotune or a recompile); only when
    `most_waiting` windows are held (sparse faces), or at the end, does a short batch run, which bounds memory."""
    waiting: collections.deque[tuple[list[Frame], list[FaceJob]]] = collections.deque()
    todo: list[FaceJob] = []

    def run(jobs: list[FaceJob]) -> None:
        with cpu_turn(model.device):
            run_core(model, jobs, schedule, batch)

    with contextlib.closing(windows_in):
        for window, jobs in windows_in:
            waiting.append((window, jobs))
            todo.extend(jobs)
            full = len(todo) // batch * batch
            if full:
                run(todo[:full])
                todo = todo[full:]
            while waiting and all(job.out is not None for job in waiting[0][1]):
                yield waiting.popleft()
            if len(waiting) >= most_waiting:  # all of them wait on the faces in todo
                run(todo)
                todo = []
                yield from waiting
                waiting.clear()
        if todo:
            run(todo)
        yield from waiting


def _pasted(frame: Frame, faces: list[FaceJob]) -> np.ndarray:
    rgb = frame.rgb
    for job in faces:  # one frame's faces in order: they may overlap
        rgb = paste_face(rgb, job.out, job.affine, job.alpha)
    return rgb


def process(frames: Iterator[tuple[Frame, T]], prepare: Prepare, model, schedule: Schedule, batch: int,
            writer: VideoWriter, written: Callable[[np.ndarray, list[FaceJob]], None] | None = None
            ) -> Iterator[tuple[int, list[FaceJob]]]:
    """Run every frame through the four stages and write it; yields (frames, faces) of each window, in
    frame order, once its frames are written. `frames` pairs each frame with what `prepare` needs to find
    its faces (detections, manifest entries). `written(rgb, faces)` sees each frame as written, with its faces."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), "vidanon-work") as pool:
        decoded = prefetch(frames, depth=8)
        prepared = prefetch(windows(decoded, prepare, batch, pool), depth=2)
        flipped = prefetch(with_core(prepared, model, schedule, batch), depth=2)
        with contextlib.closing(flipped):
            for window, jobs in flipped:
                by_slot: dict[int, list[FaceJob]] = {}
                for job in jobs:
                    by_slot.setdefault(job.slot, []).append(job)
                faces = [by_slot.get(k, []) for k in range(len(window))]
                for frame, rgb, mine in zip(window, pool.map(_pasted, window, faces), faces):
                    writer.write(rgb, frame.pts)
                    if written is not None:
                        written(rgb, mine)
                yield len(window), jobs
