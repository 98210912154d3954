"""Import of the released DICE-Talk checkpoints, and safe loading of the released ``.npy`` emotion priors.

Released files (``EEEELY/DICE-Talk``; layout in shared/reference/released_checkpoints.md) and where their
keys go in :class:`dicetalk.models.talker.Talker`:

    audio_linear.pth  proj1..3, norm                    -> audio_proj.*
    emo_model.pth     emo_linear / kv_tokens_linear /
                      codebook / attention              -> emotion.*
                      classifier.fc1..3                 -> classifier.*
    pose_guider.pth   conv_in, blocks.i, conv_out       -> pose_guider.*
    unet.pth          the whole UNet (1556 tensors) or only
                      the 128 ``...attn2.processor.to_{k,v}_ip.{0,1}.weight`` -> unet.*

Loading is safe by construction: ``.pth`` through ``torch.load(weights_only=True)`` (memory-mapped, so a
6.5 GB ``unet.pth`` is not read into memory), ``.npy`` priors (pickled ``{'mu': array}`` dicts) through
:class:`RestrictedUnpickler`, which builds numpy arrays and plain containers and refuses everything else.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dicetalk.media import atomic_path

RELEASED_FILES = ("audio_linear.pth", "emo_model.pth", "pose_guider.pth", "unet.pth")
UNET_ADAPTER_MARK = ".attn2.processor.to_"  # every added UNet key contains it
CHECKPOINT_FORMAT = "dicetalk-talker-v1"  # what Talker.load_trainable reads
SVD_XT_ID = "stabilityai/stable-video-diffusion-img2vid-xt"

# emo_model.pth prefixes: the conditioner's submodules go under ``emotion.``, the classifier stays on top.
_EMOTION_PREFIXES = ("emo_linear.", "kv_tokens_linear.", "codebook.", "attention.")


class UnsafePickleError(ValueError):
    """A pickle asked for something other than numpy arrays and plain containers."""


# ----------------------------------------------------------------------------------------- safe .npy priors

# The only globals a pickled numpy array needs (numpy 1.x and 2.x module names). Containers (dict, list,
# tuple), strings and numbers are built by pickle opcodes without any global lookup.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals an array needs; any other global is refused
    before anything is called (so a pickle that would run ``os.system`` never gets to)."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle {module}.{name} (only numpy arrays and plain containers are allowed)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing a pickle with persistent ids")


def safe_load_npy(path: str | os.PathLike) -> Any:
    """Read a ``.npy`` file: plain arrays with ``allow_pickle=False``, object arrays (pickled dicts, as
    the released priors) through :class:`RestrictedUnpickler`. Returns the array, or the object a 0-d
    object array holds."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            if major not in (1, 2):
                raise ValueError(f"unsupported .npy format version {major}")
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            if not dtype.hasobject:
                f.seek(0)
                return np.load(f, allow_pickle=False)
            value = RestrictedUnpickler(f, str(path)).load()
    except UnsafePickleError:
        raise
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({type(err).__name__}: {err})") from None
    if isinstance(value, np.ndarray) and value.dtype.hasobject and value.shape == ():
        return value.item()
    return value


def load_prior(path: str | os.PathLike) -> np.ndarray:
    """Emotion prior mu, float32 (D,), from a released-format ``{'mu': (1, D)}`` .npy or a plain array."""
    value = safe_load_npy(path)
    if isinstance(value, Mapping):
        if "mu" not in value:
            raise ValueError(f"{path}: prior dict has no 'mu' (keys: {sorted(map(str, value))})")
        value = value["mu"]
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.size == 0 or array.squeeze().ndim > 1:
        raise ValueError(f"{path}: prior must be a numeric vector or (1, D) array, got {array.dtype} {array.shape}")
    return array.astype(np.float32).reshape(-1)


# ----------------------------------------------------------------------------------------- checkpoint import


def target_key(filename: str, key: str) -> str:
    """Our Talker state-dict key for ``key`` of the released file ``filename``."""
    if filename == "audio_linear.pth":
        return f"audio_proj.{key}"
    if filename == "pose_guider.pth":
        return f"pose_guider.{key}"
    if filename == "unet.pth":
        return f"unet.{key}"
    if filename == "emo_model.pth":
        return f"emotion.{key}" if key.startswith(_EMOTION_PREFIXES) else key  # classifier.* stays
    raise ValueError(f"{filename}: not a released DICE-Talk file ({', '.join(RELEASED_FILES)})")


@dataclass
class ImportReport:
    """What an import placed and what it could not."""

    placed: dict[str, int] = field(default_factory=dict)  # file -> tensors placed
    unplaced: list[str] = field(default_factory=list)  # "file: key (reason)"
    missing_files: list[str] = field(default_factory=list)
    not_provided: list[str] = field(default_factory=list)  # added-module keys no file gave a value
    unet_layout: str = "absent"  # "adapters" | "full" | "absent"

    def render(self) -> str:
        """Human-readable summary listing every key that could not be placed."""
        lines = [f"placed {n:5d} tensors from {name}" for name, n in self.placed.items()]
        lines.append(f"unet.pth layout: {self.unet_layout}")
        lines += [f"missing file: {name}" for name in self.missing_files]
        lines.append(f"{len(self.unplaced)} key(s) could not be placed" + (":" if self.unplaced else ""))
        lines += [f"  {line}" for line in self.unplaced]
        if self.not_provided:
            lines.append(f"{len(self.not_provided)} added-module key(s) got no value (they keep their init):")
            lines += [f"  {key}" for key in self.not_provided]
        return "\n".join(lines)


def map_released(
    files: Mapping[str, Mapping[str, Tensor]],
    target_shapes: Mapping[str, torch.Size],
    added_prefixes: tuple[str, ...],
) -> tuple[dict[str, Tensor], ImportReport]:
    """Map released state dicts (``{filename: state_dict}``) onto Talker keys.

    ``target_shapes``: the Talker's state-dict shapes (works with a meta-device talker); a key is placed
    when its target exists with the same shape, otherwise reported. ``added_prefixes``: prefixes of the
    added modules, used to list the added keys that no file provided.
    """
    report = ImportReport()
    mapped: dict[str, Tensor] = {}
    for filename, state in files.items():
        placed = 0
        for key, tensor in state.items():
            target = target_key(filename, key)
            if not isinstance(tensor, Tensor):
                report.unplaced.append(f"{filename}: {key} (not a tensor: {type(tensor).__name__})")
            elif target not in target_shapes:
                report.unplaced.append(f"{filename}: {key} (no {target} in the talker)")
            elif tuple(tensor.shape) != tuple(target_shapes[target]):
                report.unplaced.append(f"{filename}: {key} (shape {tuple(tensor.shape)}, talker "
                                       f"{target} has {tuple(target_shapes[target])})")
            else:
                mapped[target] = tensor
                placed += 1
        report.placed[filename] = placed
        if filename == "unet.pth":
            report.unet_layout = "adapters" if all(UNET_ADAPTER_MARK in k for k in state) else "full"
    report.not_provided = sorted(k for k in target_shapes if k.startswith(added_prefixes) and k not in mapped)
    return mapped, report


def read_released(folder: str | os.PathLike) -> tuple[dict[str, dict[str, Tensor]], list[str]]:
    """The released state dicts present in ``folder`` (weights_only, memory-mapped) and the missing names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    files, missing = {}, []
    for name in RELEASED_FILES:
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(err):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # unpickling errors come in many types; weights_only refusals included
            raise ValueError(f"{path}: cannot load as a weights-only state dict ({type(err).__name__}: {err})") from None
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
        files[name] = {k.removeprefix("module."): v for k, v in state.items()}
    if not files:
        raise FileNotFoundError(f"{folder}: none of {', '.join(RELEASED_FILES)} found")
    return files, missing


def import_official(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    talker: torch.nn.Module | None = None,
    base: str = SVD_XT_ID,
) -> ImportReport:
    """Map the released files in ``folder`` onto a Talker and write a talker checkpoint to ``out``.

    The output is a safetensors file in :meth:`Talker.save_trainable`'s format (mode ``all`` when
    ``unet.pth`` held the whole UNet, else ``new``), loadable with :meth:`Talker.load_trainable` on a
    talker built from ``base``. ``talker`` defaults to the full-size talker on the meta device (no
    weights are allocated; the config is the released one).
    """
    from safetensors.torch import save_file

    from dicetalk.models.talker import build_meta_talker

    talker = talker if talker is not None else build_meta_talker()
    files, missing = read_released(folder)
    shapes = {k: v.shape for k, v in talker.state_dict().items()}
    added = tuple(f"{prefix}." for prefix in talker.added_modules())
    mapped, report = map_released(files, shapes, added)
    report.missing_files = missing
    mode = "all" if report.unet_layout == "full" else "new"
    metadata = {"format": CHECKPOINT_FORMAT, "base": base, "mode": mode, "config": json.dumps(asdict(talker.config)),
                "source": f"released DICE-Talk checkpoints ({', '.join(sorted(files))})"}
    tensors = {k: v.detach().contiguous() for k, v in mapped.items()}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return report
