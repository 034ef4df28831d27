"""`--device`: one parser for torch and onnxruntime, checked before anything is written.

A device is "auto", "cpu", "cuda" or "cuda:N". `parse_device` checks the spelling (no imports, so a
config is validated at once); `check_device` also checks that this machine has the GPU asked for.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import InputError, VidanonError

DEVICES = "auto, cpu, cuda or cuda:N"


class Device(NamedTuple):
    kind: str  # auto | cpu | cuda
    index: int | None  # the N of cuda:N


def parse_device(text: str) -> Device:
    kind, colon, index = text.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (colon and (kind != "cuda" or not index.isdigit())):
        raise InputError(f"device must be {DEVICES}, got {text!r}")
    return Device(kind, int(index) if colon else None)


def check_device(text: str) -> None:
    """The device can be used here: a CUDA device needs a GPU that torch sees."""
    device = parse_device(text)
    if device.kind != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise VidanonError(f"device {text!r} requested but torch sees no CUDA GPU (torch {torch.__version__}); "
                           "use --device cpu or auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise VidanonError(f"device {text!r} requested but this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def torch_device(text: str = "auto"):
    """The torch.device for `text` ("auto": the first GPU if there is one)."""
    import torch

    check_device(text)
    if parse_device(text).kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(text)


def onnx_providers(text: str = "auto") -> list:
    """Explicit onnxruntime providers: CUDA first when asked for (or "auto") and available; the CPU
    provider always last, so that operators CUDA lacks still run."""
    import onnxruntime

    device = parse_device(text)
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if device.kind == "cuda" and not has_cuda:
        raise VidanonError(
            "onnxruntime has no CUDA provider: install onnxruntime-gpu (pip install 'vidanon[gpu]') or use --device cpu"
        )
    if device.kind != "cpu" and has_cuda:
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_on_torch(text: str = "auto") -> bool:
    """Whether an ONNX detector runs with torch (onnx_graph.py) instead of onnxruntime: a GPU is asked for (or
    "auto"), onnxruntime cannot reach one (no onnxruntime-gpu) and torch can."""
    import onnxruntime

    if parse_device(text).kind == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return False
    import torch

    return torch.cuda.is_available()
