"""`dicetalk weights list|download|verify`: inspect, fetch and check the external weights registry."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from dicetalk import weights


def add_weights_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``weights`` command to ``dicetalk``'s sub-parsers; each action sets ``func(args) -> int``."""
    parser = subparsers.add_parser("weights", help="list, download or verify external weights")
    actions = parser.add_subparsers(dest="weights_action", required=True)

    p_list = actions.add_parser("list", help="table of registered weights and their local status")
    p_list.add_argument("--no-hash", action="store_true",
                        help="skip hashing local files (fast; status shows present/missing only)")
    p_list.set_defaults(func=_guard(_cmd_list))

    p_down = actions.add_parser("download", help="fetch weights into $DICETALK_WEIGHTS (or --path)")
    p_down.add_argument("names", nargs="+", metavar="NAME", help="registry names, or 'all'")
    p_down.add_argument("--path", help="explicit destination (only with a single NAME)")
    p_down.add_argument("--force", action="store_true", help="download even if a good copy exists")
    p_down.set_defaults(func=_guard(_cmd_download))

    p_ver = actions.add_parser("verify", help="check local weights against the registry checksums")
    p_ver.add_argument("names", nargs="*", metavar="NAME", help="registry names (default: all present)")
    p_ver.add_argument("--path", help="explicit file to check (only with a single NAME)")
    p_ver.set_defaults(func=_guard(_cmd_verify))
    return parser


def _guard(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a registry error into a one-line message and exit status 2 instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except weights.WeightsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


def _names(requested: list[str]) -> list[str]:
    names = list(weights.REGISTRY) if requested in ([], ["all"]) else requested
    for name in names:
        weights.get_entry(name)  # unknown names fail before any work starts
    return names


def _single_path(args: argparse.Namespace, names: list[str]) -> str | None:
    if args.path is not None and len(names) != 1:
        raise weights.WeightsError("--path needs exactly one NAME")
    return args.path


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def _cmd_list(args: argparse.Namespace) -> int:
    rows = [("name", "status", "size", "sha256", "local path", "source")]
    for name, entry in weights.REGISTRY.items():
        where = weights.local_path(name)
        if args.no_hash:
            status = "present" if where.exists() else "missing"
        else:
            status = weights.verify(name).status
        sha = entry.sha256[:16] + "..." if entry.sha256 else "-"
        rows.append((name, status, _size(entry.size), sha, str(where), entry.source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    names = _names(args.names)
    path = _single_path(args, names)
    failed = 0
    for name in names:
        try:
            dest = weights.download(name, path, force=args.force)
        except weights.WeightsError as err:
            print(f"FAILED {name}: {err}", file=sys.stderr)
            failed += 1
            continue
        check = weights.verify(name, dest)
        print(f"{check.status:10s} {name}: {dest}" + (f" sha256 {check.sha256}" if check.sha256 else ""))
    return 1 if failed else 0


def _cmd_verify(args: argparse.Namespace) -> int:
    names = _names(args.names)
    path = _single_path(args, names)
    bad = shown = 0
    for name in names:
        check = weights.verify(name, path)
        if check.status == "missing" and not args.names:
            continue  # verifying "everything" means everything that is present
        detail = check.message or (f"sha256 {check.sha256}" if check.sha256 else "")
        print(f"{check.status:10s} {name}: {check.path}" + (f" ({detail})" if detail else ""))
        bad += check.status in ("missing", "mismatch")
        shown += 1
    if not shown:
        print(f"no registered weights found in {weights.weights_dir()}")
    return 1 if bad else 0
