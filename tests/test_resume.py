"""Resume: newest-checkpoint selection, and SIGTERM / SIGUSR1 -> checkpoint -> identical continuation."""
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from dicetalk.resume import (hpc_checkpoints, newest_checkpoint, next_hpc_checkpoint, prune_hpc_checkpoints,
                             resolve_ckpt_path, run_checkpoints)
from toy_training import train

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
TOY = Path(__file__).with_name("toy_training.py")


def _touch(path: Path, mtime: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def _trainer(root: Path, dirpath: Path | None) -> SimpleNamespace:
    """What resolve_ckpt_path reads from a Trainer."""
    return SimpleNamespace(default_root_dir=str(root), checkpoint_callbacks=[ModelCheckpoint(dirpath=dirpath)])


# -- selection -----------------------------------------------------------------------------------------------
def test_newest_checkpoint_by_mtime_then_hpc_number(tmp_path):
    hpc9 = _touch(tmp_path / "hpc_ckpt_9.ckpt", 1000)
    hpc10 = _touch(tmp_path / "hpc_ckpt_10.ckpt", 2000)
    last = _touch(tmp_path / "ck" / "last.ckpt", 3000)
    assert newest_checkpoint([hpc9, hpc10, last]) == last
    os.utime(hpc9, (4000, 4000))
    assert newest_checkpoint([hpc9, hpc10, last]) == hpc9  # time, not the number, decides
    os.utime(hpc10, (4000, 4000))
    assert newest_checkpoint([hpc9, hpc10, last]) == hpc10  # a tie goes to the higher number (numeric order)
    assert newest_checkpoint([tmp_path / "missing.ckpt"]) is None


def test_next_hpc_checkpoint_numbers_like_lightning(tmp_path):
    assert next_hpc_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_1.ckpt"
    _touch(tmp_path / "hpc_ckpt_9.ckpt", 1)
    _touch(tmp_path / "hpc_ckpt_10.ckpt", 1)
    _touch(tmp_path / "hpc_ckpt_x.ckpt", 1)  # not Lightning's: ignored
    assert next_hpc_checkpoint(tmp_path) == tmp_path / "hpc_ckpt_11.ckpt"


def test_prune_hpc_checkpoints_keeps_the_newest(tmp_path):
    files = {n: _touch(tmp_path / f"hpc_ckpt_{n}.ckpt", n) for n in (1, 2, 9, 10, 11)}
    other = _touch(tmp_path / "last.ckpt", 1)
    assert prune_hpc_checkpoints(files[10], keep=2) == [files[1], files[2]]  # 9 and 10 kept, 11 is newer
    assert hpc_checkpoints(tmp_path) == [files[9], files[10], files[11]]
    assert prune_hpc_checkpoints(files[11]) == [files[9], files[10]]
    assert prune_hpc_checkpoints(other) == [] and other.is_file()  # only hpc checkpoints are touched
    assert hpc_checkpoints(tmp_path) == [files[11]]


def test_run_checkpoints_finds_hpc_and_last_files(tmp_path):
    hpc = _touch(tmp_path / "hpc_ckpt_1.ckpt", 1)
    last = _touch(tmp_path / "ck" / "last.ckpt", 2)
    last_v1 = _touch(tmp_path / "ck" / "last-v1.ckpt", 3)
    _touch(tmp_path / "ck" / "epoch=0-step=5.ckpt", 4)  # not a resume candidate
    assert sorted(run_checkpoints(_trainer(tmp_path, tmp_path / "ck"))) == sorted([hpc, last, last_v1])
    # no explicit dirpath: ModelCheckpoint saves under <root>/<logger>/version_k/checkpoints
    logged = _touch(tmp_path / "lightning_logs" / "version_3" / "checkpoints" / "last.ckpt", 5)
    assert sorted(run_checkpoints(_trainer(tmp_path, None))) == sorted([hpc, logged])


@pytest.mark.parametrize("ckpt_path, env, expected", [
    ("auto", {}, "newest"),
    ("last", {}, "newest"),
    (None, {}, None),  # a local run without --ckpt_path starts fresh
    (None, {"SLURM_JOB_ID": "7"}, "newest"),  # a (re)started SLURM job resumes
    (None, {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "bash"}, None),  # interactive shell: like local
    ("given.ckpt", {}, "given.ckpt"),
    ("given.ckpt", {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "0"}, "given.ckpt"),
    ("given.ckpt", {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}, "newest"),  # requeued: keep the progress
    ("hpc", {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}, "hpc"),
])
def test_resolve_ckpt_path(tmp_path, ckpt_path, env, expected):
    _touch(tmp_path / "hpc_ckpt_1.ckpt", 1000)
    newest = _touch(tmp_path / "ck" / "last.ckpt", 2000)
    got = resolve_ckpt_path(_trainer(tmp_path, tmp_path / "ck"), ckpt_path, env)
    assert got == (str(newest) if expected == "newest" else expected)


@pytest.mark.parametrize("ckpt_path, env", [("auto", {}), (None, {"SLURM_JOB_ID": "7"}),
                                            ("given.ckpt", {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"})])
def test_resolve_ckpt_path_without_checkpoints(tmp_path, ckpt_path, env):
    expected = None if ckpt_path in ("auto", None) else ckpt_path
    assert resolve_ckpt_path(_trainer(tmp_path / "run", tmp_path / "run" / "ck"), ckpt_path, env) == expected


# -- interrupted and resumed runs ----------------------------------------------------------------------------
MAX_STEPS, EVERY = 12, 3  # 5 batches an epoch


def _fake_scontrol(bin_dir: Path) -> dict[str, str]:
    """A SLURM job's environment with a fake scontrol that records the call and, like SLURM on requeue,
    sends SIGTERM to the job (its caller)."""
    bin_dir.mkdir()
    tool = bin_dir / "scontrol"
    tool.write_text(f'#!/bin/bash\necho "scontrol $*" >> {bin_dir}/calls.log\nkill -TERM $PPID\n')
    tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1",
            "SLURM_JOB_NAME": "toy", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0"}


def test_signal_checkpoint_then_resume_matches_uninterrupted_run(tmp_path):
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    # name: (signal sent at the start of training step `step`, extra environment, hpc checkpoint that wins)
    cases = {
        "SIGTERM": ("SIGTERM", 7, {}, 1),  # mid-epoch (5 batches an epoch)
        "SIGUSR1": ("SIGUSR1", 4, {}, 1),  # on the last batch of epoch 0
        # under SLURM Lightning owns SIGUSR1: it saves hpc_ckpt_1 and runs `scontrol requeue`, SLURM answers
        # with SIGTERM, and CheckpointOnSignal saves hpc_ckpt_2 at the end of the step
        "SLURM": ("SIGUSR1", 6, _fake_scontrol(tmp_path / "bin"), 2),
    }
    procs = {name: subprocess.Popen(
        [sys.executable, str(TOY), str(tmp_path / name), "--max-steps", str(MAX_STEPS), "--signal-at", str(step),
         "--signal", sig, "--every-n-steps", str(EVERY)],
        env={**base_env, **extra}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, (sig, step, extra, _) in cases.items()}
    reference = train(tmp_path / "reference", MAX_STEPS)  # meanwhile, uninterrupted in this process
    assert reference.global_step == MAX_STEPS

    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        sig, step, _, winner = cases[name]
        root = tmp_path / name
        stopped_by = "SIGTERM" if name == "SLURM" else sig
        assert proc.returncode == 128 + signal.Signals[stopped_by], out
        hpc = root / f"hpc_ckpt_{winner}.ckpt"
        assert f"{stopped_by}: saved {hpc} at global step {step + 1}; stopping" in out
        assert torch.load(hpc, weights_only=False)["global_step"] == step + 1  # the signalled step completed
        assert not (root / "final.pt").exists()
        # last.ckpt (saved every 3 steps) is older than the signal checkpoint: resume takes the signal one
        assert (root / "checkpoints" / "last.ckpt").is_file()
        assert hpc_checkpoints(root) == [hpc]  # under SLURM, Lightning's hpc_ckpt_1 was superseded and deleted

        stale = _touch(root / "hpc_ckpt_0.ckpt", 1)  # an older requeue's state
        resumed = train(root, MAX_STEPS, every_n_steps=EVERY)
        assert not stale.exists() and hpc.is_file()  # deleted once the run resumed from the newer one
        assert resumed.seen_steps == list(range(step + 1, MAX_STEPS))  # continued, nothing repeated
        assert resumed.global_step == reference.global_step
        for key, value in reference.state_dict().items():
            assert torch.equal(resumed.state_dict()[key], value), f"{name}: {key} differs after resume"
    assert (tmp_path / "bin" / "calls.log").read_text() == "scontrol requeue 4242\n"
