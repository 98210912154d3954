"""Full svd-xt talker on the meta device: added parameter counts equal the released DICE-Talk checkpoints.

Numbers from ../shared/reference/released_checkpoints.md (the released files' keys and shapes).
"""

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel

from dicetalk.models.talker import build_meta_talker, count_parameters
from dicetalk.models.talker.build import SVD_XT_UNET_CONFIG

STOCK_UNET = 1_524_623_082
RELEASED = {
    "audio_proj": 54_300_672,
    "emotion": 74_067_968,
    "classifier": 792_854,
    "pose_guider": 1_086_480,
    "audio_stream": 51_118_080,
    "emotion_stream": 51_118_080,
}


@pytest.fixture(scope="module")
def talker():
    return build_meta_talker()


def test_stock_unet_count():
    with torch.device("meta"):
        unet = UNetSpatioTemporalConditionModel(**SVD_XT_UNET_CONFIG)
    assert count_parameters(unet) == STOCK_UNET


def stream_params(talker, index):
    return {n: p for n, p in talker.unet.named_parameters() if f".processor.to_k_ip.{index}." in n or f".processor.to_v_ip.{index}." in n}


def test_added_counts_equal_the_released_model(talker):
    got = {
        "audio_proj": count_parameters(talker.audio_proj),
        "emotion": count_parameters(talker.emotion),
        "classifier": count_parameters(talker.classifier),
        "pose_guider": count_parameters(talker.pose_guider),
        "audio_stream": count_parameters(stream_params(talker, 0)),
        "emotion_stream": count_parameters(stream_params(talker, 1)),
    }
    assert got == RELEASED
    assert count_parameters(talker.unet) == STOCK_UNET + 2 * RELEASED["audio_stream"]


def test_stream_layout_matches_unet_pth(talker):
    sd = talker.unet.state_dict()
    added = {k: tuple(v.shape) for k, v in sd.items() if ".processor." in k}
    assert len(added) == 128 and len(sd) == 1556  # 1428 stock tensors + 128
    widths = {320: 0, 640: 0, 1280: 0}
    for key, shape in added.items():
        assert key.endswith(("to_k_ip.0.weight", "to_k_ip.1.weight", "to_v_ip.0.weight", "to_v_ip.1.weight"))
        assert ".transformer_blocks.0.attn2.processor." in key or ".temporal_transformer_blocks.0.attn2.processor." in key
        assert shape[1] == 1024
        widths[shape[0]] += 1
    # Per stream and K/V: 5 x 320, 5 x 640, 6 x 1280 in each of the spatial and temporal sets.
    assert widths == {320: 5 * 2 * 2 * 2, 640: 5 * 2 * 2 * 2, 1280: 6 * 2 * 2 * 2}
    assert sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.0.weight"].shape == (320, 1024)


def test_released_key_names_of_the_added_modules(talker):
    assert sorted(talker.audio_proj.state_dict()) == sorted(
        f"{p}.{t}" for p in ("proj1", "proj2", "proj3", "norm") for t in ("weight", "bias"))
    emo = talker.emotion.state_dict()
    assert emo["codebook.codebook.weight"].shape == (64, 1024) and emo["codebook.fc.weight"].shape == (1024, 256)
    assert emo["kv_tokens_linear.proj1.weight"].shape == (1024, 1024) and emo["emo_linear.proj1.weight"].shape == (1024, 256)
    assert emo["attention.fc_q.weight"].shape == (1024, 1024) and len(emo) == 25
    assert talker.classifier.state_dict()["fc3.weight"].shape == (22, 256)
    guider = talker.pose_guider.state_dict()
    assert len(guider) == 16 and guider["conv_out.weight"].shape == (320, 256, 3, 3)


def test_trainable_modes_at_full_size(talker):
    new = count_parameters(talker.trainable_named_parameters("new"))
    assert new == sum(RELEASED.values())
    attention = count_parameters(talker.trainable_named_parameters("attention"))
    assert new < attention < count_parameters(talker.trainable_named_parameters("all"))
    assert count_parameters(talker.trainable_named_parameters("all")) == count_parameters(talker)
