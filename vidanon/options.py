"""Command-line options that belong to one feature, kept beside cli.py so that it stays a thin list of commands."""

from __future__ import annotations

import argparse

from .config import Config
from .detect import ARCFACE_LICENCE_NOTE


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
