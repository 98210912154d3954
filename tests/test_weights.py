"""Weights registry: local paths, checksum verification, atomic download, and the `weights` CLI."""

import argparse
import hashlib
import shutil
from pathlib import Path

import pytest

from dicetalk import weights
from dicetalk.cli_weights import add_weights_parser

PAYLOAD = b"not really a network, but bytes all the same\n" * 100


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """A private weights folder with three test entries: pinned, unpinned and a repository."""
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path / "store"))
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    entries = {
        "pinned": weights.WeightEntry("pinned", "pinned.bin", "test", url=f"file://{source}",
                                      size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest()),
        "unpinned": weights.WeightEntry("unpinned", "unpinned.bin", "test", url=f"file://{source}"),
        "repo": weights.WeightEntry("repo", "repo-dir", "test", repo_id="someone/repo"),
    }
    monkeypatch.setattr(weights, "REGISTRY", entries)
    fetched = []

    def fake_fetch(url: str, dest: Path) -> None:  # no network in tests: "download" = local copy
        fetched.append(url)
        shutil.copyfile(url.removeprefix("file://"), dest)

    monkeypatch.setattr(weights, "_fetch_url", fake_fetch)
    return tmp_path / "store", source, fetched


def test_real_registry_lists_every_external_weight():
    names = set(weights.REGISTRY)
    assert {"fid-inception", "i3d-torchscript", "syncnet-v2", "emo-affectnet", "svd-xt", "whisper-tiny",
            "face-alignment-s3fd", "face-alignment-fan2d"} <= names
    for entry in weights.REGISTRY.values():
        assert (entry.url is None) != (entry.repo_id is None), entry.name
        assert entry.sha256 is None or len(entry.sha256) == 64
    fid = weights.get_entry("fid-inception")
    assert fid.sha256.startswith("6726825d") and fid.size == 95_628_359  # hash prefix in its file name
    assert weights.get_entry("svd-xt").repo_id == "stabilityai/stable-video-diffusion-img2vid-xt"
    assert weights.get_entry("whisper-tiny").repo_id == "openai/whisper-tiny"


def test_local_path_default_env_and_explicit(monkeypatch, tmp_path):
    monkeypatch.delenv(weights.ENV_VAR, raising=False)
    expected = Path("~/.cache/dicetalk/weights/syncnet_v2.model").expanduser()
    assert weights.local_path("syncnet-v2") == expected
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    assert weights.local_path("syncnet-v2") == tmp_path / "syncnet_v2.model"
    assert weights.local_path("syncnet-v2", tmp_path / "x.model") == tmp_path / "x.model"
    with pytest.raises(weights.WeightsError, match="unknown weights 'nope'"):
        weights.local_path("nope")


def test_verify_statuses(registry):
    store, _, _ = registry
    assert weights.verify("pinned").status == "missing"
    with pytest.raises(weights.WeightsError, match="dicetalk weights download pinned"):
        weights.resolve("pinned")
    store.mkdir()
    (store / "pinned.bin").write_bytes(PAYLOAD)
    check = weights.verify("pinned")
    assert check.status == "ok" and check.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert weights.resolve("pinned") == store / "pinned.bin"
    (store / "unpinned.bin").write_bytes(b"anything")
    check = weights.verify("unpinned")
    assert check.status == "unverified" and check.sha256 == hashlib.sha256(b"anything").hexdigest()
    assert weights.verify("repo").status == "missing"
    (store / "repo-dir").mkdir()
    (store / "repo-dir" / "config.json").write_text("{}")
    assert weights.verify("repo").status == "unverified"


@pytest.mark.parametrize("corrupt", [PAYLOAD[:-1] + b"X", PAYLOAD + b"X"])  # same size / other size
def test_mismatching_file_is_refused(registry, corrupt):
    store, _, _ = registry
    store.mkdir()
    (store / "pinned.bin").write_bytes(corrupt)
    assert weights.verify("pinned").status == "mismatch"
    with pytest.raises(weights.WeightsError, match="refusing weights 'pinned'"):
        weights.resolve("pinned")


def test_download_is_verified_and_atomic(registry):
    store, source, fetched = registry
    path = weights.resolve("pinned", download_missing=True)
    assert path.read_bytes() == PAYLOAD and len(fetched) == 1
    weights.download("pinned")  # already good: nothing fetched
    assert len(fetched) == 1
    source.write_bytes(b"tampered")  # the source changed: the new bytes fail the pinned checksum
    with pytest.raises(weights.WeightsError, match="does not match the registry"):
        weights.download("pinned", force=True)
    assert (store / "pinned.bin").read_bytes() == PAYLOAD  # the good copy was not replaced
    assert sorted(p.name for p in store.iterdir()) == ["pinned.bin"]  # no temporary file left behind


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="dicetalk")
    add_weights_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_list_download_verify(registry, capsys):
    store, _, _ = registry
    assert _run_cli(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "pinned" in out and "missing" in out and "hf://someone/repo" in out
    assert _run_cli(["weights", "verify", "pinned"]) == 1  # asked for and missing
    assert _run_cli(["weights", "download", "pinned", "unpinned"]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "unverified" in out and hashlib.sha256(PAYLOAD).hexdigest() in out
    assert _run_cli(["weights", "verify"]) == 0  # all present ones good; missing repo skipped
    (store / "pinned.bin").write_bytes(b"corrupt")
    assert _run_cli(["weights", "verify"]) == 1
    assert "mismatch" in capsys.readouterr().out
    assert _run_cli(["weights", "download", "nope"]) == 2
    assert "unknown weights 'nope'" in capsys.readouterr().err
