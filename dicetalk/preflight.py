"""Check a run's inputs (store, weights, checkpoints) before any heavy work, and list all that is missing at once.

    python -m dicetalk.preflight CONFIG [--key.path value ...]

:func:`requirements_from_config` knows the config keys that name inputs (:data:`KNOWN_INPUTS`);
:func:`check` raises one :class:`PreflightError` naming every missing input and how to get it. LightningCLI
runs it in ``before_instantiate_classes`` (see dicetalk/cli.py), ``dicetalk.slurm`` before it submits a job.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dicetalk import weights

Kind = Literal["file", "dir"]
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SPECIAL_CKPT = {"auto", "last", "hpc", "best"}


class PreflightError(RuntimeError):
    """Inputs of a run are missing; the message lists all of them."""


@dataclass(frozen=True)
class Requirement:
    """One input of a run: what it is, where it should be, and how to get it when it is not there."""

    what: str
    path: str
    how: str
    kind: Kind = "file"

    def missing(self, root: str | Path | None = None) -> bool:
        """True when the path (relative ones from ``root``, default the working directory) is absent.

        A Hugging Face repo id (``openai/whisper-tiny``) counts as present when it is in the local HF cache.
        """
        path = Path(root or ".") / Path(self.path).expanduser()
        if path.exists():
            return not (path.is_file() if self.kind == "file" else path.is_dir())
        return not (self.kind == "dir" and _HUB_ID.match(self.path) and _hub_cached(self.path))


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, or no huggingface_hub: the path is then simply missing
        return False
    return True


def check(requirements: Iterable[Requirement], context: str = "", root: str | Path | None = None) -> None:
    """Raise a PreflightError listing every missing requirement (relative paths from ``root``)."""
    missing = [r for r in requirements if r.missing(root)]
    if missing:
        lines = [f"  - {r.what}: {r.path} not found. {r.how}" for r in missing]
        where = f" for {context}" if context else ""
        raise PreflightError(f"{len(missing)} missing input(s){where}:\n" + "\n".join(lines))


def _weights_hint(name: str) -> str:
    entry = weights.get_entry(name)
    note = f" ({entry.note})" if entry.note else ""
    return f"Run `dicetalk weights download {name}` and point the config at {weights.local_path(name)}{note}."


@dataclass(frozen=True)
class KnownInput:
    """A config key (dotted) that names an input, with its description and how to get it."""

    key: str
    what: str
    how: str
    kind: Kind = "file"
    inner: str = ""  # a file that must exist inside the folder (a store without manifest is not ready)
    weights_name: str = ""  # registry entry: the hint says how to download it (computed when checking)


KNOWN_INPUTS: tuple[KnownInput, ...] = (
    KnownInput("data.init_args.store", "training store manifest (data.init_args.store)",
               "Prepare the store first: `make prep-mead` / `make prep-hdtf`, or `python -m data_prep mead "
               "--raw RAW --out STORE` then `python -m data_prep index STORE`.", "file", "manifest.jsonl"),
    KnownInput("model.init_args.embedder_ckpt", "stage-1 embedder checkpoint (model.init_args.embedder_ckpt)",
               "Train stage 1 first (`make train-embedder`) and point this key at its checkpoint "
               "(e.g. outputs/embedder/checkpoints/last.ckpt)."),
    KnownInput("model.init_args.pretrained", "Stable Video Diffusion weights (model.init_args.pretrained)",
               "", "dir", weights_name="svd-xt"),
    KnownInput("model.init_args.whisper", "whisper-tiny weights (model.init_args.whisper)", "", "dir",
               weights_name="whisper-tiny"),
    KnownInput("data.init_args.whisper", "whisper-tiny weights (data.init_args.whisper)", "", "dir",
               weights_name="whisper-tiny"),
    KnownInput("ckpt_path", "checkpoint to resume from (--ckpt_path)",
               "Check the path, or pass --ckpt_path auto to resume from this run's newest checkpoint."),
)


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def requirements_from_config(config: Any, known: Iterable[KnownInput] = KNOWN_INPUTS) -> list[Requirement]:
    """Requirements for the known input keys set in ``config`` (a dict or a jsonargparse Namespace).

    A value that names a weights registry entry (``"svd-xt"``) stands for its local path.
    """
    config = config.as_dict() if hasattr(config, "as_dict") else config
    found = []
    for item in known:
        value = _lookup(config, item.key)
        if value is None or (item.key == "ckpt_path" and str(value) in _SPECIAL_CKPT):
            continue
        value = str(weights.local_path(value)) if str(value) in weights.REGISTRY else str(value)
        path = str(Path(value) / item.inner) if item.inner else value
        how = _weights_hint(item.weights_name) if item.weights_name else item.how
        found.append(Requirement(item.what, path, how, item.kind))
    return found


def check_config(config: Any, context: str = "", root: str | Path | None = None) -> None:
    """:func:`check` the requirements of ``config`` (see :func:`requirements_from_config`)."""
    check(requirements_from_config(config), context, root)


def read_yaml(path: str | Path, error: type[Exception] = PreflightError) -> dict[str, Any]:
    """A YAML file as a dict; an unreadable or invalid file raises ``error`` with a one-line message."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise error(f"{path}: cannot read the config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with ``--a.b.c value`` / ``--a.b.c=value`` overrides applied (others ignored).

    As in LightningCLI, ``--data.X`` / ``--model.X`` stand for ``--data.init_args.X`` / ``--model.init_args.X``.
    """
    config = read_yaml(path)
    args = list(overrides)
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                continue
            value = args[i + 1]
        parts = key.split(".")
        if parts[0] in ("data", "model") and len(parts) > 1 and parts[1] not in ("init_args", "class_path"):
            parts.insert(1, "init_args")
        node = config
        *parents, leaf = parts
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[leaf] = value
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicetalk.preflight", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    args, overrides = parser.parse_known_args(argv)
    try:
        check_config(load_config(args.config, overrides), args.config)
    except PreflightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.config}: all inputs present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
