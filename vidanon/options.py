"""The command line's options: every command's flags, their help and defaults (cli.py runs the commands).

Flags named like a Config field become that field (cli._config_from_args); the defaults shown in --help are
Config's own, so the help cannot drift from what a run does.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from . import __version__, cluster, folder_run
from .config import Config
from .detect import ARCFACE_LICENCE_NOTE, DETECTOR_NAMES, SCRFD_LICENCE_NOTE
from .manifest import SUFFIX

D = Config()  # the defaults shown in --help


def _track_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"track ids are whole numbers >= 0 (see `vidanon inspect`), not {text!r}")
    return int(text)




def identity_options(p: argparse.ArgumentParser) -> None:
    """`anonymize`'s identity options (identity.py): they map to Config fields by name, but --keep-photo, which
    names a person's photo and must not be recorded in the manifest."""
    p.add_argument("--index-identities", action=argparse.BooleanOptionalAction, default=None, help="seal a face "
                   "embedding of each track under its own key, for `vidanon find` (a biometric template: made only when "
                   "asked; needs pip install 'vidanon[identity]') (default: no)")
    p.add_argument("--keep-photo", action="append", metavar="FILE", help="leave visible the tracks matching this photo "
                   "of one face, repeatable (a subject-access request); costs a first pass over each video (default: none)")
    p.add_argument("--recognizer", choices=("dlib", "arcface"), help="face recognizer: dlib (dlib's ResNet descriptor, "
                   f"CC0 model files) or arcface; {ARCFACE_LICENCE_NOTE} (default: {Config().recognizer})")


# --- the commands' options --------------------------------------------------------------------------------


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
                   help="torch.compile the UNet and VQ autoencoder: faster on a GPU after a compile of about a minute, "
                        "paid once per machine (inductor's cache goes to vidanon's cache folder unless "
                        "TORCHINDUCTOR_CACHE_DIR is set); --no-compile turns it off "
                        f"(default: {'yes' if D.compile else 'no' if D.compile is False else 'on a GPU, not on a CPU'})")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help=f"faces per diffusion batch; 0 = auto: 32 on GPU, 4 on CPU (default: {D.batch_size})")


def build_parser(commands: Mapping[str, Callable]) -> argparse.ArgumentParser:
    """The `vidanon` parser; `commands` maps each command's name to the function that runs it (cli.py)."""
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
                                   "Refuses to overwrite an existing file (--if-missing keeps it). The key is never printed.")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the key (must not exist)")
    p.add_argument("--if-missing", action="store_true", help="if FILE already holds a master key, keep it and say so "
                   "(never overwrites; a file that is not a master key is still an error) (default: refuse)")
    p.set_defaults(func=commands["keygen"])

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
    p.add_argument("--detect-blur", type=float, metavar="SIGMA",
                   help="blur the frames the detector is given (never the output) by a Gaussian of SIGMA px: finds "
                        "more small faces in dark, noisy video (docs/benchmarks.md); 0 turns it off "
                        f"(default: {D.detect_blur})")
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
                        "files are about 12x larger and use H.264's High 4:4:4 Predictive profile, which many "
                        f"players and browsers cannot play (default: {'yes' if D.lossless else 'no, H.264 at --crf'})")
    p.add_argument("--crf", type=int, metavar="N", help=f"H.264 quality when not lossless, 0-51 (default: {D.crf})")
    p.add_argument("--seal", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each face's original pixels, encrypted under that person's own track key, in "
                        "<stem>.vidanon.sealed beside the manifest, so a key holder restores the face exactly as "
                        "recorded; the release then carries the real faces, encrypted per person (19.8 %% of a lossless "
                        "video's size on the benchmark clip of docs/benchmarks.md); --no-seal: no sidecar, restoration by the "
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
    p.set_defaults(func=commands["anonymize"])

    p = sub.add_parser("inspect", help="list the tracks of an anonymized video; contact sheet", formatter_class=fmt,
                       description="Read the manifest of an anonymized VIDEO and list its tracks (id, first and "
                                   "last time, frames, mean face size). --contact-sheet draws each track's "
                                   "anonymized face at up to 4 moments, so a track can be told apart without "
                                   "seeing a real face.")
    p.add_argument("video", metavar="VIDEO", help=f"anonymized video (or its {SUFFIX} manifest)")
    p.add_argument("--json", action="store_true", help="machine-readable output (default: a table)")
    p.add_argument("--contact-sheet", metavar="PNG", help="also write the contact sheet picture (default: none)")
    _common(p)
    p.set_defaults(func=commands["inspect"])

    p = sub.add_parser("export-key", help="write the key of one person (track) of one video", formatter_class=fmt,
                       description="Derive the key of track ID of VIDEO from the master key and write it to "
                                   "TRACKKEY (mode 0600). It restores that track of that video and nothing else.")
    p.add_argument("video", metavar="VIDEO", help="anonymized video")
    p.add_argument("--key-file", required=True, metavar="FILE", help="master key file the video was made with")
    p.add_argument("--track", required=True, type=_track_id, metavar="ID", help="track id (see `vidanon inspect`)")
    p.add_argument("-o", "--output", required=True, metavar="TRACKKEY", help="where to write the track key (must not exist)")
    _common(p)
    p.set_defaults(func=commands["export-key"])

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
    p.set_defaults(func=commands["deanonymize"])

    from .find import add_command  # `vidanon find`: its module holds its options and its printing
    add_command(sub, fmt, _common)

    p = sub.add_parser("doctor", help="check the installation: GPU, encoders, models", formatter_class=fmt,
                       description="Report versions, GPU, encoders and which models are cached, offline.")
    _common(p)
    p.set_defaults(func=commands["doctor"])

    p = sub.add_parser("models", help="list the known models; `models pull NAME` fetches one", formatter_class=fmt,
                       description="List the known models with source, licence and whether they are cached.")
    msub = p.add_subparsers(dest="action", metavar="ACTION")
    pull = msub.add_parser("pull", help="download a model into the cache", formatter_class=fmt,
                           description="Download model NAME (or face-parser) into the local cache.")
    pull.add_argument("name", metavar="NAME", help="a name from `vidanon models`, or a hub id owner/repo[/subfolder]")
    _common(pull)
    _common(p)
    p.set_defaults(func=commands["models"], action=None)
    return parser
