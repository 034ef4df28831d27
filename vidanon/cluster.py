"""Folder runs on a Ray cluster: the same plan, resume, report and exit codes as a local run
(folder_run.py), with the files shared out among Ray actors, each holding one loaded model (one GPU) and a detector.

    jobs = folder_run.plan(["footage/"], "anon/", config)
    report = run_on_ray(jobs, "master.key", config, RayOptions(address="auto"))

Inputs, outputs and the key file are paths that every node sees at the same place (a shared filesystem):
only paths, progress counts and outcomes travel through Ray, never video or, given a key file, the key.
Each file is done by one actor with folder_run.run_file, so the locks, the atomic outputs and the resume
rules are the local run's. An actor that dies mid-file (its process or its node) leaves at most hidden temps;
the file goes back to the queue and is redone by another actor, at most `retries` more times, then is
reported failed with the reason. Ctrl-C asks the busy actors to stop at their next window of frames
(they clean up as a local run does), waits `grace` seconds for them, then kills them and clears what
they left.

Ray is optional (`pip install 'vidanon[ray]'`) and imported only here, only when a run asks for it.
The `anonymize` command's Ray flags are defined here too (add_arguments, options_from).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import folder_run
from .config import Config
from .errors import VidanonError

log = logging.getLogger(__name__)

INSTALL_HINT = "running on Ray needs the ray extra: pip install 'vidanon[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how a folder run uses Ray."""

    address: str | None = None  # None: start a local Ray instance; "auto", "host:port" or "ray://host:port": join one
    actors: int | None = None  # None: one per GPU of the cluster, or one per CPU without GPUs; never more than files
    retries: int = 2  # times a file is redone after its actor died under it
    grace: float = 30.0  # seconds busy actors get to stop cleanly after Ctrl-C before they are killed


@dataclass(frozen=True)
class Outcome:
    """What an actor did with one file (the fields of folder_run.FileJob that a run fills in)."""

    status: str
    reason: str
    frames: int
    faces: int
    tracks: int
    seconds: float
    kept_faces: int = 0
    kept_tracks: int = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `anonymize` command's Ray flags."""
    p.add_argument("--ray", action="store_true",
                   help="share the files out among Ray workers, one model per GPU (needs `pip install 'vidanon[ray]'`); "
                        "alone it starts a local Ray instance (default: no Ray)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="join a running Ray cluster (implies --ray): auto, HOST:PORT or ray://HOST:PORT; inputs, "
                        "outputs and the key file must be on a filesystem every node sees (default: a local instance)")
    p.add_argument("--ray-actors", type=int, metavar="N",
                   help="Ray workers, each holding one model (implies --ray) "
                        "(default: one per GPU of the cluster, or one per CPU)")


def options_from(args: argparse.Namespace) -> RayOptions | None:
    """The RayOptions the flags ask for; None: a local run (no Ray flag given)."""
    if not (args.ray or args.ray_address or args.ray_actors):
        return None
    return RayOptions(address=args.ray_address, actors=args.ray_actors)


def import_ray():
    try:
        import ray
    except ImportError:
        raise VidanonError(INSTALL_HINT) from None
    return ray


class FileWorker:
    """A Ray actor's state: one model and one detector, reused for file after file.

    It runs with two threads (max_concurrency=2): one does a file, the other answers progress() and
    stop() meanwhile. The driver sends it one file at a time.
    """

    def __init__(self, key: bytes | str, config: Config, keep_photos: tuple[str, ...] = (), still_images: bool = False):
        self.error = ""
        self.keep_photos, self.still_images = keep_photos, still_images
        self._stop = threading.Event()
        self._done = (0, 0)  # frames, faces of the file in progress
        try:  # an error here concerns the whole run: ready() reports it, rather than the actor dying
            from .anonymize import detector_for, master_key
            from .models import load_model
            from .stages import check_model

            self.key = master_key(key)
            self.config = config
            self.model = load_model(config.model, device=config.device, compile=config.compile)
            check_model(self.model)
            self.detector = detector_for(config)
        except Exception as e:
            self.error = str(e) if isinstance(e, VidanonError) else f"{type(e).__name__}: {e}"

    def ready(self) -> tuple[str, str]:
        """(where it runs, why it cannot work or "")."""
        import socket

        return f"{socket.gethostname()} pid {os.getpid()}", self.error

    def run(self, job: folder_run.FileJob) -> Outcome:
        self._done = (0, 0)

        def on_progress(frames: int, faces: int) -> None:
            self._done = (self._done[0] + frames, self._done[1] + faces)
            if self._stop.is_set():
                raise KeyboardInterrupt  # anonymize_video removes its temps on the way out

        try:
            folder_run.run_file(job, self.key, self.config, model=self.model, detector=self.detector, progress=False,
                                keep_photos=self.keep_photos, still_images=self.still_images, on_progress=on_progress)
        except KeyboardInterrupt:
            job.status, job.reason = "interrupted", "interrupted; will be redone by the next run"
        return Outcome(job.status, job.reason, job.frames, job.faces, job.tracks, job.seconds, job.kept_faces,
                       job.kept_tracks)

    def progress(self) -> tuple[int, int]:
        return self._done

    def stop(self) -> None:
        self._stop.set()  # for good: an actor told to stop is killed once its file has ended


def _total_frames(job: folder_run.FileJob) -> int:
    from .video import probe

    try:
        return probe(job.input).frames or 0
    except Exception:  # a bad file: the actor reports why
        return 0


def run_on_ray(
    jobs: list[folder_run.FileJob],
    key: bytes | str | os.PathLike,
    config: Config = Config(),
    options: RayOptions = RayOptions(),
    *,
    progress: bool = True,
    on_file: Callable[[folder_run.FileJob], None] | None = None,
    keep_photos: Sequence[str | os.PathLike] = (),
    still_images: bool = False,
) -> folder_run.Report:
    """Do the pending jobs on Ray actors, like folder_run.run_batch: same report, same per-file callback.

    key: the master key, or (better) the path of its key file, which each actor then reads itself.
    keep_photos, still_images: as for run_batch; photo paths every node sees, like the inputs.
    Connects to Ray only when there is work; uses a Ray connection already made in this process as it is.
    Errors that concern the whole run (Ray not installed, an actor that cannot load the model) raise
    VidanonError, as soon as they are known: usually before any file, and if a late actor fails, after
    stopping the files in flight (nothing partial is left). Ctrl-C raises folder_run.BatchInterrupted carrying
    the report.
    """
    from .progress import progress_bar

    ray = import_ray()
    folder_run.check_inputs(jobs, still_images)  # the driver sees the inputs by the same paths as the workers
    for job in jobs:
        if job.refused:
            folder_run.tidy_refused(job)
    report = folder_run.Report(jobs, config.to_dict())
    todo = [j for j in jobs if j.status == "pending"]
    t0 = time.monotonic()
    if not todo:
        return report
    if not isinstance(key, bytes):
        key = str(Path(key).absolute())  # the actors' working folder is not ours
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
        except Exception as e:  # no cluster at that address, a missing token, ...: stops the run before any file
            where = f"join the Ray cluster at {options.address}" if options.address else "start a local Ray instance"
            raise VidanonError(f"cannot {where}: {_first_line(e)}") from None

    expected = {id(j): _total_frames(j) for j in todo}  # frames per file, corrected as files finish
    bar = progress_bar(sum(expected.values()), "frames", "frame", progress, position=0)
    run = None
    done_frames = done_faces = 0

    def finish(job: folder_run.FileJob) -> None:
        nonlocal done_frames, done_faces
        expected[id(job)] = job.frames
        done_frames, done_faces = done_frames + job.frames, done_faces + job.faces
        if on_file:
            on_file(job)

    try:
        keep = tuple(str(Path(photo).absolute()) for photo in keep_photos)  # paths on the shared filesystem too
        run = _Run(ray, key, config, options, todo, keep, still_images)
        last = 0.0
        while run.busy():
            for job in run.step(timeout=0.5):
                finish(job)
            if progress and time.monotonic() - last > 1:
                frames, faces = run.progress()
                last = time.monotonic()
                bar.total = sum(expected.values())
                bar.n = done_frames + frames
                bar.set_postfix_str(f"{(done_faces + faces) / (time.monotonic() - t0):.1f} faces/s", refresh=False)
                bar.refresh()
        bar.total, bar.n = sum(expected.values()), done_frames
    except KeyboardInterrupt:
        report.interrupted = True
        if run is not None:
            for job in run.stop():
                finish(job)
        for job in todo:
            if job.status == "pending":
                job.reason = "not started"
        raise folder_run.BatchInterrupted(report) from None
    finally:
        if run is not None:
            run.close()  # after an error: kills the actors and clears what they were doing
        bar.close()
        if connected_here:
            ray.shutdown()
        report.seconds = time.monotonic() - t0
    return report


class _Run:
    """The driver's side: actors starting, free and busy; files queued and in flight; retries."""

    def __init__(self, ray, key, config: Config, options: RayOptions, todo: list[folder_run.FileJob],
                 keep_photos: tuple[str, ...] = (), still_images: bool = False):
        self.ray, self.options = ray, options
        self.queue: deque[folder_run.FileJob] = deque(todo)
        self.tries: dict[int, int] = {}  # id(job) -> actor deaths under it
        self.start_deaths = 0
        self.starting: dict = {}  # ready() ref -> actor
        self.free: list = []
        self.running: dict = {}  # run() ref -> (actor, job)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = options.actors or gpus or int(ray.cluster_resources().get("CPU", 1))
        # One GPU each; without GPUs one CPU each (Ray then sizes each actor's torch threads to its CPUs).
        self.need = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(max_concurrency=2, **self.need)(FileWorker)
        self.key, self.config, self.keep_photos, self.still_images = key, config, keep_photos, still_images
        self.waiting_since = time.monotonic()
        for _ in range(max(1, min(count, len(todo)))):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self.actor_class.remote(self.key, self.config, self.keep_photos, self.still_images)
        self.starting[actor.ready.remote()] = actor

    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def step(self, timeout: float) -> list[folder_run.FileJob]:
        """Hand queued files to free actors, wait up to `timeout` for news; the files that ended."""
        ray = self.ray
        while self.queue and self.free:
            actor, job = self.free.pop(), self.queue.popleft()
            # Absolute paths: an actor's working folder is not the driver's.
            sent = dataclasses.replace(job, input=job.input.absolute(), output=job.output.absolute())
            self.running[actor.run.remote(sent)] = (actor, job)
        if not self.running and not self.free and time.monotonic() - self.waiting_since > 60:
            log.warning("waiting for Ray to place a worker (each needs %s); is the cluster big enough?",
                        "1 GPU" if "num_gpus" in self.need else "1 CPU")
            self.waiting_since = time.monotonic()
        ready, _ = ray.wait([*self.starting, *self.running], num_returns=1, timeout=timeout)
        ended = []
        for ref in ready:
            if ref in self.starting:
                self._started(ref)
            else:
                job = self._ended(ref)
                if job is not None:
                    ended.append(job)
        return ended

    def _started(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            where, error = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:  # died while starting: its node went away, or it cannot start
            self.start_deaths += 1
            if self.start_deaths > self.options.retries:
                raise VidanonError(f"Ray workers keep dying while they start; last: {_first_line(e)}") from None
            log.warning("a Ray worker died while starting (%s); starting another", _first_line(e))
            self._start_actor()
            return
        if error:
            raise VidanonError(f"a Ray worker ({where}) cannot start: {error}")
        log.info("Ray worker ready on %s", where)
        self.free.append(actor)

    def _ended(self, ref) -> folder_run.FileJob | None:
        actor, job = self.running.pop(ref)
        try:
            outcome = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # raised by vidanon's code (a bug): the actor lives on
            job.status, job.reason = "failed", f"{job.input}: {_first_line(e.cause or e)}"
            self.free.append(actor)
            return job
        except self.ray.exceptions.RayError as e:  # the actor (its process or its node) died under the file
            n = self.tries[id(job)] = self.tries.get(id(job), 0) + 1
            self.ray.kill(actor)  # a worker that failed once is not trusted with another file
            if n > self.options.retries:
                job.status, job.reason = "failed", f"{job.input}: its Ray worker died {n} time{'s' * (n > 1)}; last: {_first_line(e)}"
                folder_run.clear_leftovers(job)
            else:
                log.warning("%s: its Ray worker died (%s); redoing it on another", job.input, _first_line(e))
                self.queue.appendleft(job)
            if len(self.free) + len(self.running) + len(self.starting) < len(self.queue) + len(self.running):
                self._start_actor()
            return job if job.status == "failed" else None
        _record(job, outcome)
        self.free.append(actor)
        return job

    def progress(self) -> tuple[int, int]:
        """Frames and faces written so far of the files in flight (0 for an actor that does not answer)."""
        refs = [actor.progress.remote() for actor, _ in self.running.values()]
        if not refs:
            return 0, 0
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=1.0)
        frames = faces = 0
        for ref in ready:
            try:
                f, n = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue
            frames, faces = frames + f, faces + n
        return frames, faces

    def stop(self) -> list[folder_run.FileJob]:
        """Ctrl-C: ask the busy actors to stop, wait up to `grace` s for them; the files that were in flight."""
        for actor, _ in self.running.values():
            actor.stop.remote()
        try:
            if self.running:
                self.ray.wait(list(self.running), num_returns=len(self.running), timeout=self.options.grace)
        except KeyboardInterrupt:  # a second Ctrl-C: kill them now
            pass
        for ref, (_, job) in self.running.items():
            try:
                _record(job, self.ray.get(ref, timeout=0))
            except Exception:  # still busy, or dead: close() kills it and clears what it left
                pass
        return self.close()

    def close(self) -> list[folder_run.FileJob]:
        """Kill every actor of this run; a file still in flight is marked interrupted and its leftovers cleared."""
        for actor in [*self.starting.values(), *self.free, *(a for a, _ in self.running.values())]:
            self.ray.kill(actor)
        in_flight = [job for _, job in self.running.values()]
        self.starting.clear()
        self.free.clear()
        self.running.clear()
        for job in in_flight:
            if job.status == "pending":
                job.status, job.reason = "interrupted", "interrupted; will be redone by the next run"
                folder_run.clear_leftovers(job)
        return in_flight


def _record(job: folder_run.FileJob, outcome: Outcome) -> None:
    # The actor had absolute paths; the report names files as the plan did.
    reason = outcome.reason.replace(str(job.input.absolute()), str(job.input))
    job.status, job.reason = outcome.status, reason.replace(str(job.output.absolute()), str(job.output))
    job.frames, job.faces, job.tracks, job.seconds = outcome.frames, outcome.faces, outcome.tracks, outcome.seconds
    job.kept_faces, job.kept_tracks = outcome.kept_faces, outcome.kept_tracks


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
