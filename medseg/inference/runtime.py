"""How a network runs at inference: the precision a device computes natively, and the network prepared for it.

:func:`resolve_precision` turns ``"auto"`` into ``"bfloat16"`` where the device computes bf16 natively (CPUs with
AMX or AVX512-BF16, CUDA GPUs of compute capability 8.0 and later) and ``"float32"`` elsewhere;
:func:`describe_precision` says which, for the log.

:class:`InferenceNetwork` is a copy of a trained network rearranged for inference without changing what it
computes (up to rounding): every batch norm that follows a convolution is folded into that convolution's weights,
and on the CPU a convolution followed by a ReLU becomes one oneDNN call with the ReLU as a post-op, so the
activations are not read and written twice more per layer (on this project's Xeon, batch norm and ReLU took half
of a U-Net's time), and every 2x max pooling becomes an element-wise maximum of strided views, one spatial axis at
a time (:class:`HalvingMaxPool`: the same values, in half of PyTorch's time for channels-last bf16 batches, where
max pooling took a tenth of a U-Net's time). The copy is in the channels-last layout (2D, 3D) and in bfloat16 when
asked.

:func:`resolve_runtime` picks the runtime that computes the network: PyTorch (:class:`InferenceNetwork`) or
OpenVINO (:class:`medseg.inference.openvino_runtime.OpenVINONetwork`, CPUs only, with the optional extra
``medseg[openvino]``). Both are a :class:`PreparedNetwork`: :func:`~medseg.inference.predict` calls either alike.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "HalvingMaxPool",
    "InferenceNetwork",
    "PreparedNetwork",
    "Precision",
    "describe_precision",
    "example_sizes",
    "exportable_network",
    "native_bfloat16",
    "resolve_precision",
    "resolve_runtime",
    "weights_digest",
]

logger = logging.getLogger(__name__)

# The example input traced for OpenVINO and ONNX is this size along every spatial axis: odd at each of 7 halvings
# (255, 127, ..., 1), so the traced graph holds a U-Net's padding of odd decoder sizes (medseg.networks.blocks)
# and serves windows of any size; a network that refuses it is traced at its window size instead.
_ODD_EXAMPLE_SIZE = 255

# int8: OpenVINO only, quantized by NNCF on windows of the bundle's training photographs
Precision = Literal["auto", "float32", "bfloat16", "int8"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16", "int8")
Runtime = Literal["torch", "openvino", "auto"]
RUNTIMES: tuple[str, ...] = ("torch", "openvino", "auto")

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# layers that are the identity in eval mode, skipped when looking for the layer after a convolution
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def native_bfloat16(device: str | torch.device) -> str | None:
    """Why ``device`` computes bfloat16 natively (``"AMX"``, ``"AVX512-BF16"``, ``"CUDA sm_80+"``), else ``None``."""
    device = torch.device(device)
    if device.type == "cpu":
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
        return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else None
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device)
        return f"CUDA sm_{major}0+" if major >= 8 else None
    return None


def resolve_precision(precision: str, device: str | torch.device) -> Literal["float32", "bfloat16", "int8"]:
    """``precision`` itself, or for ``"auto"``: bfloat16 where :func:`native_bfloat16` finds native support,
    float32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision  # type: ignore[return-value]
    return "bfloat16" if native_bfloat16(device) else "float32"


def describe_precision(precision: str, device: str | torch.device) -> str:
    """What ``precision`` means on ``device``, for the log: e.g. ``"bfloat16 (auto: AMX on cpu)"``."""
    resolved = resolve_precision(precision, device)
    if precision != "auto":
        return f"{resolved} on {device}"
    return f"{resolved} (auto: {native_bfloat16(device) or 'no native bfloat16'} on {device})"


def resolve_runtime(runtime: str, device: str | torch.device) -> Literal["torch", "openvino"]:
    """``runtime`` itself, or for ``"auto"``: OpenVINO on the CPU where it is installed, else PyTorch (saying so
    in one log line when OpenVINO is missing). OpenVINO on any other device raises ``ValueError``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "openvino" and not on_cpu:
        raise ValueError(f"the OpenVINO runtime computes on the CPU, not on {device}")
    if runtime != "auto":
        return runtime  # type: ignore[return-value]
    if not on_cpu:
        return "torch"
    try:
        importlib.import_module("openvino")
    except ImportError:
        logger.info("runtime auto: OpenVINO is not installed (pip install 'medseg[openvino]'), running on PyTorch")
        return "torch"
    return "openvino"


def weights_digest(network: nn.Module) -> str:
    """SHA-256 of ``network``'s state dict: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _FirstOutput(nn.Module):
    """The network with a deep-supervised list output reduced to its first element, as :class:`InferenceNetwork`."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        return logits[0] if isinstance(logits, (list, tuple)) else logits


def exportable_network(network: nn.Module) -> nn.Module:
    """A float32 eval-mode copy of ``network`` on the CPU with its batch norms folded and one output (TorchScript
    modules as they are): what OpenVINO converts and ONNX exports."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    if isinstance(network, torch.jit.ScriptModule):
        return network.eval().float()
    return _FirstOutput(fold_batch_norms(copy.deepcopy(network).eval().float().cpu()))


def example_sizes(roi_size: Sequence[int]) -> list[tuple[int, ...]]:
    """The spatial sizes to trace a network at for a graph of dynamic size, in order of preference: the odd size,
    then the window size (for a network that refuses the odd one)."""
    return [(_ODD_EXAMPLE_SIZE,) * len(roi_size), tuple(roi_size)]


class PreparedNetwork(nn.Module):
    """A network ready for :func:`~medseg.inference.predict`: windows (N, C_in, *S) in float32 on its device in,
    float32 logits (N, C_out, *S) out. :meth:`InferenceNetwork.of` passes one through unchanged."""

    precision: str


class InferenceNetwork(PreparedNetwork):
    """A trained network prepared for inference on one device at one precision; returns float32 logits.

    Shapes: those of the wrapped network, (N, C_in, *S) -> (N, C_out, *S) (a deep-supervised network's list
    output is reduced to its first element). The wrapped network is copied, never changed. TorchScript modules
    cannot be rearranged and run under bf16 autocast instead.

    Args:
        network: the trained network (logits out); a ``DistributedDataParallel`` or ``DataParallel`` wrapper
            is looked through.
        device: where it runs.
        precision: ``"float32"`` or ``"bfloat16"`` (``"auto"`` is resolved by :func:`resolve_precision`).
        spatial_dims: 2 or 3 puts the weights in the matching channels-last layout.
        fuse: fold batch norms, fuse convolution + ReLU and (CPU) use :class:`HalvingMaxPool`; ``False`` runs
            the layers as trained (the reference the benchmark compares against).
    """

    def __init__(
        self,
        network: nn.Module,
        device: str | torch.device,
        precision: str,
        spatial_dims: int | None = None,
        fuse: bool = True,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.precision == "int8":
            raise ValueError("precision int8 runs on the OpenVINO runtime only (runtime openvino or auto)")
        self.dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        self.memory_format = {2: torch.channels_last, 3: torch.channels_last_3d}.get(spatial_dims or 0)
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module  # the wrapper only matters for training's gradients
        self.scripted = isinstance(network, torch.jit.ScriptModule)
        if self.scripted:
            self.network = network.eval().to(self.device)
        else:
            prepared = copy.deepcopy(network).eval()
            if fuse:
                fold_batch_norms(prepared)
            if fuse and self.device.type == "cpu" and _pointwise_convolution_available(self.dtype):
                fuse_convolution_relu(prepared)
            if fuse and self.device.type == "cpu":
                replace_halving_max_pools(prepared)
            self.network = prepared.to(self.device, self.dtype)
        if self.memory_format is not None:
            self.network = self.network.to(memory_format=self.memory_format)

    @classmethod
    def of(
        cls, network: nn.Module, device: str | torch.device, precision: str, spatial_dims: int | None = None
    ) -> PreparedNetwork:
        """``network`` prepared for inference, or ``network`` itself if it already is a :class:`PreparedNetwork`
        (it keeps its runtime, device and precision)."""
        return network if isinstance(network, PreparedNetwork) else cls(network, device, precision, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        if self.scripted:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
                logits = self.network(x)
        else:
            logits = self.network(x.to(self.dtype))
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return logits.float()


def _sequence_leaves(module: nn.Module) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """``(parent, name, layer)`` of ``module``'s layers in the order a chain of nested ``nn.Sequential`` runs them."""
    for name, child in module.named_children():
        if isinstance(child, nn.Sequential):
            yield from _sequence_leaves(child)
        else:
            yield module, name, child


def _chains(module: nn.Module) -> Iterator[nn.Sequential]:
    """The outermost ``nn.Sequential`` modules in ``module`` (itself, if it is one)."""
    if isinstance(module, nn.Sequential):
        yield module
        return
    for child in module.children():
        yield from _chains(child)


def _following(
    leaves: list[tuple[nn.Module, str, nn.Module]], index: int
) -> tuple[nn.Module, str, nn.Module] | None:
    """The first layer after ``leaves[index]`` that is not the identity in eval mode."""
    return next((leaf for leaf in leaves[index + 1 :] if not isinstance(leaf[2], _PASS_THROUGH)), None)


def fold_batch_norms(network: nn.Module) -> nn.Module:
    """Fold every eval-mode batch norm that directly follows a convolution in a ``nn.Sequential`` chain (as in
    MONAI's ``Convolution``: conv, then norm / dropout / activation) into the convolution; the norm becomes
    ``nn.Identity``. Changes ``network`` in place (in eval mode) and returns it."""
    for chain in _chains(network):
        leaves = list(_sequence_leaves(chain))
        for index, (parent, name, layer) in enumerate(leaves):
            if not isinstance(layer, _CONVOLUTIONS):
                continue
            following = _following(leaves, index)
            if following and isinstance(following[2], _BATCH_NORMS) and following[2].track_running_stats:
                norm_parent, norm_name, norm = following
                setattr(parent, name, fuse_conv_bn_eval(layer, norm))
                setattr(norm_parent, norm_name, nn.Identity())
    return network


def fuse_convolution_relu(network: nn.Module) -> nn.Module:
    """Replace each convolution that a ReLU directly follows in a ``nn.Sequential`` chain (after
    :func:`fold_batch_norms`) by a :class:`ConvolutionReLU`, and the ReLU by ``nn.Identity``. In place."""
    for chain in _chains(network):
        leaves = list(_sequence_leaves(chain))
        for index, (parent, name, layer) in enumerate(leaves):
            if type(layer) not in (nn.Conv2d, nn.Conv3d) or layer.padding_mode != "zeros":
                continue
            following = _following(leaves, index)
            if following and isinstance(following[2], nn.ReLU):
                relu_parent, relu_name, _ = following
                setattr(parent, name, ConvolutionReLU(layer))
                setattr(relu_parent, relu_name, nn.Identity())
    return network


def _pointwise_convolution_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused convolution runs here in ``dtype``: its bf16 path needs AVX512 (BW, VL, DQ) or
    AVX-NE-CONVERT, which an AVX2 CPU lacks, where bf16 runs as PyTorch's own convolution instead."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class ConvolutionReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN convolution with a ReLU post-op on the CPU (the call PyTorch's own
    compiler emits for this pattern); elsewhere, or for string padding, the two layers one after the other.

    Shapes: those of ``conv``.
    """

    def __init__(self, conv: nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if x.device.type != "cpu" or isinstance(conv.padding, str):
            return F.relu(conv(x))
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            "relu", [], "",
        )


def _is_halving(pool: nn.Module) -> bool:
    """A max pooling of window 2 and stride 2 along every axis, no padding, dilation or indices, floor mode."""
    if type(pool) not in (nn.MaxPool2d, nn.MaxPool3d) or pool.return_indices or pool.ceil_mode:
        return False
    dims = 2 if isinstance(pool, nn.MaxPool2d) else 3
    as_tuple = lambda value: tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims  # noqa: E731
    return (as_tuple(pool.kernel_size) == (2,) * dims and as_tuple(pool.stride) == (2,) * dims
            and as_tuple(pool.padding) == (0,) * dims and as_tuple(pool.dilation) == (1,) * dims)


def replace_halving_max_pools(network: nn.Module) -> nn.Module:
    """Replace every 2x max pooling of ``network`` (window and stride 2, no padding) by a :class:`HalvingMaxPool`.
    In place."""
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if _is_halving(child):
                setattr(parent, name, HalvingMaxPool())
    return network


class HalvingMaxPool(nn.Module):
    """2x max pooling (window and stride 2, floor mode) as the maximum of a tensor's even and odd positions, one
    spatial axis at a time: the values of ``nn.MaxPool2d(2)`` / ``nn.MaxPool3d(2)``, a trailing odd row dropped
    as they drop it.

    Shapes: (N, C, *S) -> (N, C, *(s // 2 for s in S)), in the input's memory layout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis in range(2, x.ndim):
            pairs = x.narrow(axis, 0, x.shape[axis] // 2 * 2)
            even = (slice(None),) * axis + (slice(0, None, 2),)
            odd = (slice(None),) * axis + (slice(1, None, 2),)
            x = torch.maximum(pairs[even], pairs[odd])
        return x
