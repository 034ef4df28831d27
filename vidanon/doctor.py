"""`vidanon doctor` and `vidanon models`: what this machine has, probed offline; `models pull` fetches.

Each probe answers one line. A probe that fails says PROBLEM; an essential one (torch, PyAV and its
encoders, the detector, the default model's weights) makes the doctor say that something is missing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import ModelNotFoundError
from .weights import (DEFAULT_MODEL, KNOWN_MODELS, cached_model, centerface_path, fetch_model, hub_cache, hub_offline,
                      model_source, resolve_model_name)


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    ok: bool = True  # False: an essential is missing or broken


@dataclass(frozen=True)
class ModelRow:
    name: str
    source: str
    licence: str
    cached: Path | None  # None: not on this machine
    built_in: bool
    about: str


def model_rows() -> list[ModelRow]:
    from . import masks

    rows = [ModelRow(alias, f"{m.repo}{'/' + m.subfolder if m.subfolder else ''}" or "-", m.licence,
                     None if not m.repo else cached_model(alias), not m.repo, m.about)
            for alias, m in KNOWN_MODELS.items()]
    parser = masks.cache_dir() / Path(masks.PARSER_URL).name
    rows.append(ModelRow("face-parser", "yakhyo/face-parsing (GitHub release resnet18.onnx)", "MIT",
                         parser if parser.is_file() else None, False,
                         "BiSeNet face parsing for --mask auto/parser (else landmark masks)"))
    return rows


def _torch() -> str:
    import torch

    return torch.__version__


def _cuda() -> str:
    import torch

    if torch.cuda.is_available():
        return f"yes: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return "no: CPU only (about 80 s per face at 50 steps on 2 cores; use a GPU for real work)"


def _onnxruntime() -> str:
    import onnxruntime

    from .device import onnx_providers

    return (f"{onnxruntime.__version__}; available {', '.join(onnxruntime.get_available_providers())}; "
            f"detector uses {', '.join(p if isinstance(p, str) else p[0] for p in onnx_providers('auto'))}")


def _pyav() -> str:
    import av

    return f"{av.__version__} (FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})"


OPENCV_BUILDS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def opencv_builds() -> list[str]:
    """The OpenCV distributions installed: each installs the same `cv2` module over the others."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in OPENCV_BUILDS:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return found


def _opencv() -> str:
    builds = opencv_builds()
    if len(builds) > 1:  # they overwrite each other's files: which one runs depends on the install order
        raise RuntimeError(f"{len(builds)} OpenCV builds installed ({', '.join(builds)}); keep one: "
                           "pip uninstall -y opencv-python-headless && pip install --force-reinstall opencv-python")
    try:
        import cv2
    except ImportError as e:
        raise RuntimeError(f"cv2 does not load ({e}); on a slim server image: apt install libgl1 libglib2.0-0") from None
    return f"{cv2.__version__} ({', '.join(builds) or 'no pip distribution'})"


def _encoder(name: str) -> Callable[[], str]:
    def probe() -> str:
        import av

        av.codec.Codec(name, "w")
        return "yes"

    return probe


def _probe(name: str, fn: Callable[[], str], essential: bool = True) -> Row:
    try:
        return Row(name, fn())
    except Exception as e:  # the doctor reports whatever is broken, it never stops on it
        return Row(name, f"PROBLEM: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", not essential)


def checks() -> list[Row]:
    """Every line of the doctor's report, in order."""
    from .detect import SCRFD_LICENCE_NOTE

    rows = [Row("vidanon", __version__), Row("python", f"{sys.version.split()[0]} ({sys.executable})"),
            _probe("torch", _torch), _probe("CUDA", _cuda), _probe("onnxruntime", _onnxruntime), _probe("PyAV", _pyav), _probe("OpenCV", _opencv)]
    rows += [_probe(f"encoder {name}", _encoder(name)) for name in ("libx264", "libx264rgb", "aac")]
    rows.append(_probe("CenterFace ONNX", lambda: f"yes ({centerface_path()})"))
    rows.append(Row("SCRFD", "optional; " + SCRFD_LICENCE_NOTE))
    rows.append(_probe("HF cache", lambda: f"{hub_cache()}{' (offline mode)' if hub_offline() else ''}", essential=False))
    try:
        for m in model_rows():
            label = "face parser" if m.name == "face-parser" else f"model {m.name}"
            if m.built_in or m.cached:
                rows.append(Row(label, "built in" if m.built_in else f"yes ({m.cached})"))
            elif m.name == DEFAULT_MODEL:  # what `vidanon anonymize` uses unless told otherwise
                rows.append(Row(label, f"PROBLEM: the default model is not cached: run `vidanon models pull {m.name}`", False))
            else:
                rows.append(Row(label, f"not cached: run `vidanon models pull {m.name}`"))
    except Exception as e:
        rows.append(Row("models", f"PROBLEM: {type(e).__name__}: {e}", False))
    return rows


def pull(name: str) -> Path | None:
    """Fetch a model (or "face-parser") into its cache; its folder, or None for a built-in model."""
    if name == "face-parser":
        from . import masks

        if masks.load_face_parser(download=True) is None:
            raise ModelNotFoundError(f"could not download the face-parsing weights from {masks.PARSER_URL}; "
                                     f"download resnet18.onnx by hand into {masks.cache_dir()} or pass --parser-weights")
        return masks.cache_dir()
    if name == "testing:gaussian":
        return None
    try:
        source = model_source(name)
    except ModelNotFoundError:  # offer what can be pulled: not the built-in test model
        pullable = [alias for alias, m in KNOWN_MODELS.items() if m.repo] + ["face-parser"]
        raise ModelNotFoundError(f"model {name!r}: not a hub id (owner/repo[/subfolder]) nor one of "
                                 f"{', '.join(pullable)}, which `vidanon models pull` fetches") from None
    if resolve_model_name(name)[2] is None and hub_offline():
        raise ModelNotFoundError(f"cannot fetch model {name!r} ({source}): Hugging Face offline mode is on "
                                 "(HF_HUB_OFFLINE=1); pull it on a connected machine and copy the cache "
                                 f"({hub_cache()}), or pass a local diffusers folder with --model")
    try:
        return fetch_model(name, download=True)
    except ModelNotFoundError:
        raise ModelNotFoundError(f"could not download model {name!r} ({source}) into {hub_cache()}: "
                                 "no network or no access; pull it on a connected machine and copy the cache, "
                                 "or pass a local diffusers folder with --model") from None
