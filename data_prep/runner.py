"""Run the per-clip pipeline over one shard of a raw dataset: resume, workers, progress bar, log file.

Resume: a clip whose folder ``clips/{clip_id}`` exists is done and skipped; a clip with a failure record is
skipped too unless ``retry_failed``. Half-written ``clips/.tmp-{clip_id}-{pid}`` folders of this shard's clips
are deleted at start. Shards own disjoint clips, so concurrent shards never touch each other's files
(``prep.log`` is shared, opened in append mode, one line per write).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from data_prep import layouts
from data_prep.pipeline import Models, PrepConfig, process_clip

log = logging.getLogger("data_prep")


@dataclass
class RunSummary:
    total: int  # clips in this shard (after --limit)
    skipped: int  # already done, or failed before
    done: int
    failed: int
    complete: int  # clips of this shard in the store now, from this run or an earlier one
    reasons: Counter
    seconds: float

    @property
    def ok(self) -> bool:
        """Something in this shard succeeded, now or in an earlier run."""
        return self.complete > 0

    def render(self) -> str:
        lines = [f"clips: {self.total} in shard, {self.skipped} already handled, {self.done} done, "
                 f"{self.failed} failed in {self.seconds:.1f} s; {self.complete} of {self.total} in the store"]
        lines += [f"  failed {reason}: {n}" for reason, n in sorted(self.reasons.items())]
        return "\n".join(lines)


def setup_logging(store: Path, shard: int, num_shards: int) -> None:
    """Append INFO lines tagged with the shard and pid to ``STORE/prep.log``."""
    store.mkdir(parents=True, exist_ok=True)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(store / "prep.log", mode="a")
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s shard {shard}/{num_shards} pid %(process)d %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def clean_stale(store: Path, clip_ids: set[str]) -> int:
    """Delete leftover temp folders of these clips (a killed run's); other shards' temp folders stay."""
    removed = 0
    for tmp in (store / "clips").glob(".tmp-*"):
        clip_id = tmp.name[len(".tmp-"):].rsplit("-", 1)[0]
        if clip_id in clip_ids:
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


def preflight(config: PrepConfig) -> None:
    """Fail before touching any clip when a model's files are missing (one clear error, not N failures)."""
    from dicetalk import audio, face

    audio.resolve_whisper(config.whisper)
    if config.landmarks == "face_alignment":
        missing = face.missing_face_alignment_files()
        if missing:  # loading once here gives the download or the one clear error (see FaceAlignmentLandmarks)
            face.FaceAlignmentLandmarks(device=config.device)
    elif config.landmarks == "precomputed":
        face.make_backend("precomputed", precomputed_dir=config.landmarks_dir)
    if config.latents:
        from data_prep.pipeline import load_vae

        load_vae(config.latents)


# Per-worker state: the models are loaded once per process by the pool initializer.
_WORKER: tuple[Path, PrepConfig, Models] | None = None


def _init_worker(store: Path, config: PrepConfig, threads: int | None) -> None:
    global _WORKER
    import torch
    from transformers.utils import logging as hf_logging

    if threads:
        torch.set_num_threads(threads)  # N workers x all cores each would oversubscribe the machine
    hf_logging.disable_progress_bar()
    _WORKER = (store, config, Models(config))


def _work(spec: layouts.ClipSpec) -> dict:
    assert _WORKER is not None, "worker not initialised"
    store, config, models = _WORKER
    return process_clip(spec, store, config, models)


def run(
    dataset: str,
    raw: str | os.PathLike,
    store: str | os.PathLike,
    config: PrepConfig,
    shard: int = 0,
    num_shards: int = 1,
    workers: int = 1,
    limit: int | None = None,
    retry_failed: bool = False,
    view: str = "front",
    progress: bool = True,
) -> RunSummary:
    """Prepare this shard's clips of ``raw`` into ``store``; returns the counts (also logged and printed)."""
    from tqdm import tqdm

    start = time.time()
    store = Path(store)
    setup_logging(store, shard, num_shards)
    (store / "clips").mkdir(exist_ok=True)
    (store / "failures").mkdir(exist_ok=True)
    clips = layouts.shard(layouts.discover(dataset, raw, view), shard, num_shards)
    if limit is not None:
        clips = clips[:limit]
    removed = clean_stale(store, {c.clip_id for c in clips})
    todo = [c for c in clips if not (store / "clips" / c.clip_id).is_dir()
            and (retry_failed or not (store / "failures" / f"{c.clip_id}.json").is_file())]
    log.info("start %s raw=%s clips=%d todo=%d workers=%d stale_tmp_removed=%d config=%s",
             dataset, raw, len(clips), len(todo), workers, removed, config)

    results: list[dict] = []
    bar = tqdm(total=len(todo), unit="clip", desc=f"{dataset} shard {shard}/{num_shards}", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)

    def record(result: dict) -> None:
        results.append(result)
        if result["status"] == "done":
            log.info("done %s n_frames=%d", result["clip_id"], result["n_frames"])
        else:
            log.warning("failed %s %s: %s", result["clip_id"], result["reason"], result["detail"])
        bar.update(1)

    if todo:
        preflight(config)
        if workers <= 1:
            _init_worker(store, config, threads=None)
            for spec in todo:
                record(_work(spec))
        else:
            # spawn: decord readers and torch models must not be inherited through fork.
            context = multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // workers)
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(store, config, threads)) as pool:
                for future in as_completed([pool.submit(_work, spec) for spec in todo]):
                    record(future.result())
    bar.close()

    failed = [r for r in results if r["status"] != "done"]
    complete = sum((store / "clips" / c.clip_id).is_dir() for c in clips)
    summary = RunSummary(len(clips), len(clips) - len(todo), len(results) - len(failed), len(failed), complete,
                         Counter(r["reason"] for r in failed), time.time() - start)
    log.info("finished: %s", summary.render().replace("\n", ";"))
    return summary
