"""`vidanon find`: which tracks of many anonymized videos are the person in a photo (identity.py).

It walks folders of anonymized outputs, checks each manifest against the master key, unseals each
track's identity embedding (made by `anonymize --index-identities`) and ranks the tracks by distance to
the closest photo. It restores no face: the user then exports the key of the tracks chosen, or restores
them. Files that are not vidanon outputs, manifests the key does not open, and videos anonymized without
identities are skipped, each with a note.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import keys
from .contact_sheet import face_seconds, hms, make_contact_sheet
from .errors import InputError, KeyFileError, VidanonError, WrongKeyError
from .folder_run import VIDEO_EXTENSIONS
from .identity import load_recognizer, photo_embedding, unseal_identity
from .manifest import SUFFIX, Manifest, manifest_path, open_tracks, read_manifest, video_for


@dataclass(frozen=True)
class Hit:
    """One track of one video, and how close it is to the closest photo."""

    video: Path
    track: int
    first_time: str
    last_time: str
    distance: float
    same: bool  # the recognizer calls it the same person (distance <= its threshold)

    def to_dict(self) -> dict:
        return {"video": str(self.video), "track": self.track, "first_time": self.first_time, "last_time": self.last_time,
                "distance": round(self.distance, 4), "same": self.same}


@dataclass
class Found:
    hits: list[Hit] = field(default_factory=list)  # closest first
    notes: list[str] = field(default_factory=list)  # what was skipped, and why
    threshold: float = 0.0
    manifests: dict[Path, Manifest] = field(default_factory=dict, repr=False)  # video -> its manifest, for the sheet


def master_for_find(path: str | os.PathLike) -> bytes:
    """The master key; a track key is refused with a clear message (it opens one person of one video)."""
    key = keys.load_key(path)
    if isinstance(key, keys.TrackKey):
        raise KeyFileError(f"{path}: this is a single-track key; find needs the master key the videos were "
                           "anonymized with (a track key opens one person in one video only)")
    return key


def walk(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The manifests under `inputs` (files or folders, searched recursively), and a note for each video
    that has none beside it (not a vidanon output)."""
    manifests, notes, seen = [], [], set()
    for item in map(Path, inputs):
        if not item.exists():
            raise InputError(f"{item}: no such file or folder")
        files = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
        for path in files:
            if path.name.startswith("."):
                continue
            if path.name.endswith(SUFFIX):
                if path not in seen:
                    seen.add(path)
                    manifests.append(path)
            elif path.suffix.lower().lstrip(".") in VIDEO_EXTENSIONS:
                mpath = manifest_path(path)
                if not mpath.exists():
                    notes.append(f"{path}: skipped: not a vidanon output (no {mpath.name} beside it)")
                elif item.is_file() and mpath not in seen:
                    seen.add(mpath)
                    manifests.append(mpath)
    return manifests, notes


def find(photos: Sequence[str | os.PathLike], key: bytes, inputs: Sequence[str | os.PathLike], *,
         recognizer: str = "dlib", detector=None) -> Found:
    """Rank every indexed track under `inputs` by distance to the closest of `photos`.

    WrongKeyError when the key opens none of the manifests found; a manifest it does not open among
    others that it does is skipped with a note."""
    rec = load_recognizer(recognizer)
    if detector is None:
        from .detect import make_detector

        detector = make_detector("centerface")
    wanted = [photo_embedding(p, rec, detector) for p in photos]
    manifest_files, notes = walk(inputs)
    found = Found(notes=notes, threshold=rec.threshold)
    refused = opened = 0
    for mpath in manifest_files:
        try:
            man = read_manifest(mpath)
            tkeys = open_tracks(man, key)
        except WrongKeyError:
            refused += 1
            found.notes.append(f"{mpath}: skipped: the key does not open it (wrong key)")
            continue
        except VidanonError as e:
            found.notes.append(f"skipped: {e}")
            continue
        opened += 1
        scheme = man.header.identity
        indexed = [t for t in man.tracks if t.identity is not None]
        if scheme is None or not indexed:
            found.notes.append(f"{mpath}: no identities indexed (anonymize with --index-identities to make them)")
            continue
        if scheme.recognizer != rec.name:
            found.notes.append(f"{mpath}: skipped: indexed with {scheme.recognizer}, not {rec.name}")
            continue
        video = video_for(mpath)
        found.manifests[video] = man
        for t in indexed:
            emb = unseal_identity(tkeys[t.id], man.video_id, t.id, t.identity)
            d = min(rec.distance(emb, w) for w in wanted)
            found.hits.append(Hit(video, t.id, hms(face_seconds(man, t.faces[0])) if t.faces else "",
                                  hms(face_seconds(man, t.faces[-1])) if t.faces else "", d, d <= rec.threshold))
    if refused and not opened:
        raise WrongKeyError(f"wrong key: it opens none of the {refused} anonymized video(s) found; "
                            "find needs the master key they were anonymized with")
    found.hits.sort(key=lambda h: h.distance)
    return found


def write_match_sheet(found: Found, hits: Sequence[Hit], path: str | os.PathLike) -> Path:
    """A contact sheet of the hits' *anonymized* faces and times: one block per video, closest first."""
    import cv2

    from .atomic import write_atomic

    blocks, order = [], []
    for h in hits:
        if h.video not in order:
            order.append(h.video)
    for video in order:
        man = found.manifests[video]
        ids = {h.track for h in hits if h.video == video}
        blocks.append(make_contact_sheet(video, replace(man, tracks=tuple(t for t in man.tracks if t.id in ids))))
    if not blocks:
        blocks = [np.full((40, 400, 3), 38, np.uint8)]
    width = max(b.shape[1] for b in blocks)
    sheet = np.vstack([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=38) for b in blocks])
    ok, png = cv2.imencode(".png", sheet)
    if not ok:
        raise VidanonError(f"{path}: could not encode the contact sheet as PNG")
    write_atomic(Path(path), png.tobytes())
    return Path(path)


# --- the command -------------------------------------------------------------------------------


def add_command(sub, formatter, common) -> None:
    """`vidanon find` on the CLI's subparsers (cli.py stays a thin list of commands)."""
    p = sub.add_parser("find", help="which tracks of anonymized videos are the person in a photo", formatter_class=formatter,
                       description="Walk the anonymized outputs under each FOLDER, unseal each track's identity "
                                   "(made by `anonymize --index-identities`) with the master key, and list the tracks "
                                   "closest to the photo(s): video, track, time range, distance, and whether the "
                                   "recognizer calls it the same person. Restores no face: export the key of the "
                                   "tracks chosen (`vidanon export-key`), or restore them (`vidanon deanonymize`). "
                                   "Needs the identity extra: pip install 'vidanon[identity]'.")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="anonymized outputs: folders (searched recursively) or videos")
    p.add_argument("--photo", action="append", required=True, metavar="FILE",
                   help="a photo showing exactly one face of the person, repeatable")
    p.add_argument("--key-file", required=True, metavar="MASTER", help="the master key file the videos were made with")
    p.add_argument("--recognizer", choices=("dlib", "arcface"), default="dlib",
                   help="the recognizer the videos were indexed with (default: dlib)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="list the N closest tracks (default: 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output (default: a table)")
    p.add_argument("--contact-sheet", metavar="PNG",
                   help="also draw the matches' anonymized faces and times (the tracks called the same person, "
                        "else the 3 closest)")
    common(p)
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    import json
    import sys

    key = master_for_find(args.key_file)
    found = find(args.photo, key, args.folders, recognizer=args.recognizer)
    hits = found.hits[: max(args.top, 0)]
    for note in found.notes:
        print(f"vidanon: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"threshold": found.threshold, "matches": [h.to_dict() for h in hits], "notes": found.notes}, indent=2))
    elif not args.quiet:
        print(f"{len(found.hits)} indexed track(s); same person: distance <= {found.threshold}")
        rows = [("distance", "same", "track", "first", "last", "video")]
        rows += [(f"{h.distance:.3f}", "yes" if h.same else "no", str(h.track), h.first_time, h.last_time, str(h.video))
                 for h in hits]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if args.contact_sheet:
        shown = [h for h in hits if h.same] or hits[:3]
        write_match_sheet(found, shown, args.contact_sheet)
        if not args.quiet:
            print(f"wrote the contact sheet of {len(shown)} track(s) to {args.contact_sheet}", file=sys.stderr)
    return 0
