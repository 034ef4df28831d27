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

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from . import __version__, cluster, folder_run, keys
from .config import FIELDS, Config, load_config
from .detect import DETECTOR_NAMES, SCRFD_LICENCE_NOTE
from .errors import InputError, VidanonError, os_error
from .folder_run import plural
from .manifest import SUFFIX, inspect_video, open_tracks, video_for
from .options import identity_options

log = logging.getLogger("vidanon")
D = Config()  # the defaults shown in --help

KEY_WARNING = ("Keep it safe and private: whoever holds it can restore every face of every video anonymized "
               "with it, and without it no face can ever be restored. Keep an offline backup.")


# --- output helpers ----------------------------------------------------------------------------


def _err(message: str) -> None:
    print(f"vidanon: error: {message}", file=sys.stderr)


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
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler = _TqdmHandler()
    fmt = "vidanon: %(levelname)s: %(message)s" if verbose == 0 else "%(name)s: %(levelname)s: %(message)s"
    handler.setFormatter(_Lowercase(fmt))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _track_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"track ids are whole numbers >= 0 (see `vidanon inspect`), not {text!r}")
    return int(text)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# --- commands ----------------------------------------------------------------------------------


def cmd_keygen(args) -> int:
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
            _info(args, f"done: {job.input} -> {job.output} ({plural(job.faces, 'face')}, {plural(job.tracks, 'track')}, "
                        f"{job.seconds:.1f} s{redone})")
        else:  # most reasons already start with the file's name
            reason = job.reason if job.reason.startswith(str(job.input)) else f"{job.input}: {job.reason}"
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
        print(f"{video}: {v.width}x{v.height}, {plural(v.frames, 'frame')}, {plural(len(rows), 'track')}; "
              f"model {h.model.name}, {h.steps} steps")
        table = [("track", "first", "last", "frames", "face px (mean w x h)")]
        table += [(str(r["id"]), r["first_time"], r["last_time"], str(r["frames"]),
                   f"{r['mean_width']:.0f} x {r['mean_height']:.0f}") for r in rows]
        widths = [max(len(r[i]) for r in table) for i in range(5)]
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


# --- the parser --------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # On the top parser and on each command; SUPPRESS keeps a command's default from hiding `vidanon -v cmd`.
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="count", help="more detail (-vv: debug); tracebacks on errors",
                        **({"default": 0} if top else default))
    parser.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only",
                        **({"default": False} if top else default))


class _Formatter(argparse.HelpFormatter):
    """Wraps each paragraph line; keeps lines that start with two spaces (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n".join(indent + line if not line or line.startswith("  ") else fill(line, width, indent)
                         for line in text.splitlines())


def _model_options(p: argparse.ArgumentParser, restore: bool = False) -> None:
    model_default = "the model recorded in the manifest" if restore else D.model
    p.add_argument("--model", metavar="NAME",
                   help="diffusion model: an alias (see `vidanon models`), a hub id owner/repo[/subfolder], "
                        f"a local diffusers folder, or testing:gaussian (no realistic faces) (default: {model_default})")
    p.add_argument("--device", metavar="DEV", help=f"auto, cpu, cuda or cuda:N (default: {D.device})")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help=f"torch.compile the UNet, for long GPU runs (default: {'yes' if D.compile else 'no'})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"faces per diffusion batch; 0 = auto: 32 on GPU, 4 on CPU (default: {D.batch_size})")


def build_parser() -> argparse.ArgumentParser:
    fmt = _Formatter
    parser = argparse.ArgumentParser(
        prog="vidanon", formatter_class=fmt,
        description="Anonymize faces in video so that a key holder can restore one person at a time.",
        epilog="typical use:\n"
               "  vidanon keygen -o case.key\n"
               "  vidanon anonymize footage/ -o anon/ --key-file case.key\n"
               "  vidanon inspect anon/cam1.mp4 --contact-sheet cam1.png\n"
               "  vidanon export-key anon/cam1.mp4 --key-file case.key --track 7 -o track7.key\n"
               "  vidanon deanonymize anon/cam1.mp4 --track-key track7.key -o restored/\n")
    parser.add_argument("--version", action="version", version=f"vidanon {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("keygen", help="make a new master key file", formatter_class=fmt,
                       description="Write a new random 256-bit master key to FILE (mode 0600). "
                                   "Refuses to overwrite an existing file. The key is never printed.")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the key (must not exist)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("anonymize", help="anonymize every face of videos and folders of videos", formatter_class=fmt,
                       description="Anonymize every face of each INPUT (a video, or a folder searched recursively). "
                                   "The output tree mirrors the input: one folder's tree goes under OUTDIR, several folders each go "
                                   "under OUTDIR/<folder name>; each output video gets its "
                                   f"manifest <stem>{SUFFIX} beside it. Complete outputs are skipped on a rerun, "
                                   "so an interrupted run is finished by running the same command again.",
                       epilog="settings: defaults < --config FILE < flags; see configs/default.yaml.\n"
                              "exit codes:\n  0 all done or skipped, 1 some file failed, 2 nothing could start, 130 interrupted")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files and folders")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (not an input folder)")
    p.add_argument("--key-file", required=True, metavar="FILE", help="master key file (make one with `vidanon keygen`)")
    p.add_argument("--glob", action="append", metavar="PATTERN",
                   help="file name pattern to pick in folders, repeatable, case-insensitive "
                        f"(default: {' '.join(folder_run.DEFAULT_PATTERNS)})")
    _model_options(p)
    p.add_argument("--steps", type=int, metavar="N",
                   help=f"DDIM steps; fewer is faster, restoration fidelity falls with fewer (default: {D.steps})")
    p.add_argument("--detector", choices=DETECTOR_NAMES,
                   help=f"face detector: centerface (offline, MIT) or scrfd; {SCRFD_LICENCE_NOTE} (default: {D.detector})")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="detector score threshold: every face scoring at least X is anonymized and starts a track; lower "
                        "finds more faces and more false ones (centerface on 42 face-free images: 0.2 gave 5 false "
                        "detections, 0.1 gave 32) (default: the detector's own, 0.2 for centerface)")
    p.add_argument("--floor", type=float, metavar="X",
                   help="weak candidates scoring from X up to the threshold continue a tracked face but never start "
                        "one: they keep small faces in dark, noisy video covered; X = the threshold turns them off; "
                        "below 0.05 noise starts to pull tracks off faces (docs/tracking.md) "
                        f"(default: {D.floor})")
    p.add_argument("--bridge", type=int, metavar="N",
                   help=f"frames a tracked face may be covered by weak candidates alone (default: {D.bridge})")
    p.add_argument("--min-face", type=int, metavar="PX",
                   help="smallest face height to find, px; the CPU user's speed knob: detection time grows about as "
                        "1/PX² (1080p on 2 cores: 20 px 1.2 s, 40 px 0.3 s per frame), faces smaller than PX may be "
                        f"missed (default: {D.min_face})")
    p.add_argument("--mask", choices=("auto", "parser", "landmarks"),
                   help="face mask: auto = face parser when its weights are cached (`vidanon models pull face-parser`), else landmarks; parser downloads them if missing "
                        f"(default: {D.mask})")
    p.add_argument("--parser-weights", metavar="FILE", help="BiSeNet face-parsing ONNX file (default: the user cache)")
    p.add_argument("--lossless", action=argparse.BooleanOptionalAction, default=None,
                   help="lossless RGB H.264 (libx264rgb qp 0) for evidential archives and the best restoration; "
                        "files are about 10x larger and use H.264's High 4:4:4 Predictive profile, which many "
                        f"players and browsers cannot play (default: {'yes' if D.lossless else 'no, H.264 at --crf'})")
    p.add_argument("--crf", type=int, metavar="N", help=f"H.264 quality when not lossless, 0-51 (default: {D.crf})")
    p.add_argument("--seal", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each face's original pixels, encrypted under that person's own track key, in "
                        "<stem>.vidanon.sealed beside the manifest, so a key holder restores the face exactly as "
                        "recorded; the release then carries the real faces, encrypted per person (adds about 20-30 %% "
                        "of a lossless video's size, docs/benchmarks.md); --no-seal: no sidecar, restoration by the "
                        f"key flip only, approximate (default: {'seal' if D.seal else 'no sidecar'})")
    p.add_argument("--preset", metavar="NAME", help=f"x264 preset (default: {D.preset})")
    identity_options(p)
    p.add_argument("--config", metavar="FILE", help="YAML settings file (default: none; built-in defaults)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that are already complete (default: skip them)")
    p.add_argument("--dry-run", action="store_true", help="list what would be done and skipped; write no video or manifest")
    p.add_argument("--report", metavar="FILE", help="also write the summary as JSON to FILE (default: none)")
    p.add_argument("--still-images", action="store_true",
                   help="anonymize a still image (PNG, JPEG) as a one-frame video (default: refuse it)")
    cluster.add_arguments(p)
    _common(p)
    p.set_defaults(func=cmd_anonymize)

    p = sub.add_parser("inspect", help="list the tracks of an anonymized video; contact sheet", formatter_class=fmt,
                       description="Read the manifest of an anonymized VIDEO and list its tracks (id, first and "
                                   "last time, frames, mean face size). --contact-sheet draws each track's "
                                   "anonymized face at up to 4 moments, so a track can be told apart without "
                                   "seeing a real face.")
    p.add_argument("video", metavar="VIDEO", help=f"anonymized video (or its {SUFFIX} manifest)")
    p.add_argument("--json", action="store_true", help="machine-readable output (default: a table)")
    p.add_argument("--contact-sheet", metavar="PNG", help="also write the contact sheet picture (default: none)")
    _common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("export-key", help="write the key of one person (track) of one video", formatter_class=fmt,
                       description="Derive the key of track ID of VIDEO from the master key and write it to "
                                   "TRACKKEY (mode 0600). It restores that track of that video and nothing else.")
    p.add_argument("video", metavar="VIDEO", help="anonymized video")
    p.add_argument("--key-file", required=True, metavar="FILE", help="master key file the video was made with")
    p.add_argument("--track", required=True, type=_track_id, metavar="ID", help="track id (see `vidanon inspect`)")
    p.add_argument("-o", "--output", required=True, metavar="TRACKKEY", help="where to write the track key (must not exist)")
    _common(p)
    p.set_defaults(func=cmd_export_key)

    p = sub.add_parser("deanonymize", help="restore all or chosen people of an anonymized video", formatter_class=fmt,
                       description="Restore the faces of an anonymized VIDEO into OUTDIR/<name>: all tracks with "
                                   "the master key, or the chosen --track(s); a track key restores its one track. "
                                   "Other faces stay anonymized. A wrong key is refused before anything is written. "
                                   "Steps, diffusion schedule, masks and encoding (lossless or crf) come from the "
                                   "manifest, as the video was made (a lossy one is restored at crf 8 or better: "
                                   "restored faces are evidence); only the model, device and batch size may be "
                                   "chosen here. The output is readable by its owner only (mode 0600).")
    p.add_argument("video", metavar="VIDEO", help="anonymized video (its manifest must lie beside it)")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--key-file", metavar="FILE", help="master key file")
    which.add_argument("--track-key", metavar="FILE", help="single-track key file (from `vidanon export-key`)")
    p.add_argument("--track", type=_track_id, action="append", metavar="ID",
                   help="track to restore, repeatable (default: all tracks the key opens)")
    p.add_argument("--method", choices=("auto", "sealed", "flip"), default="auto",
                   help="sealed: put back the original pixels sealed beside the manifest (exact; needs the "
                        ".vidanon.sealed file); flip: the paper's key flip (approximate; needs only the video, "
                        "manifest and key); auto: sealed when the sidecar is there (default: auto)")
    _model_options(p, restore=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    _common(p)
    p.set_defaults(func=cmd_deanonymize)

    from .find import add_command  # `vidanon find`: its module holds its options and its printing
    add_command(sub, fmt, _common)

    p = sub.add_parser("doctor", help="check the installation: GPU, encoders, models", formatter_class=fmt,
                       description="Report versions, GPU, encoders and which models are cached, offline.")
    _common(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("models", help="list the known models; `models pull NAME` fetches one", formatter_class=fmt,
                       description="List the known models with source, licence and whether they are cached.")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    pull = msub.add_parser("pull", help="download a model into the cache", formatter_class=fmt,
                           description="Download model NAME (or face-parser) into the local cache.")
    pull.add_argument("name", metavar="NAME", help="a name from `vidanon models`, or a hub id owner/repo[/subfolder]")
    _common(pull)
    _common(p)
    p.set_defaults(func=cmd_models, action=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
