"""sbatch templates: rendered scripts agree with the requested layout; submission through fake sbatch/scontrol."""
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from dicetalk import slurm
from dicetalk.slurm import JobSpec, SlurmError, render

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def sbatch_options(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as a dict (flags without a value map to "")."""
    found = re.findall(r"^#SBATCH --([a-z-]+)(?:=(\S*))?$", script, flags=re.M)
    return {key: value for key, value in found}


def srun_line(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if line.startswith("srun ")]
    assert len(lines) == 1, script
    return lines[0].rstrip(" &").split()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Fake sbatch / scontrol / srun on PATH; each appends its argv (and sbatch its stdin) to calls.log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/bash\necho "sbatch $*" >> {log}\n'
        f'if [[ " $* " != *" --wrap "* ]]; then cat > {tmp_path}/stdin-$$.sbatch; fi\n'
        'if [ -n "$FAKE_SBATCH_FAIL" ]; then echo "sbatch: error: invalid partition" >&2; exit 1; fi\n'
        'echo "$((RANDOM + 1000));cluster"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {log}\n')
    (bin_dir / "srun").write_text(f'#!/bin/bash\necho "srun $*" >> {log}\nexec sleep 30 >/dev/null 2>&1\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for var in ("NODES", "GPUS", "CPUS", "TIME", "PARTITION", "ACCOUNT", "MEM", "JOB_NAME", "CONFIG", "DRY_RUN",
                "DATASET", "RAW", "STORE", "SHARDS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    for kind in ("embedder", "talker", "eval"):
        (tmp_path / "configs" / f"{kind}.yaml").write_text("trainer: {}\n")
    (tmp_path / "raw").mkdir()

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return calls


@pytest.mark.parametrize("kind", ["embedder", "talker"])
@pytest.mark.parametrize("nodes, gpus", [(1, 1), (2, 8), (4, 4)])
def test_training_script_matches_layout(kind, nodes, gpus, tmp_path):
    script = render(JobSpec(kind, nodes=nodes, gpus=gpus, cpus=6, config="configs/x.yaml", workdir=str(tmp_path)))
    opts = sbatch_options(script)
    assert opts["nodes"] == str(nodes)
    assert opts["ntasks-per-node"] == str(gpus)  # one task per GPU, as Lightning expects
    assert opts["gres"] == f"gpu:{gpus}"
    assert opts["cpus-per-task"] == "6"
    assert opts["signal"] == "SIGUSR1@90"
    assert opts["requeue"] == "" and opts["open-mode"] == "append"
    assert opts["output"] == "slurm-%x-%j.out"
    assert opts["mem"] == "0" and opts["job-name"] == f"dicetalk-{kind}"
    assert "partition" not in opts and "account" not in opts  # empty values drop the line
    cmd = srun_line(script)
    assert cmd[1:5] == [slurm.sys.executable, "-m", "dicetalk.cli", "fit"]
    assert cmd[cmd.index("--config") + 1] == "configs/x.yaml"
    assert cmd[cmd.index("--trainer.num_nodes") + 1] == str(nodes)
    assert cmd[cmd.index("--trainer.devices") + 1] == str(gpus)
    assert "--ckpt_path" not in cmd  # under SLURM, resume picks the newest checkpoint itself
    assert "{{" not in script and script.startswith("#!/bin/bash\n")


def test_optional_lines_and_extra_args(tmp_path):
    spec = JobSpec("talker", nodes=2, gpus=8, partition="gpu", account="proj42", time="2-00:00:00", mem="400G",
                   job_name="run7", config="configs/talker.yaml", extra=["--trainer.max_steps", "10",
                                                                        "--model.init_args.lr", "1e-5"],
                   workdir=str(tmp_path / "my dir"))
    script = render(spec)
    opts = sbatch_options(script)
    assert (opts["partition"], opts["account"], opts["time"], opts["mem"], opts["job-name"]) == (
        "gpu", "proj42", "2-00:00:00", "400G", "run7")
    assert srun_line(script)[-4:] == ["--trainer.max_steps", "10", "--model.init_args.lr", "1e-5"]
    assert f"cd '{tmp_path}/my dir'" in script  # quoted for the shell


def test_prep_array_script(tmp_path):
    spec = JobSpec("prep", raw="/data/MEAD", store="/data/store", shards=16, gpus=0, dataset="mead",
                   extra=["--workers", "2"], workdir=str(tmp_path))
    script = render(spec)
    opts = sbatch_options(script)
    assert opts["array"] == "0-15" and opts["nodes"] == "1" and opts["ntasks-per-node"] == "1"
    assert "gres" not in opts  # --gpus 0: CPU-only tasks
    assert opts["mem"] == "32G" and opts["requeue"] == "" and opts["signal"] == "B:USR1@90"
    cmd = srun_line(script)
    assert cmd[2:] == ["-m", "data_prep", "mead", "--raw", "/data/MEAD", "--out", "/data/store", "--shard",
                       '"$SLURM_ARRAY_TASK_ID"', "--num-shards", "16", "--no-progress", "--workers", "2"]
    assert sbatch_options(render(JobSpec("prep", raw="r", store="s", gpus=1)))["gres"] == "gpu:1"


@needs_bash
@pytest.mark.parametrize("kind", ["prep", "eval", "embedder", "talker"])
def test_rendered_scripts_are_valid_bash(kind, tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text(render(JobSpec(kind, raw="r", store="s", shards=3, nodes=1 if kind == "prep" else 2)))
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_submit_training_calls_sbatch_with_the_rendered_script(fake_slurm, tmp_path, capsys):
    assert slurm.main(["talker", "--nodes", "2", "--gpus", "8", "--", "--trainer.max_steps", "5"]) == 0
    calls = fake_slurm()
    assert calls == ["sbatch --parsable"]
    (submitted,) = tmp_path.glob("stdin-*.sbatch")
    expected = render(JobSpec("talker", nodes=2, gpus=8, extra=["--trainer.max_steps", "5"]))
    assert submitted.read_text() == expected
    assert re.search(r"submitted dicetalk-talker: job \d+\n", capsys.readouterr().out)


def test_submit_prep_adds_dependent_index_job(fake_slurm, tmp_path, capsys):
    assert slurm.main(["prep", "--raw", "raw", "--store", "store", "--shards", "4", "--partition", "cpu"]) == 0
    first, second = fake_slurm()
    assert first == "sbatch --parsable"
    array_id = re.search(r"submitted dicetalk-prep: job (\d+)", capsys.readouterr().out).group(1)
    assert f"--dependency=afterok:{array_id} " in second  # the array's job id, not the "id;cluster" string
    assert "--partition=cpu" in second
    assert second.endswith(f"--wrap {slurm.sys.executable} -m data_prep index store")
    assert sbatch_options(next(tmp_path.glob("stdin-*.sbatch")).read_text())["array"] == "0-3"


@pytest.mark.parametrize("how", ["env", "flag"])
def test_dry_run_prints_and_does_not_submit(fake_slurm, monkeypatch, capsys, how):
    monkeypatch.setenv("NODES", "2")  # make variables arrive as environment variables
    monkeypatch.setenv("GPUS", "4")
    argv = ["embedder", "--dry-run"] if how == "flag" else ["embedder"]
    if how == "env":
        monkeypatch.setenv("DRY_RUN", "1")
    assert slurm.main(argv) == 0
    out = capsys.readouterr().out
    assert fake_slurm() == []
    opts = sbatch_options(out)
    assert (opts["nodes"], opts["ntasks-per-node"], opts["gres"]) == ("2", "4", "gpu:4")


def test_dry_run_prep_shows_index_job(fake_slurm, capsys):
    assert slurm.main(["prep", "--raw", "raw", "--store", "store", "--shards", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert fake_slurm() == []
    assert "--dependency=afterok:<prep job id>" in out and "data_prep index store" in out


def test_command_line_beats_environment(fake_slurm, monkeypatch, capsys):
    monkeypatch.setenv("GPUS", "4")
    assert slurm.main(["talker", "--gpus", "2", "--dry-run"]) == 0
    assert sbatch_options(capsys.readouterr().out)["ntasks-per-node"] == "2"


@pytest.mark.parametrize("argv, message", [
    (["talker", "--config", "configs/missing.yaml"], "configs/missing.yaml: no such config file"),
    (["talker", "--gpus", "0"], "gpus (per node) must be at least 1"),
    (["prep", "--store", "s"], "prep needs --raw"),
    (["prep", "--raw", "nowhere", "--store", "s"], "nowhere: no such raw dataset folder"),
    (["prep", "--raw", "raw", "--store", "s", "--nodes", "2"], "use --shards, not --nodes"),
    (["eval", "--partition", "a b"], "partition must not contain spaces"),
])
def test_bad_settings_give_one_line_errors(fake_slurm, capsys, argv, message):
    assert slurm.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert fake_slurm() == []


def test_sbatch_failure_is_reported(fake_slurm, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "1")
    assert slurm.main(["embedder"]) == 1
    assert "invalid partition" in capsys.readouterr().err


def test_bad_environment_number(monkeypatch, capsys):
    monkeypatch.setenv("NODES", "two")
    assert slurm.main(["talker", "--dry-run"]) == 2
    assert "environment" in capsys.readouterr().err


def test_unknown_template_field_is_refused(tmp_path):
    (tmp_path / "eval.sbatch").write_text("#!/bin/bash\n#SBATCH --qos={{QOS}}\n")
    with pytest.raises(SlurmError, match=r"eval.sbatch: unknown template fields QOS"):
        render(JobSpec("eval"), template_dir=tmp_path)


@needs_bash
def test_array_task_requeues_itself_before_the_time_limit(fake_slurm, tmp_path):
    """The batch shell of a prep task gets SIGUSR1 (--signal=B:USR1@90) and runs scontrol requeue."""
    script = tmp_path / "prep.sbatch"
    script.write_text(render(JobSpec("prep", raw="raw", store="store", shards=8, workdir=str(tmp_path))))
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "777", "SLURM_ARRAY_TASK_ID": "5", "SLURM_JOB_ID": "778",
           "SLURM_JOB_NODELIST": "node1"}
    proc = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not any(c.startswith("srun ") for c in fake_slurm()):  # the trap is set before srun starts
            assert time.monotonic() < deadline, "srun was not started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=20)
    finally:
        try:  # bash and the fake srun's sleep share this new process group
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "scontrol requeue 777_5" in fake_slurm()
    assert any(c.startswith("srun ") and '--shard 5 ' in c for c in fake_slurm())
    assert "time limit near: requeue 777_5" in out


def test_submit_refuses_config_with_missing_inputs(fake_slurm, tmp_path, capsys):
    (tmp_path / "configs" / "talker.yaml").write_text(
        "model:\n  init_args:\n    embedder_ckpt: outputs/embedder/checkpoints/last.ckpt\n"
        "data:\n  init_args:\n    store: data/store\n")
    assert slurm.main(["talker", "--nodes", "2", "--gpus", "8"]) == 1
    err = capsys.readouterr().err
    assert "2 missing input(s) for configs/talker.yaml" in err and "make train-embedder" in err
    assert fake_slurm() == []  # nothing was queued
    assert slurm.main(["talker", "--dry-run"]) == 0  # a dry run shows the script and warns
    captured = capsys.readouterr()
    assert captured.out.startswith("#!/bin/bash") and captured.err.startswith("warning: 2 missing input(s)")
    (tmp_path / "data" / "store").mkdir(parents=True)
    (tmp_path / "data" / "store" / "manifest.jsonl").write_text("{}\n")
    assert slurm.main(["talker", "--", "--model.embedder_ckpt", "data/store/manifest.jsonl"]) == 0  # overrides count
    assert fake_slurm() == ["sbatch --parsable"]
