"""Backbone architectures vs the published state-dict manifests; loading through the registry."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dicetalk import weights
from dicetalk.metrics.backbones import EmoAffectNetResNet50, FIDInceptionV3, SyncNet, load_state_dict_into
from dicetalk.metrics.backbones.emonet import Conv2dSame
from dicetalk.metrics.backbones.inception import _pool_branch

MANIFEST = Path(__file__).resolve().parent / "data" / "metric_backbones.json"  # copy of the reference manifest
ARCHS = [(FIDInceptionV3, "fid_inception", "keys"),
         (SyncNet, "syncnet_v2", "model_state_dict_keys_modern_torch"),
         (EmoAffectNetResNet50, "emo_affectnet_resnet50", "keys")]


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text())


@pytest.mark.parametrize("cls,name,field", ARCHS)
def test_state_dict_keys_and_shapes_match_manifest(manifest, cls, name, field):
    ours = [(k, list(v.shape)) for k, v in cls().state_dict().items()]
    assert ours == [(k, s) for k, s in manifest[name][field]]  # same names, shapes and order
    assert sum(p.numel() for p in cls().parameters()) == manifest[name]["num_params"]


def test_syncnet_layers_match_manifest_reprs(manifest):
    net = SyncNet()
    for stack, layers in manifest["syncnet_v2"]["layers"].items():
        for key, text in layers:
            assert repr(net.get_submodule(key)) == text, key


def _trace(net, names, x, method="forward"):
    shapes = {}
    def record(name):
        return lambda module, inputs, output: shapes.__setitem__(name, list(output.shape))

    hooks = [net.get_submodule(n).register_forward_hook(record(n)) for n in names]
    with torch.no_grad():
        out = getattr(net.eval(), method)(x)
    for h in hooks:
        h.remove()
    return shapes, out


def test_reference_input_shapes(manifest):
    """Every architecture runs on its reference input (batch 1) with the manifest's layer shapes."""
    torch.manual_seed(0)
    fid = manifest["fid_inception"]["shape_trace_299"]
    blocks = [n for n, kind, _ in fid if kind not in ("MaxPool2d", "AdaptiveAvgPool2d")]
    shapes, out = _trace(FIDInceptionV3(), blocks, torch.randn(1, 3, 299, 299))
    assert shapes == {n: s for n, kind, s in fid if n in blocks} and out.shape == (1, 2048)

    emo = dict(manifest["emo_affectnet_resnet50"]["shape_trace_224"])
    stages = ["conv_layer_s2_same", "layer1", "layer2", "layer3", "layer4"]
    shapes, out = _trace(EmoAffectNetResNet50(), stages, torch.randn(1, 3, 224, 224))
    assert all(shapes[n] == emo[n] for n in shapes) and out.shape == (1, 7)

    sync = SyncNet()
    for method, trace, x in [("forward_aud", "layer_trace_aud", torch.randn(1, 1, 13, 20)),
                             ("forward_lip", "layer_trace_lip", torch.randn(1, 3, 5, 224, 224))]:
        names = [n for n, _, _ in manifest["syncnet_v2"][trace]]
        shapes, out = _trace(sync, names, x, method)
        assert shapes == {n: [1] + s[1:] for n, _, s in manifest["syncnet_v2"][trace]}
        assert out.shape == (1, 1024)


def test_fid_pool_branches_follow_the_tf_graph():
    x = torch.ones(1, 1, 4, 4)
    assert torch.equal(_pool_branch(x, "avg"), x)  # padding not counted: borders stay 1 (torchvision: 4/9)
    y = torch.arange(16.0).view(1, 1, 4, 4)
    assert _pool_branch(y, "max")[0, 0, 0, 0] == 5  # Mixed_7c max-pools


def test_emo_stem_pads_tf_same_two_before_three_after():
    conv = Conv2dSame(3, 4, 7, stride=2, bias=False)
    x = torch.randn(1, 3, 224, 224)
    expected = F.conv2d(F.pad(x, [2, 3, 2, 3]), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-1] == 112


@pytest.fixture()
def syncnet_file(tmp_path, monkeypatch):
    """A random SyncNet saved the way the legacy file is (no num_batches_tracked), as registry weights."""
    net = SyncNet()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path)
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    return path, state


def test_loads_legacy_file_strictly_and_frozen(syncnet_file):
    path, state = syncnet_file
    net = SyncNet()
    info = load_state_dict_into(net, "syncnet-v2")
    assert info["status"] == "unverified" and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_wrong_files_are_refused(syncnet_file, tmp_path, monkeypatch):
    path, state = syncnet_file
    bad = dict(state)
    bad["netfclip.3.weight"] = torch.zeros(10, 512)
    torch.save(bad, tmp_path / "bad.model")
    with pytest.raises(ValueError, match=r"bad.model: state dict does not match SyncNet.*netfclip.3.weight"):
        load_state_dict_into(SyncNet(), "syncnet-v2", tmp_path / "bad.model")
    extra = dict(state, **{"__S__.netcnnaud.0.weight": state["netcnnaud.0.weight"]})
    torch.save(extra, tmp_path / "extra.model")
    with pytest.raises(ValueError, match="unexpected"):
        load_state_dict_into(SyncNet(), "syncnet-v2", tmp_path / "extra.model")
    pinned = weights.WeightEntry("syncnet-v2", "syncnet_v2.model", "test", url="-", sha256="0" * 64)
    monkeypatch.setitem(weights.REGISTRY, "syncnet-v2", pinned)
    with pytest.raises(weights.WeightsError, match="refusing weights 'syncnet-v2'"):
        load_state_dict_into(SyncNet(), "syncnet-v2")


def test_default_backbones_need_their_weights(tmp_path, monkeypatch):
    from dicetalk.metrics import FID, FVD, EmoScore, SyncScore

    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    for metric, name in [(FID, "fid-inception"), (FVD, "i3d-torchscript"), (SyncScore, "syncnet-v2"),
                         (EmoScore, "emo-affectnet")]:
        with pytest.raises(weights.WeightsError, match=f"dicetalk weights download {name}"):
            metric()


class FakeI3D(torch.nn.Module):
    """Stands in for the I3D TorchScript: same call signature, 400 outputs."""

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return torch.cat([x.mean((2, 3, 4)), x.amax((2, 3, 4)), x.amin((2, 3, 4))], 1).repeat(1, 45)[:, :400]


def test_fvd_runs_a_torchscript_from_the_registry(tmp_path, monkeypatch):
    from dicetalk.metrics import FVD

    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path))
    torch.jit.save(torch.jit.script(FakeI3D()), str(tmp_path / "i3d_torchscript.pt"))
    fvd = FVD(batch_size=2)
    assert fvd.weights_info["status"] == "unverified" and fvd.weights_info["sha256"]
    g = torch.Generator().manual_seed(0)
    fvd.update(torch.randint(0, 256, (3, 16, 3, 20, 20), dtype=torch.uint8, generator=g), real=True)
    fvd.update(torch.randint(0, 128, (3, 16, 3, 20, 20), dtype=torch.uint8, generator=g), real=False)
    assert torch.isfinite(fvd.compute()) and fvd.counts == {"real": 3, "fake": 3}
    (tmp_path / "not_script.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        FVD(weights_path=tmp_path / "not_script.pt")
