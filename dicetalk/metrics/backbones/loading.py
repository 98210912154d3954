"""Loading the metric backbones from the weights registry, and keeping them frozen."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dicetalk import weights

_OPTIONAL_SUFFIX = ".num_batches_tracked"  # absent from legacy files (SyncNet's); BatchNorm does not need it


class Frozen(nn.Module):
    """Holds a network in eval mode without gradients, invisible to its owner's parameters.

    The network is kept outside the module tree so that ``train()``, optimisers, model summaries and
    checkpoints of a LightningModule holding the metric never see it, while ``.to()``/``.cuda()`` still
    move it. ``info`` names the weights used (registry name, path, sha256, verification status).
    """

    def __init__(self, net: nn.Module, info: dict[str, Any]) -> None:
        super().__init__()
        net.eval()
        for param in net.parameters():
            param.requires_grad_(False)
        self.__dict__["net"] = net  # bypasses nn.Module registration on purpose
        self.info = info

    def _apply(self, fn, recurse: bool = True) -> "Frozen":
        self.net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "Frozen":
        return self  # always eval: BatchNorm statistics must never change

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the network's floating parameters (float32 for parameter-free modules)."""
        return next((p.dtype for p in self.net.parameters() if p.is_floating_point()), torch.float32)

    def call(self, method: str, x: Tensor, **kwargs: Any) -> Tensor:
        """``net.<method>(x)`` without autograd, with ``x`` cast to the network's dtype."""
        if x.is_floating_point():
            x = x.to(self.dtype)
        with torch.no_grad():
            return getattr(self.net, method)(x, **kwargs)

    def forward(self, x: Tensor, **kwargs: Any) -> Tensor:
        return self.call("forward", x, **kwargs)


def injected(net: nn.Module) -> Frozen:
    """Freeze a caller-supplied module (tests, custom extractors); its info says it is not a registry file."""
    return Frozen(net, {"name": f"injected:{type(net).__name__}", "path": None, "sha256": None,
                        "status": "injected"})


def _resolve(name: str, path: str | os.PathLike | None, download: bool) -> tuple[Any, dict[str, Any]]:
    check = weights.checked(name, path, download_missing=download)
    return check.path, {"name": name, "path": str(check.path), "sha256": check.sha256, "status": check.status}


def load_state_dict_into(net: nn.Module, name: str, path: str | os.PathLike | None = None,
                         download: bool = False) -> dict[str, Any]:
    """Load registry weights ``name`` (checksum-verified, ``weights_only``) strictly into ``net``.

    Only BatchNorm ``num_batches_tracked`` buffers may be absent from the file; any other missing,
    unexpected or mis-shaped key is an error naming the file. Returns the weights info for :class:`Frozen`.
    """
    where, info = _resolve(name, path, download)
    state = torch.load(where, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{where}: expected a flat state dict of tensors for {type(net).__name__}")
    model_shapes = {k: v.shape for k, v in net.state_dict().items()}
    missing = [k for k in model_shapes if k not in state and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in model_shapes]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(s)}" for k, s in model_shapes.items()
             if k in state and state[k].shape != s]
    if missing or unexpected or wrong:
        raise ValueError(f"{where}: state dict does not match {type(net).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")
    net.load_state_dict(state, strict=False)  # exact up to the optional buffers, checked above
    return info


def load_torchscript(name: str, path: str | os.PathLike | None = None,
                     download: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checksum-verified TorchScript file from the registry (e.g. I3D); returns (module, info)."""
    where, info = _resolve(name, path, download)
    try:
        net = torch.jit.load(str(where), map_location="cpu")
    except RuntimeError as err:
        raise ValueError(f"{where}: not a TorchScript file ({err})") from err
    return net, info
