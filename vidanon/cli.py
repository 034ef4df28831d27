"""The `vidanon` command: a thin argparse layer over the library (folder_run, cluster, restore, manifest,
keys, contact_sheet, doctor).

It parses arguments, builds the Config (defaults < --config FILE < flags), calls the library and
prints; the checks live in the library. Heavy modules (torch, diffusers) are imported only by the
commands that need them, so `--help`, `keygen`, `inspect` and `export-key` answer at once.
Progress bars are drawn only on a terminal; -q prints warnings and errors only.

Exit codes: 0 success (skipped files count as success), 1 some file failed, 2 usage errors and
errors that stop a run before any file (bad key file, model not found, bad config), 130 interrupted
(Ctrl-C or SIGTERM). Errors are one line, `vidanon: error: <message>`; -v adds tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from . import cluster, folder_run, keys
from .config import FIELDS, Config, load_config
from .errors import InputError, VidanonError, os_error
from .folder_run import kept_visible, plural
from .manifest import inspect_video, open_tracks, video_for
from .options import build_parser
from .progress import NOTE

log = logging.getLogger("vidanon")

KEY_WARNING = ("Keep it safe and private: whoever holds it can restore every face of every video anonymized "
               "with it, and without it no face can ever be restored. Keep an offline backup.")


# --- output helpers ----------------------------------------------------------------------------


def _err(message: str) -> None:
    from tqdm import tqdm  # through tqdm, so that a line printed while a progress bar is drawn does not break it

    tqdm.write(f"vidanon: error: {message}", file=sys.stderr)


def _info(args, message: str) -> None:
    """Progress chatter on stderr (stdout stays for results); silent with -q."""
    if not args.quiet:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


def _result(args, message: str) -> None:
    """A result line or table on stdout; silent with -q (warnings and errors only)."""
    if not args.quiet:
        print(message)


def _progress(args) -> bool:
    """Progress bars only on a terminal: in a redirected log their escape codes are noise."""
    return not args.quiet and sys.stderr.isatty()


class _TqdmHandler(logging.Handler):
    """Log lines through tqdm.write so they do not break the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _Lowercase(logging.Formatter):
    """`vidanon: warning: ...`, like the error lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


def _setup_logging(verbose: int, quiet: bool) -> None:
    # Notes (progress.NOTE) at the default verbosity; -q: warnings and errors only.
    level = logging.WARNING if quiet and not verbose else [NOTE, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler = _TqdmHandler()
    fmt = "vidanon: %(levelname)s: %(message)s" if verbose == 0 else "%(name)s: %(levelname)s: %(message)s"
    handler.setFormatter(_Lowercase(fmt))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# --- commands ----------------------------------------------------------------------------------


def cmd_keygen(args) -> int:
    if args.if_missing and Path(args.output).exists():
        keys.load_master_key(args.output)  # it must be a master key to be kept in its place
        _result(args, f"kept the existing master key in {args.output} (--if-missing never overwrites a key)")
        return 0
    keys.save_master_key(args.output, keys.generate_master_key())  # refuses an existing file
    _result(args, f"wrote a new master key to {args.output} (mode 0600)")
    log.warning(KEY_WARNING)
    return 0


def _config_from_args(args) -> Config:
    flags = {name: getattr(args, name, None) for name in FIELDS}
    return load_config(args.config, **flags)


def cmd_anonymize(args) -> int:
    from .device import check_device
    from .stages import check_output_folder
    from .weights import resolve_model_name

    # Everything is checked before anything is written: settings, key, device, inputs, model name, folders.
    cfg = _config_from_args(args)
    master = keys.load_master_key(args.key_file)
    check_device(cfg.device)
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a folder")
    check_output_folder(outdir)
    jobs = folder_run.plan(args.inputs, outdir, cfg, patterns=args.glob, overwrite=args.overwrite)
    folder_run.check_inputs(jobs, still_images=args.still_images)  # a file that is no video is refused now, not after the models load
    resolve_model_name(cfg.model)
    if cfg.index_identities or args.keep_photo:  # the identity extra and the photos, before any file
        from .identity import check_photos
        check_photos(cfg, args.keep_photo or ())
    if args.report:  # a report that cannot be written fails now, not after all the work
        folder_run.Report.check_path(args.report)
    if not jobs:
        log.warning("no video files found in %s (looked for %s)", ", ".join(args.inputs),
                    " ".join(args.glob or folder_run.DEFAULT_PATTERNS))
    if args.dry_run:
        report = folder_run.Report(jobs, cfg.to_dict(), dry_run=True)
        _result(args, report.summary())
        if args.report:
            report.write(args.report)
        return report.exit_code

    def on_file(job) -> None:
        if job.status == "done":
            redone = f"; redone: {job.redo}" if job.redo else ""
            kept = f"; {kept_visible(job.kept_faces, job.kept_tracks)}" if job.kept_tracks else ""
            _info(args, f"done: {job.input} -> {job.output} ({plural(job.faces, 'face')} anonymized in "
                        f"{plural(job.tracks, 'track')}{kept}, {job.seconds:.1f} s{redone})")
        else:  # most reasons already start with the file's name
            reason = job.reason if job.reason.startswith(str(job.input)) else f"{job.input}: {job.reason}"
            if job.status == "failed":
                _err(reason)  # -q silences progress and summaries, never an error
            else:
                _info(args, f"{job.status}: {reason}")

    for job in jobs:
        if job.status != "pending":
            on_file(job)
    try:
        keep = args.keep_photo or ()
        if (ray := cluster.options_from(args)) is not None:  # the key file's path: each Ray worker reads it
            report = cluster.run_on_ray(jobs, args.key_file, cfg, ray, progress=_progress(args), on_file=on_file,
                                        keep_photos=keep, still_images=args.still_images)
        else:
            report = folder_run.run_batch(jobs, master, cfg, progress=_progress(args), on_file=on_file, keep_photos=keep,
                                          still_images=args.still_images)
    except folder_run.BatchInterrupted as stop:
        report = stop.report
        _result(args, report.summary())
        _err("interrupted: nothing partial is left under a final output name; "
             "run the same command again to do the rest (finished files are skipped)")
    else:
        _result(args, report.summary())
    if args.report:
        report.write(args.report)
    return report.exit_code


def cmd_inspect(args) -> int:
    from .contact_sheet import track_rows, write_contact_sheet

    man, video = inspect_video(args.video), video_for(args.video)
    rows = track_rows(man)
    h = man.header
    if args.json:
        print(json.dumps({"video": str(video), "video_id": h.video_id.hex(), **h.video.to_json(), "model": h.model.name,
                          "steps": h.steps, "checked": "structure and track list; authenticity needs the key",
                          "tracks": rows}, indent=2))
    else:
        v = h.video
        kept = sum(r["kept"] for r in rows)
        print(f"{video}: {v.width}x{v.height}, {plural(v.frames, 'frame')}, {plural(len(rows), 'track')}"
              f"{f' ({kept} kept visible)' if kept else ''}; "
              f"model {h.model.name}, {h.steps} steps")
        table = [("track", "first", "last", "frames", "face px (mean w x h)", "faces shown")]
        table += [(str(r["id"]), r["first_time"], r["last_time"], str(r["frames"]),
                   f"{r['mean_width']:.0f} x {r['mean_height']:.0f}",
                   f"KEPT VISIBLE (distance {r['kept_distance']:.3f} to the photo)" if r["kept"] else "anonymized")
                  for r in rows]
        widths = [max(len(r[i]) for r in table) for i in range(6)]
        for r in table:
            print("  ".join(c.rjust(w) if i in (0, 3) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        print("(structure and track list checked; authenticity needs the key: deanonymize and export-key check it)")
    if args.contact_sheet:
        if not video.is_file():
            raise InputError(f"{video}: the anonymized video is needed for a contact sheet; pass the video, not its manifest")
        write_contact_sheet(video, args.contact_sheet, man)
        _info(args, f"wrote the contact sheet to {args.contact_sheet}")
    return 0


def cmd_export_key(args) -> int:
    man, video = inspect_video(args.video), video_for(args.video)
    master = keys.load_master_key(args.key_file)
    man.track(args.track)  # the track must exist
    tk = open_tracks(man, master, [args.track])[args.track]  # the master key must be the one this video was made with
    keys.save_track_key(args.output, keys.TrackKey(man.video_id, args.track, tk))
    _result(args, f"wrote the key of track {args.track} of {video} to {args.output} (mode 0600)")
    log.warning("It restores that one person in this one video and nothing else; give it only to who may see them.")
    return 0


def cmd_deanonymize(args) -> int:
    from .restore import deanonymize_video

    src = Path(args.video)
    # A bad key file is the commonest mistake: answered before anything else.
    key = keys.load_master_key(args.key_file) if args.key_file else keys.load_track_key(args.track_key)
    dst = Path(args.output) / src.name
    # The machine restoring may not be the one that anonymized: model, device and batch size may be given.
    result = deanonymize_video(src, dst, key, args.track or None, model_name=args.model, device=args.device,
                               batch_size=args.batch_size, compile=args.compile, progress=_progress(args),
                               overwrite=args.overwrite, method=args.method)
    how = "from their sealed originals (exact)" if result.method == "sealed" else "by the key flip (approximate)"
    _result(args, f"restored {plural(result.faces, 'face')} of {plural(result.tracks, 'track')} {how} into {dst} "
                  f"({result.seconds:.1f} s)")
    log.warning("The output shows real faces: handle it as personal data.")
    return 0


def cmd_models(args) -> int:
    from .doctor import model_rows

    if args.action == "pull":
        from .doctor import pull

        folder = pull(args.name)
        print(f"{args.name} is built in; nothing to fetch" if folder is None else f"{args.name} is in the cache: {folder}")
        return 0
    table = [("name", "source", "licence", "cached", "about")]
    table += [(m.name, m.source, m.licence, "built in" if m.built_in else f"yes ({m.cached})" if m.cached else "no", m.about)
              for m in model_rows()]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    print("\nFetch one with `vidanon models pull NAME` (needs the network once; runs offline afterwards).")
    return 0


def cmd_doctor(args) -> int:
    from .doctor import checks

    rows = checks()
    for row in rows:
        print(f"{row.name:<24} {row.value}")
    ok = all(row.ok for row in rows)
    print("\nall essentials are in place" if ok else "\nsome essentials are missing (see PROBLEM above)")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    commands = {"keygen": cmd_keygen, "anonymize": cmd_anonymize, "inspect": cmd_inspect, "export-key": cmd_export_key,
                "deanonymize": cmd_deanonymize, "doctor": cmd_doctor, "models": cmd_models}
    args = build_parser(commands).parse_args(argv)
    verbose = getattr(args, "verbose", 0)
    _setup_logging(verbose, args.quiet)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)  # a kill stops like Ctrl-C: temps cleaned, summary printed
    except ValueError:  # not the main thread (main() called from a worker): leave signals alone
        pass
    try:
        return args.func(args)
    except VidanonError as e:
        if verbose:
            traceback.print_exc()
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # `vidanon ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # disk full, permissions: the file and the cause, on one line (-v: the traceback)
        if verbose:
            traceback.print_exc()
        _err(os_error(e, getattr(args, "output", None) or "vidanon"))
        return 1
    except Exception as e:
        if verbose:
            traceback.print_exc()
        _err(f"{type(e).__name__}: {e}".splitlines()[0] + ("" if verbose else " (run with -v for the traceback)"))
        return 1
