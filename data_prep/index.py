"""Merge the clip folders of a store into ``manifest.jsonl`` + ``failures.jsonl`` and assign splits.

Splits are identity-disjoint. MEAD: the test identities are fixed (default M003 M030 W009 W015 W029); ``val``
identities are drawn (seeded) from the rest. HDTF: speakers are drawn (seeded) into test until their videos
reach the target count (default 20), then ``val`` speakers likewise. At least one identity per dataset always
stays in train.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from data_prep.layouts import hdtf_names
from dicetalk import media
from dicetalk.constants import EMOTIONS, FPS, HDTF_TEST_VIDEOS, MEAD_TEST_IDS


@dataclass
class SplitConfig:
    mead_test_ids: tuple[str, ...] = MEAD_TEST_IDS
    hdtf_test_videos: int = HDTF_TEST_VIDEOS
    val: float = 1  # identities per dataset for val: a count (>= 1) or a fraction of the non-test ones (< 1)
    seed: int = 0


def read_rows(store: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Finished clips' meta rows and the failure records of clips that are not finished, both sorted."""
    rows = []
    for meta in sorted((store / "clips").glob("*/meta.json")):
        if meta.parent.name.startswith("."):
            continue
        try:
            rows.append(json.loads(meta.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{meta}: unreadable meta.json ({exc})") from exc
    done = {row["clip_id"] for row in rows}
    failures = [json.loads(p.read_text()) for p in sorted((store / "failures").glob("*.json"))]
    failures = [f for f in failures if f["clip_id"] not in done]  # a later run fixed these
    return sorted(rows, key=lambda r: r["clip_id"]), failures


def _n_val(n_left: int, val: float) -> int:
    if n_left < 2:  # one identity left: it is the training set
        return 0
    wanted = round(val * n_left) if val < 1 else int(val)
    return max(0, min(wanted, n_left - 1))


def assign_splits(rows: list[dict[str, Any]], config: SplitConfig = SplitConfig()) -> dict[str, str]:
    """clip_id -> "train" | "val" | "test", identity-disjoint within every dataset."""
    rng = random.Random(config.seed)
    split: dict[str, str] = {}
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_dataset[row["dataset"]].append(row)
    for dataset in sorted(by_dataset):
        members = by_dataset[dataset]
        identities = sorted({r["identity"] for r in members})
        if dataset == "mead":
            test = set(identities) & set(config.mead_test_ids)
        else:
            videos: dict[str, set[str]] = defaultdict(set)
            for r in members:
                videos[r["identity"]].add(hdtf_names(r["clip_id"])[0])
            order = identities.copy()
            rng.shuffle(order)
            test, n_videos = set(), 0
            for identity in order[: len(order) - 1]:  # keep one speaker for training
                if n_videos >= config.hdtf_test_videos:
                    break
                test.add(identity)
                n_videos += len(videos[identity])
        rest = [i for i in identities if i not in test]
        val = set(rng.sample(rest, _n_val(len(rest), config.val)))
        for r in members:
            split[r["clip_id"]] = "test" if r["identity"] in test else "val" if r["identity"] in val else "train"
    return split


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with media.atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table(title: str, counts: dict[tuple, list[float]], header: tuple[str, ...], order=None) -> str:
    lines = [title, "  " + "".join(f"{h:<12}" for h in header) + f"{'clips':>8}{'hours':>9}"]
    for key in sorted(counts, key=order or (lambda k: tuple(str(x) for x in k))):
        clips, hours = counts[key]
        lines.append("  " + "".join(f"{str(k):<12}" for k in key) + f"{int(clips):>8}{hours:>9.3f}")
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]], failures: list[dict[str, Any]]) -> str:
    """Clips and hours per dataset / split / emotion / level, and failures by reason, as text tables."""
    def group(key) -> dict[tuple, list[float]]:
        out: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0])
        for r in rows:
            k = key(r)
            if k is not None:
                out[k][0] += 1
                out[k][1] += r["n_frames"] / r["fps"] / 3600
        return out

    emotion_rank = {e: i for i, e in enumerate(EMOTIONS)}
    parts = [
        _table("by dataset and split", group(lambda r: (r["dataset"], r["split"])), ("dataset", "split")),
        _table("by emotion (emotion-labelled clips)", group(lambda r: (r["emotion"],) if r["emotion"] else None),
               ("emotion",), order=lambda k: emotion_rank.get(k[0], len(EMOTIONS))),
        _table("by emotion level", group(lambda r: (r["level"],) if r["level"] else None), ("level",)),
        _table("total", group(lambda r: ("all",)), ("",)),
    ]
    reasons = Counter((f["reason"], f.get("stage", "")) for f in failures)
    parts.append("failures by reason" + ("" if reasons else ": none"))
    parts += [f"  {reason:<18}{stage:<12}{n:>8}" for (reason, stage), n in sorted(reasons.items())]
    return "\n".join(parts)


def build_index(store: str | Path, config: SplitConfig = SplitConfig()) -> tuple[list[dict], list[dict], str]:
    """Write ``manifest.jsonl`` and ``failures.jsonl`` into the store; returns (rows, failures, summary)."""
    store = Path(store)
    if not (store / "clips").is_dir():
        raise FileNotFoundError(f"{store}: no clips/ folder (not a data_prep store)")
    rows, failures = read_rows(store)
    split = assign_splits(rows, config)
    manifest = [{**{k: v for k, v in r.items() if k != "files"}, "split": split[r["clip_id"]], "files": r["files"]}
                for r in rows]
    for row in manifest:
        if row["fps"] != FPS:
            raise ValueError(f"{store}/clips/{row['clip_id']}/meta.json: fps {row['fps']} != {FPS}")
    _write_jsonl(store / "manifest.jsonl", manifest)
    _write_jsonl(store / "failures.jsonl", failures)
    return manifest, failures, summary(manifest, failures)
