"""Import of the released DICE-Talk checkpoints (synthesised in the released key layout) and the
restricted unpickler for the released .npy priors."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dicetalk.official import (RELEASED_FILES, UnsafePickleError, import_official, load_prior, map_released,
                               safe_load_npy)

REFERENCE = Path(__file__).resolve().parent / "data" / "released_checkpoints.json"  # released keys and shapes


def released_key(our_key: str) -> tuple[str, str]:
    """Inverse of the import mapping, written out independently: (file, key in that file)."""
    for prefix, name in (("audio_proj.", "audio_linear.pth"), ("pose_guider.", "pose_guider.pth"), ("unet.", "unet.pth"),
                         ("emotion.", "emo_model.pth"), ("classifier.", "emo_model.pth")):
        if our_key.startswith(prefix):
            return name, our_key if prefix == "classifier." else our_key[len(prefix):]
    raise KeyError(our_key)


def test_every_released_key_and_shape_maps_onto_the_full_talker():
    from dicetalk.models.talker import build_meta_talker

    reference = json.loads(REFERENCE.read_text())
    talker = build_meta_talker()
    shapes = {k: v.shape for k, v in talker.state_dict().items()}
    files = {name: {key: torch.empty(shape, device="meta") for key, shape in reference[name]}
             for name in ("audio_linear.pth", "emo_model.pth", "pose_guider.pth")}
    files["unet.pth"] = {key: torch.empty(shape, device="meta") for key, shape in reference["unet_added_keys"]}
    added = tuple(f"{p}." for p in talker.added_modules())
    mapped, report = map_released(files, shapes, added)
    assert report.unplaced == [] and report.not_provided == [] and report.unet_layout == "adapters"
    assert report.placed == {"audio_linear.pth": 8, "emo_model.pth": 31, "pose_guider.pth": 16, "unet.pth": 128}
    # the whole UNet: every stock key of our (unmodified diffusers) UNet plus the 128 added ones
    files["unet.pth"] = {k[len("unet."):]: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith("unet.")}
    assert len(files["unet.pth"]) == reference["unet_total_tensor_count"]
    mapped, report = map_released(files, shapes, added)
    assert report.unplaced == [] and report.unet_layout == "full"
    assert sum(t.numel() for k, t in mapped.items() if k.startswith("unet.")) == reference["unet_total_param_count"]


@pytest.fixture(scope="module")
def tiny():
    from dicetalk.models.talker import build_talker, tiny_talker_config

    torch.manual_seed(0)
    return build_talker("tiny", config=tiny_talker_config()).talker


def write_released(folder: Path, talker, full_unet: bool, extra: dict | None = None) -> dict[str, torch.Tensor]:
    """Random weights for every added key (+ the whole UNet) in the released files; returns our-key -> tensor."""
    gen = torch.Generator().manual_seed(1)
    files: dict[str, dict] = {name: {} for name in RELEASED_FILES}
    expected = {}
    added = tuple(f"{p}." for p in talker.added_modules())
    for key, value in talker.state_dict().items():
        if not (key.startswith(added) or (full_unet and key.startswith("unet."))):
            continue
        tensor = torch.randn(value.shape, generator=gen).to(value.dtype) if value.is_floating_point() else value.clone()
        name, released = released_key(key)
        files[name][released] = tensor
        expected[key] = tensor
    for (name, key), tensor in (extra or {}).items():
        files[name][key] = tensor
    folder.mkdir(parents=True, exist_ok=True)
    for name, state in files.items():
        torch.save(state, folder / name)
    return expected


@pytest.mark.parametrize("full_unet", [False, True])
def test_import_places_every_tensor_on_the_tiny_talker(tmp_path, tiny, full_unet):
    from dicetalk.models.talker import build_talker, tiny_talker_config

    extra = {("emo_model.pth", "unknown.weight"): torch.zeros(3),
             ("audio_linear.pth", "proj1.bias"): torch.zeros(7)}  # wrong shape replaces the right one
    expected = write_released(tmp_path / "ckpt", tiny, full_unet, extra)
    expected.pop("audio_proj.proj1.bias")
    report = import_official(tmp_path / "ckpt", tmp_path / "out.safetensors", talker=tiny, base="tiny")
    assert sorted(report.unplaced) == ["audio_linear.pth: proj1.bias (shape (7,), talker audio_proj.proj1.bias has (64,))",
                                       "emo_model.pth: unknown.weight (no unknown.weight in the talker)"]
    assert report.not_provided == ["audio_proj.proj1.bias"]
    assert report.unet_layout == ("full" if full_unet else "adapters")
    assert "unknown.weight" in report.render()
    torch.manual_seed(5)
    fresh = build_talker("tiny", config=tiny_talker_config()).talker
    meta = fresh.load_trainable(tmp_path / "out.safetensors")
    assert meta["mode"] == ("all" if full_unet else "new") and meta["base"] == "tiny"
    state = fresh.state_dict()
    for key, tensor in expected.items():
        torch.testing.assert_close(state[key], tensor.to(state[key].dtype), msg=key)
    assert not list(tmp_path.glob(".*partial*"))


def test_import_reports_missing_files_and_refuses_pickled_code(tmp_path, tiny):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"proj1.bias": torch.zeros(64)}, folder / "audio_linear.pth")
    report = import_official(folder, tmp_path / "out.safetensors", talker=tiny, base="tiny")
    assert report.missing_files == ["emo_model.pth", "pose_guider.pth", "unet.pth"] and report.placed == {"audio_linear.pth": 1}
    torch.save({"proj1.bias": Evil()}, folder / "pose_guider.pth")  # not loadable with weights_only
    with pytest.raises(ValueError, match="pose_guider.pth: cannot load as a weights-only state dict"):
        import_official(folder, tmp_path / "out2.safetensors", talker=tiny, base="tiny")
    with pytest.raises(FileNotFoundError, match="nowhere: no such checkpoint folder"):
        import_official(tmp_path / "nowhere", tmp_path / "out3.safetensors", talker=tiny)


MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "dicetalk_pwned_marker"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_released_prior_format_loads(tmp_path):
    mu = np.random.default_rng(0).normal(size=(1, 256)).astype(np.float32)
    np.save(tmp_path / "happy.npy", {"mu": mu}, allow_pickle=True)  # exactly how the released files are built
    np.testing.assert_array_equal(load_prior(tmp_path / "happy.npy"), mu[0])
    np.save(tmp_path / "plain.npy", mu)
    np.testing.assert_array_equal(load_prior(tmp_path / "plain.npy"), mu[0])
    nested = {"mu": mu, "meta": [1, 2.5, "x", (3, None)], "sigma": np.ones((1, 256), np.float16)}
    np.save(tmp_path / "nested.npy", nested, allow_pickle=True)
    value = safe_load_npy(tmp_path / "nested.npy")
    assert value["meta"] == [1, 2.5, "x", (3, None)] and value["sigma"].dtype == np.float16
    np.save(tmp_path / "nomu.npy", {"x": mu}, allow_pickle=True)
    with pytest.raises(ValueError, match="no 'mu'"):
        load_prior(tmp_path / "nomu.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy file"):
        load_prior(tmp_path / "junk.npy")


def test_malicious_pickle_is_refused_without_running(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "angry.npy"
    np.save(path, np.array({"mu": Evil()}, dtype=object), allow_pickle=True)
    assert not MARKER.exists()
    with pytest.raises(UnsafePickleError, match=r"angry.npy: refusing to unpickle (posix|os)\.system"):
        load_prior(path)
    assert not MARKER.exists()
    # the same file through np.load(allow_pickle=True), as the released code reads it, would run the command
