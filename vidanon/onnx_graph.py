"""Run a small convolutional ONNX graph with torch: CenterFace on a GPU that onnxruntime cannot use.

onnxruntime reaches a GPU only through onnxruntime-gpu, a separate package of several hundred MB that must
match the machine's CUDA and cuDNN; the torch that runs the diffusion core already reaches the GPU. CenterFace
uses six operator types, each one torch.nn.functional call below, so its graph runs node by node on torch's
device. A graph with any other operator, or with attributes this does not handle, is refused when loaded.
(onnx2torch does this generally, but depends on torchvision, which pins torch's own version.)
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _conv(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, **_):
    return F.conv2d(x, w, b, tuple(strides), tuple(pads[:2]), tuple(dilations), group)


def _conv_transpose(x, w, b=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                    output_padding=(0, 0), **_):
    return F.conv_transpose2d(x, w, b, tuple(strides), tuple(pads[:2]), tuple(output_padding), group, tuple(dilations))


def _batch_norm(x, scale, bias, mean, var, *, epsilon=1e-5, **_):
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=epsilon)


OPS = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "BatchNormalization": _batch_norm,
    "Relu": lambda x, **_: F.relu(x),
    "Sigmoid": lambda x, **_: torch.sigmoid(x),
    "Add": lambda a, b, **_: a + b,
}
# Attributes the functions above read; anything else (auto_pad, asymmetric pads, 3-D kernels) is refused.
_KNOWN = {"kernel_shape", "strides", "pads", "dilations", "group", "epsilon", "momentum", "output_padding"}


class TorchGraph:
    """An ONNX graph of the operators in OPS, run with torch on `device` (float32, inference only).

    `run(None, feeds)` and `get_providers()` are called as onnxruntime's `InferenceSession`'s are, NumPy in and out.
    Each intermediate is freed after its last use, so a 1080p frame upscaled 1.5x needs ~2 GB, not all of them."""

    def __init__(self, model: onnx.ModelProto, device: torch.device | str):
        self.device = torch.device(device)
        graph = model.graph
        self.nodes = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            pads = attrs.get("pads", [0, 0, 0, 0])
            if node.op_type not in OPS or set(attrs) - _KNOWN or len(pads) != 4 or pads[:2] != pads[2:] \
                    or len(attrs.get("kernel_shape", [1, 1])) != 2:
                raise ValueError(f"ONNX node {node.name or node.op_type!r} ({node.op_type} {attrs}) cannot run on torch here")
            self.nodes.append((node.op_type, list(node.input), node.output[0], attrs))
        used = {name for _, inputs, _, _ in self.nodes for name in inputs}
        self.weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()).to(self.device)
                        for t in graph.initializer if t.name in used}
        self.outputs = [o.name for o in graph.output]
        last = {}  # value name -> index of the last node reading it
        for k, (_, inputs, _, _) in enumerate(self.nodes):
            for name in inputs:
                last[name] = k
        self.free_after = [[n for n in inputs if last[n] == k and n not in self.weights and n not in self.outputs]
                           for k, (_, inputs, _, _) in enumerate(self.nodes)]
        # On a GPU the graph runs on a CUDA stream of its own: beside the diffusion core, whose kernels fill the
        # default stream, a detection would otherwise wait behind them at every read-back.
        self.stream = None
        if self.device.type == "cuda":
            self.stream = torch.cuda.Stream(self.device)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the weights copied above

    def get_providers(self) -> list[str]:
        return [f"torch ({self.device})"]

    @torch.inference_mode()
    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            values = {name: _to_device(array, self.device) for name, array in feeds.items()}
            for (op, inputs, output, attrs), free in zip(self.nodes, self.free_after):
                values[output] = OPS[op](*(values.get(n, self.weights.get(n)) for n in inputs if n), **attrs)
                for name in free:
                    del values[name]
            outs = [values[name] for name in output_names or self.outputs]
            # one read-back for all outputs (it waits for this stream's work only), split on the host
            flat = torch.cat([o.float().reshape(-1) for o in outs]).cpu().numpy()
        ends = np.cumsum([o.numel() for o in outs])
        return [part.reshape(o.shape) for part, o in zip(np.split(flat, ends[:-1]), outs)]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(array)
    if device.type == "cuda":  # queued from pinned memory on the current (the graph's) stream, without waiting
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
