"""Folder runs: find the videos, plan their outputs, anonymize them one by one, report.

Usable from Python without the CLI:

    jobs = plan(["footage/"], "anon/", config)      # what would be done / skipped
    report = run_batch(jobs, master_key, config)    # keeps going past a bad file
    print(report.summary()); report.write("report.json"); sys.exit(report.exit_code)

Resume: an output is complete when the video AND its manifest exist under their final names
(anonymize renames the video first and writes the manifest last, both atomically). A rerun
skips complete outputs made with the same settings and redoes everything else: a complete output
whose manifest recorded other settings that change the output (config.OUTPUT_SETTINGS: another
model, steps, encoding, ...) is redone, and the summary says why. Before a file is redone its old manifest is
moved aside, so a run killed halfway never leaves a new video beside an old manifest that looks
complete; if the redo fails the old output is put back as it was. Stale hidden temp files of a
killed run are removed before the file is redone.

Parallel runs over the same folders (one per GPU: `--device cuda:0`, `cuda:1`, ...) share the files
out: a run holds an exclusive lock on each output while it works on it (a hidden `.<name>.lock`,
removed afterwards), skips the files another run holds, and skips those another run has finished
since it planned. One file's work is `run_file`; cluster.py runs it on Ray workers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .atomic import claim, stale_temps, temp_beside, write_atomic
from .config import Config, changed_settings
from .errors import InputError, VidanonError, os_error
from .manifest import manifest_path, read_header
from .sealed import sidecar_path
from .video import output_suffix, probe_input

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "avi", "m4v", "webm", "ts", "mts")
DEFAULT_PATTERNS = tuple(f"*.{ext}" for ext in VIDEO_EXTENSIONS)

# Status of one file: pending (to do), done, skipped (complete output already there),
# failed (reason says why), interrupted (was running at Ctrl-C; nothing left under its final name).
STATUSES = ("done", "skipped", "failed", "interrupted", "pending")


@dataclass
class FileJob:
    """One input video, where its output goes, and (after the run) what happened to it."""

    input: Path
    output: Path
    status: str = "pending"
    reason: str = ""
    frames: int = 0
    faces: int = 0
    tracks: int = 0
    seconds: float = 0.0
    kept_faces: int = 0  # faces of tracks left visible (--keep-photo), not counted in faces
    kept_tracks: int = 0
    overwrite: bool = False  # planned to redo a complete output
    redo: str = ""  # why a complete output is redone (settings changed), for the summary
    seen: tuple | None = field(default=None, repr=False)  # the output as planned (see _stat)
    probed: bool = field(default=False, repr=False)  # its input was probed (check_inputs)
    refused: bool = field(default=False, repr=False)  # ... and found not to be a video it can anonymize

    @property
    def manifest(self) -> Path:
        return manifest_path(self.output)

    def to_dict(self) -> dict:
        return {"input": str(self.input), "output": str(self.output), "manifest": str(self.manifest),
                "status": self.status, "reason": self.reason, "redo": self.redo, "frames": self.frames, "faces": self.faces,
                "tracks": self.tracks, "kept_faces": self.kept_faces, "kept_tracks": self.kept_tracks,
                "seconds": round(self.seconds, 3)}


def is_complete(output: str | os.PathLike) -> bool:
    """Complete = video and manifest under their final names (the manifest is written last)."""
    output = Path(output)
    return output.is_file() and manifest_path(output).is_file()


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def kept_visible(faces: int, tracks: int) -> str:
    """How many faces were left as recorded (--keep-photo): said apart from the anonymized ones, always."""
    return f"{plural(faces, 'face')} of {plural(tracks, 'track')} kept visible"


def _matches(name: str, patterns: Sequence[str]) -> bool:
    # Case-insensitive: cameras write CLIP0001.MP4.
    return any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns)


def find_videos(inputs: Iterable[str | os.PathLike], outdir: str | os.PathLike,
                patterns: Sequence[str] | None = None, unreadable: list[tuple[Path, str]] | None = None
                ) -> list[tuple[Path, Path]]:
    """(video, its path relative to outdir) for every input file and every matching file under input folders.

    Folders are walked recursively in sorted order; hidden files and folders (names starting with
    '.', which is also where partial outputs live) are left out. A file named on the command line is
    taken whatever its extension. Raises InputError when an input is missing, or when `outdir` is or
    lies inside an input folder (a later run would anonymize the anonymized files) or holds an input.
    A folder that cannot be read is appended to `unreadable` as (folder, reason), never skipped in silence.
    """
    patterns = tuple(patterns or DEFAULT_PATTERNS)
    out_root = Path(outdir).resolve()
    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()  # a file reached twice (named and inside a named folder) is done once

    def add(path: Path, rel: Path) -> None:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            found.append((path, rel))

    inputs = [Path(i) for i in inputs]
    for item in inputs:
        if not item.exists():
            raise InputError(f"{item}: no such file or folder")
        if item.is_dir():
            if item.resolve() == out_root:
                raise InputError(f"{outdir}: the output folder is the input folder {item}; "
                                 "choose another -o so that outputs never sit beside (or over) their inputs")
            if out_root.is_relative_to(item.resolve()):
                raise InputError(f"{outdir}: the output folder lies inside the input folder {item}; a later run "
                                 "would anonymize the anonymized files: choose an -o outside it")
            def skipped(e: OSError) -> None:
                if unreadable is not None:
                    unreadable.append((Path(e.filename or item), f"cannot read this folder ({e.strerror or e})"))

            for folder, subfolders, names in os.walk(item, onerror=skipped):
                # Pruning in place keeps os.walk out of hidden folders.
                subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
                for name in sorted(names):
                    path = Path(folder, name)
                    if not name.startswith(".") and _matches(name, patterns) and path.is_file():
                        # One folder: its tree goes straight under outdir. Several (cam1/ cam2/): each keeps
                        # its own name, like `cp -r cam1 cam2 outdir`, so same-named recordings never collide.
                        top = Path(item.resolve().name) if len(inputs) > 1 else Path()
                        add(path, top / path.relative_to(item))
        else:
            if item.resolve().parent == out_root:
                raise InputError(f"{outdir}: the output folder holds the input {item}; "
                                 "choose another -o so that outputs never sit beside (or over) their inputs")
            add(item, Path(item.name))
    return found


def plan(inputs: Iterable[str | os.PathLike], outdir: str | os.PathLike, config: Config = Config(), *,
         patterns: Sequence[str] | None = None, overwrite: bool = False) -> list[FileJob]:
    """The jobs of a run: output paths mirror each input tree under `outdir`; complete outputs made with
    the same output settings are skipped, those made with others are redone.

    Two inputs that would share an output or manifest name (a.mp4 and a.mov both make
    a.vidanon.json) are not guessed apart: the later one fails with a reason.
    """
    outdir = Path(outdir)
    unreadable: list[tuple[Path, str]] = []
    videos = find_videos(inputs, outdir, patterns, unreadable)
    input_paths = {src.resolve() for src, _ in videos}
    taken: dict[Path, FileJob] = {}
    jobs = [FileJob(folder, outdir, status="failed", reason=f"{folder}: {why}") for folder, why in unreadable]
    for src, rel in videos:
        out = outdir / rel.with_suffix(output_suffix(src, config.lossless))
        job = FileJob(src, out, overwrite=overwrite, seen=_stat(out))
        jobs.append(job)
        clash = taken.get(out.resolve()) or taken.get(job.manifest.resolve())
        if out.resolve() in input_paths or job.manifest.resolve() in input_paths:
            job.status, job.reason = "failed", f"{out}: the output would overwrite an input"
        elif clash is not None:
            job.status, job.reason = "failed", (f"{src}: its output {out} (or manifest) would also be written for "
                                                f"{clash.input}; rename one of them or run it on its own")
        elif is_complete(out) and not overwrite:
            job.redo = _settings_changed(job.manifest, config)
            if job.redo:
                job.overwrite, job.reason = True, f"redo: {job.redo}"
            else:
                job.status, job.reason = "skipped", "already done (video and manifest exist)"
        elif out.exists() or job.manifest.exists():
            job.reason = "redo: overwrite" if is_complete(out) else "redo: incomplete output of an earlier run"
        taken.setdefault(out.resolve(), job)
        taken.setdefault(job.manifest.resolve(), job)
    return jobs


def check_inputs(jobs: Iterable[FileJob], still_images: bool = False) -> None:
    """Probe every pending job's input (open it, decode one frame), before any model loads: a file that is not a
    video, or a still image named like one (unless `still_images`), fails now with its reason, and a dry run lists
    it as refused. Each job is probed once, however often this is called."""
    for job in jobs:
        if job.status == "pending" and not job.probed:
            try:
                probe_input(job.input, still_images)
            except InputError as e:
                job.status, job.reason, job.refused = "failed", str(e), True
            job.probed = True


def _settings_changed(manifest: Path, config: Config) -> str:
    """Why a complete output must be redone for `config` ("" if it need not)."""
    try:
        recorded = read_header(manifest).config
    except InputError:
        return "its manifest is unreadable"
    changes = changed_settings(recorded, config)
    return f"made with other settings ({', '.join(changes)})" if changes else ""


def _stat(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


@contextlib.contextmanager
def _claimed(job: FileJob) -> Iterator[bool]:
    """Whether this run may work on the job's output now: False while another run holds its lock (atomic.claim)."""
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unusable output folder: the job itself reports it
        pass
    with claim(job.output) as ours:
        yield ours


def _set_aside(job: FileJob) -> tuple[Path | None, tuple | None]:
    """Before (re)doing a job: clear stale temps and move an old manifest off its final name.

    The manifest marks an output complete, so it must not sit beside a new video that is renamed
    in before the new manifest is written. It is kept aside, to be put back if the redo fails.
    Returns (the set-aside manifest or None, the old video's identity).
    """
    for stale in [*stale_temps(job.output), *stale_temps(job.manifest), *stale_temps(sidecar_path(job.output)),
                  job.manifest.with_name(f".{job.manifest.name}.old")]:
        stale.unlink(missing_ok=True)
    aside = None
    if job.manifest.exists():
        aside = job.manifest.with_name(f".{job.manifest.name}.old")
        os.replace(job.manifest, aside)
    return aside, _stat(job.output)


def _settle(job: FileJob, aside: Path | None, video_before: tuple | None) -> None:
    """After a job (done, failed or interrupted): never leave a video without its manifest under final names."""
    if job.status != "done" and aside is not None and _stat(job.output) == video_before:
        os.replace(aside, job.manifest)  # the old output was not touched: it stays as it was
        return
    if aside is not None:
        aside.unlink(missing_ok=True)
    if job.status != "done" and not job.manifest.exists():
        # a video or a sidecar alone is not an output (e.g. stopped between the renames)
        job.output.unlink(missing_ok=True)
        sidecar_path(job.output).unlink(missing_ok=True)


@dataclass
class Report:
    """What a run did, file by file; the CLI prints summary() and writes to_dict() as --report."""

    files: list[FileJob]
    config: dict | None = None
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    interrupted: bool = False
    dry_run: bool = False

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.files)

    @property
    def exit_code(self) -> int:
        """130 interrupted, 1 some file failed, 0 otherwise (skips are success)."""
        if self.interrupted:
            return 130
        return 1 if self.count("failed") else 0

    @property
    def totals(self) -> dict:
        counts = {s: self.count(s) for s in STATUSES}
        return {"files": len(self.files), **counts, "frames": sum(j.frames for j in self.files),
                "faces": sum(j.faces for j in self.files), "tracks": sum(j.tracks for j in self.files),
                "kept_faces": sum(j.kept_faces for j in self.files), "kept_tracks": sum(j.kept_tracks for j in self.files)}

    def to_dict(self) -> dict:
        return {
            "vidanon_version": __version__,
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(self.seconds, 3),
            "dry_run": self.dry_run,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            "totals": self.totals,
            "config": self.config,
            "files": [j.to_dict() for j in self.files],
        }

    @staticmethod
    def check_path(path: str | os.PathLike) -> None:
        """Before any work: the report can be written there (a file is created and removed)."""
        if not Path(path).resolve().parent.is_dir():
            raise InputError(f"{path}: the report's folder does not exist")
        try:
            temp_beside(path).unlink()
        except OSError as e:
            raise InputError(f"{path}: cannot write the report there ({e.strerror or e})") from None

    def write(self, path: str | os.PathLike) -> None:
        """The JSON report, written atomically (temp file in the same folder, then rename)."""
        try:
            write_atomic(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        except OSError as e:
            raise VidanonError(f"{path}: cannot write the report ({e.strerror or e})") from None

    def summary(self) -> str:
        """A table, one line per file, then the totals."""
        t = self.totals
        parts = [f"{t[s]} {'to do' if s == 'pending' and self.dry_run else s}" for s in STATUSES if t[s]]
        kept = f", {kept_visible(t['kept_faces'], t['kept_tracks'])}" if t["kept_tracks"] else ""
        total = (f"{plural(len(self.files), 'file')}: {', '.join(parts) or 'nothing to do'}; "
                 f"{plural(t['faces'], 'face')} anonymized in {plural(t['tracks'], 'track')}{kept} over "
                 f"{plural(t['frames'], 'frame')}; {self.seconds:.1f} s")
        if not self.files:
            return total
        rows = [("status", "file", "faces", "tracks", "time", "output / reason")]
        for j in self.files:
            ran = j.status == "done"
            if ran or (self.dry_run and j.status == "pending"):
                note = f"{j.output} ({j.reason})" if j.reason and not ran else str(j.output)
                note += f" (redone: {j.redo})" if ran and j.redo else ""
                note += f" ({kept_visible(j.kept_faces, j.kept_tracks)})" if ran and j.kept_tracks else ""
            else:
                note = j.reason
            status = "todo" if self.dry_run and j.status == "pending" else j.status
            rows.append((status, str(j.input), str(j.faces) if ran else "-", str(j.tracks) if ran else "-",
                         f"{j.seconds:.1f}s" if ran else "-", note))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        right = {2, 3, 4}
        lines = ["  ".join((c.rjust(w) if i in right else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths)))
                 + "  " + r[5] for r in rows]
        lines.append(total)
        return "\n".join(line.rstrip() for line in lines)


def _run_job(job: FileJob, anonymize: Callable) -> None:
    """Do one job, recording its outcome on it; a failure is recorded, not raised (Ctrl-C is raised)."""
    aside = video_before = None
    try:
        aside, video_before = _set_aside(job)
        result = anonymize()
    except VidanonError as e:
        job.status, job.reason = "failed", str(e)
        log.debug("%s failed", job.input, exc_info=True)
    except OSError as e:  # disk full, a folder gone: which file, and why, on one line
        job.status, job.reason = "failed", os_error(e, job.output)
        log.debug("%s failed", job.input, exc_info=True)
    except Exception as e:  # a bug or an odd file: record it, keep going; -v shows the traceback
        job.status, job.reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
        log.info("%s failed with an unexpected error", job.input, exc_info=True)
    else:
        job.status, job.reason = "done", ""
        job.frames, job.faces, job.tracks, job.seconds = result.frames, result.faces, result.tracks, result.seconds
        job.kept_faces, job.kept_tracks = result.kept_faces, result.kept_tracks
    finally:  # also on Ctrl-C
        _settle(job, aside, video_before)


def run_file(job: FileJob, key: bytes | str | os.PathLike, config: Config, *, model, detector, progress: bool = True,
             keep_photos: Sequence[str | os.PathLike] = (), still_images: bool = False,
             on_progress: Callable[[int, int], None] | None = None) -> None:
    """Do one pending job with a loaded model and detector, recording its outcome on it (a failure too).

    Skipped when another run holds the job's output or has finished it since planning. On KeyboardInterrupt
    (also one raised by `on_progress`, see anonymize.anonymize_video) nothing is left under a final name and
    the interrupt is raised; the job stays pending.
    """
    from .anonymize import anonymize_video

    with _claimed(job) as ours:
        if not ours:
            job.status, job.reason = "skipped", "another vidanon run is working on it"
        elif is_complete(job.output) and (not job.overwrite or _stat(job.output) != job.seen):
            job.status, job.reason = "skipped", "done meanwhile by another vidanon run"
        else:
            _run_job(job, lambda: anonymize_video(job.input, job.output, key, config, model=model, detector=detector,
                                                  progress=progress, keep_photos=keep_photos, still_images=still_images,
                                                  on_progress=on_progress))


def clear_leftovers(job: FileJob) -> None:
    """Remove what a killed run left of `job`: its hidden temps (video, manifest, sealed sidecar) and lock,
    and a video or sidecar that got its final name but not its manifest. An output that is complete, or
    that another run holds, is left alone."""
    with _claimed(job) as ours:
        if not ours or is_complete(job.output):
            return
        aside = job.manifest.with_name(f".{job.manifest.name}.old")
        if aside.exists() and not job.manifest.exists() and job.output.exists() and _stat(job.output) == job.seen:
            os.replace(aside, job.manifest)  # a killed redo had not touched the old output yet: it stays as it was
        _settle(job, *_set_aside(job))  # removes the temps; keeps a complete output, drops a lone video


def tidy_refused(job: FileJob) -> None:
    """For a job whose input was refused before it ran (check_inputs): what a failed run leaves, no more. Stale
    hidden temps go, a video without its manifest goes, a complete earlier output stays as it was."""
    if not job.output.parent.is_dir():  # nothing there to tidy, and nothing to create for a refused file
        return
    with _claimed(job) as ours:
        if ours:
            _settle(job, *_set_aside(job))


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into it) during run_batch; `.report` says what was done."""

    def __init__(self, report: Report):
        super().__init__("interrupted")
        self.report = report


def run_batch(
    jobs: list[FileJob],
    key: bytes,
    config: Config = Config(),
    *,
    model=None,
    detector=None,
    progress: bool = True,
    on_file: Callable[[FileJob], None] | None = None,
    keep_photos: Sequence[str | os.PathLike] = (),
    still_images: bool = False,
) -> Report:
    """Anonymize the pending jobs in order, loading the model and detector once (only if there is work).

    A file that fails is recorded with its reason and the run goes on. Errors that concern the whole
    run (model not found, no GPU) are raised before any file. On KeyboardInterrupt the file in
    progress is marked interrupted (nothing is left under its final name) and BatchInterrupted,
    carrying the report, is raised. `on_file` is called after each file (for per-file output).
    """
    from .progress import progress_bar

    check_inputs(jobs, still_images)  # before the models load
    for job in jobs:
        if job.refused:  # as for a file that fails while it runs: no stale temps, no video without its manifest
            tidy_refused(job)
    report = Report(jobs, config.to_dict())
    todo = [j for j in jobs if j.status == "pending"]
    t0 = time.monotonic()
    current: FileJob | None = None
    bar = progress_bar(len(todo), "files", "file", progress and bool(todo), position=0)
    try:
        if todo:  # torch and the models only when there is work: a rerun that skips everything is instant
            from .anonymize import detector_for
            from .models import load_model
            from .stages import check_model

            model = model or load_model(config.model, device=config.device, compile=config.compile)
            check_model(model)  # a model that cannot serve stops the run before any file
            detector = detector or detector_for(config)
        for job in todo:
            current = job
            run_file(job, key, config, model=model, detector=detector, progress=progress, keep_photos=keep_photos,
                     still_images=still_images)
            current = None
            bar.update()
            if on_file:
                on_file(job)
    except KeyboardInterrupt:
        report.interrupted = True
        if current is not None and current.status == "pending":
            current.status, current.reason = "interrupted", "interrupted; will be redone by the next run"
        for job in todo:
            if job.status == "pending":
                job.reason = "not started"
        raise BatchInterrupted(report) from None
    finally:
        bar.close()
        report.seconds = time.monotonic() - t0
    return report
