"""torch.compile for the diffusion core: on by default where the core runs on a GPU, compiled once per machine.

On an H200, compiling the UNet took the core from 24 % to 40 % of the matmul ceiling (docs/benchmarks.md); on a
CPU, inductor's C++ build takes minutes and gains little, so compiling is off there unless asked for. A compile
costs tens of seconds per batch shape; inductor keeps what it built in a cache folder, which is by default under
the system's temporary folder (lost on reboot, or with a fresh container), so vidanon points it at its own cache
folder, where the next run on the machine finds it. A TORCHINDUCTOR_CACHE_DIR the user set is left as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from .weights import vidanon_cache

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # read by inductor at each compile (torch._inductor.runtime.cache_dir_utils)


def wanted(requested: bool | None, device) -> bool:
    """Whether to compile: as requested, or (None) when the core runs on a CUDA GPU."""
    return device.type == "cuda" if requested is None else bool(requested)


def cache_dir() -> Path:
    """The folder inductor caches compiled graphs and kernels in: TORCHINDUCTOR_CACHE_DIR if the user set it,
    else `<vidanon cache>/torch-compile` (set in the environment, where inductor and its workers read it).
    Inductor writes its own temporary default into the environment once it has looked for one, so that value
    counts as unset."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = os.environ.get(CACHE_ENV)
    if not given or os.path.abspath(given) == os.path.abspath(default_cache_dir()):
        os.environ[CACHE_ENV] = str(vidanon_cache() / "torch-compile")
    return Path(os.environ[CACHE_ENV])


def compiled(fn, mode: str | None = None):
    """`fn` compiled for fixed shapes (dynamic=False: each batch shape is a compile of its own, and the core pads its
    batches to one). mode: torch.compile's ("reduce-overhead" adds CUDA graphs); None is inductor's default."""
    import torch

    cache_dir()
    return torch.compile(fn, dynamic=False, mode=mode)
