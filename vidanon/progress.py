"""What a run shows its user while it works: progress bars and notes.

A bar is drawn only when asked for and stderr is a terminal: in a redirected log its escape codes are noise.
A note is a remark worth one line at the default verbosity, never under -q (cli.py sets the levels), and at most
once per process: a folder run of a thousand files says it once, not a thousand times.
"""

from __future__ import annotations

import functools
import logging
import sys

from tqdm import tqdm

NOTE = 25  # between INFO and WARNING
logging.addLevelName(NOTE, "NOTE")


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True, **kw) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or not sys.stderr.isatty(), **kw)


@functools.cache
def note(logger_name: str, message: str) -> None:
    logging.getLogger(logger_name).log(NOTE, message)
