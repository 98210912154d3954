"""Registry of every external weight file or model repository the project uses.

One place lists name, source, file name, size and sha256 (when known) of each external weight, so that
the same file is used everywhere, a corrupted or different file is refused instead of silently used,
and results can name the exact weights they came from.

Local files live in ``$DICETALK_WEIGHTS`` (default ``~/.cache/dicetalk/weights``) under their registry
file name, or at an explicit path given by the caller.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ENV_VAR = "DICETALK_WEIGHTS"
DEFAULT_DIR = Path("~/.cache/dicetalk/weights")

Status = Literal["ok", "unverified", "missing", "mismatch"]


class WeightsError(RuntimeError):
    """A weight file is missing, has the wrong checksum or cannot be fetched."""


@dataclass(frozen=True)
class WeightEntry:
    """One external weight: a single file (``url``) or a Hugging Face model repository (``repo_id``)."""

    name: str
    filename: str  # file name, or folder name for a repository
    description: str
    url: str | None = None
    repo_id: str | None = None
    size: int | None = None  # bytes
    sha256: str | None = None  # None until someone pins it; verify() then reports "unverified"
    note: str = ""

    @property
    def is_repo(self) -> bool:
        """True for a model repository (a folder) rather than a single file."""
        return self.repo_id is not None

    @property
    def source(self) -> str:
        """Where the weights come from: a URL or ``hf://<repo id>``."""
        return self.url if self.url is not None else f"hf://{self.repo_id}"


_ENTRIES = (
    WeightEntry(
        name="fid-inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        description="FID-Inception (TF inception-2015-12-05 port) state dict; FID pool3 features",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        size=95_628_359,
        # Pinned by several third-party projects for this file and torch-fidelity's identical copy;
        # its first 8 hex digits are the torch-hub prefix in the file name.
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    ),
    WeightEntry(
        name="i3d-torchscript",
        filename="i3d_torchscript.pt",
        description="I3D Kinetics-400 TorchScript (StyleGAN-V port of the tf.hub model); FVD features",
        url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
        note="Hugging Face mirror: flateon/FVD-I3D-torchscript",
    ),
    WeightEntry(
        name="syncnet-v2",
        filename="syncnet_v2.model",
        description="SyncNet v2 state dict (joonson/syncnet_python); Sync-C / Sync-D",
        url="http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
    ),
    WeightEntry(
        name="emo-affectnet",
        filename="FER_static_ResNet50_AffectNet.pt",
        description="EMO-AffectNet static ResNet-50 state dict (7 classes); Emo-Score",
        url="https://huggingface.co/ElenaRyumina/face_emotion_recognition/resolve/main/"
        "FER_static_ResNet50_AffectNet.pt",
        note="also in the Google Drive folder linked from ElenaRyumina/AVCER",
    ),
    WeightEntry(
        name="svd-xt",
        filename="stable-video-diffusion-img2vid-xt",
        description="Stable Video Diffusion img2vid-xt (UNet, VAE, CLIP image encoder); the base model",
        repo_id="stabilityai/stable-video-diffusion-img2vid-xt",
        note="gated on Hugging Face: accept the licence and log in (huggingface-cli login) first",
    ),
    WeightEntry(
        name="whisper-tiny",
        filename="whisper-tiny",
        description="Whisper tiny (audio features for the talker)",
        repo_id="openai/whisper-tiny",
    ),
    WeightEntry(
        name="face-alignment-s3fd",
        filename="s3fd-619a316812.pth",
        description="S3FD face detector used by face-alignment",
        url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
        note="face-alignment looks for it in $TORCH_HOME/hub/checkpoints/ (copy or link it there)",
    ),
    WeightEntry(
        name="face-alignment-fan2d",
        filename="2DFAN4-11f355bf06.pth.tar",
        description="FAN 2D 68-point landmark network used by face-alignment 1.5",
        url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
        note="face-alignment looks for it in $TORCH_HOME/hub/checkpoints/ (copy or link it there)",
    ),
    WeightEntry(
        name="dicetalk-released",
        filename="DICE-Talk",
        description="released DICE-Talk checkpoints (audio_linear, emo_model, pose_guider, unet .pth)",
        repo_id="EEEELY/DICE-Talk",
    ),
)

REGISTRY: dict[str, WeightEntry] = {entry.name: entry for entry in _ENTRIES}


def get_entry(name: str) -> WeightEntry:
    """The registry entry called ``name``; a clear error lists the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}") from None


def weights_dir() -> Path:
    """The folder holding local weights: ``$DICETALK_WEIGHTS`` or ``~/.cache/dicetalk/weights``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def local_path(name: str, path: str | os.PathLike | None = None) -> Path:
    """Where the weights ``name`` are (or would be) stored: ``path`` if given, else the default folder."""
    entry = get_entry(name)
    return Path(path).expanduser() if path is not None else weights_dir() / entry.filename


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large weights do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Verification:
    """Outcome of :func:`verify` for one entry."""

    name: str
    path: Path
    status: Status
    sha256: str | None = None  # computed hash (files only)
    size: int | None = None  # actual size (files only)
    message: str = ""


def verify(name: str, path: str | os.PathLike | None = None) -> Verification:
    """Check the local copy of ``name`` against the registry.

    ``ok``: the sha256 (and size) match the pinned values. ``unverified``: present but no sha256 is
    pinned (the computed hash is returned so it can be pinned), or a repository folder. ``missing``:
    not there. ``mismatch``: present but different from the pinned file.
    """
    entry = get_entry(name)
    where = local_path(name, path)
    if entry.is_repo:
        if where.is_dir() and any(where.iterdir()):
            return Verification(name, where, "unverified", message="repository folder (no checksum)")
        return Verification(name, where, "missing", message=f"no folder {where}")
    if not where.is_file():
        return Verification(name, where, "missing", message=f"no file {where}")
    size = where.stat().st_size
    if entry.size is not None and size != entry.size:
        return Verification(name, where, "mismatch", None, size,
                            f"{where}: size {size} bytes, expected {entry.size}")
    digest = sha256_file(where)
    if entry.sha256 is None:
        return Verification(name, where, "unverified", digest, size, "no sha256 pinned in the registry")
    if digest != entry.sha256:
        return Verification(name, where, "mismatch", digest, size,
                            f"{where}: sha256 {digest}, expected {entry.sha256}")
    return Verification(name, where, "ok", digest, size)


def _missing_hint(name: str, where: Path) -> str:
    return (f"weights {name!r} not found at {where}; run `dicetalk weights download {name}` "
            f"or place {get_entry(name).source} there (folder: ${ENV_VAR})")


def checked(name: str, path: str | os.PathLike | None = None, download_missing: bool = False) -> Verification:
    """Verify the local weights ``name`` (fetching them first if asked and absent) or raise.

    Missing weights raise with the command that fetches them; a checksum mismatch is refused. Unpinned
    files pass with status ``unverified`` and their computed sha256, which results should record.
    """
    check = verify(name, path)
    if check.status == "missing" and download_missing:
        download(name, path)
        check = verify(name, path)
    if check.status == "missing":
        raise WeightsError(_missing_hint(name, check.path))
    if check.status == "mismatch":
        raise WeightsError(f"refusing weights {name!r}: {check.message}")
    return check


def resolve(name: str, path: str | os.PathLike | None = None, download_missing: bool = False) -> Path:
    """Path to the verified local weights ``name`` (see :func:`checked`)."""
    return checked(name, path, download_missing).path


def download(name: str, path: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetch ``name`` to its local path (atomically) and verify it; returns the path.

    Files go to a temporary name in the target folder and are only renamed into place once their
    checksum matches, so an interrupted or corrupted download never appears as the real file.
    """
    entry = get_entry(name)
    dest = local_path(name, path)
    if not force and verify(name, path).status in ("ok", "unverified"):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if entry.is_repo:
        return _download_repo(entry, dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch_url(entry.url, tmp)
        check = verify(name, tmp)
        if check.status == "mismatch":
            raise WeightsError(f"downloaded {entry.url} does not match the registry: {check.message}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch_url(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` with torch.hub's downloader (urllib underneath, with progress)."""
    from torch.hub import download_url_to_file  # imported here: listing/verifying needs no torch

    try:
        download_url_to_file(url, str(dest), progress=True)
    except Exception as err:  # network errors come in many types; the message is what matters
        raise WeightsError(f"cannot download {url}: {err}") from err


def _download_repo(entry: WeightEntry, dest: Path) -> Path:
    """Snapshot a Hugging Face repository into ``dest`` (huggingface_hub resumes partial downloads)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise WeightsError(f"downloading {entry.name} needs huggingface_hub: {err}") from err
    try:
        snapshot_download(repo_id=entry.repo_id, local_dir=str(dest))
    except Exception as err:
        raise WeightsError(f"cannot download hf://{entry.repo_id}: {err}") from err
    return dest
