"""DICE-Talk stage-2 talker: the modules added to the SVD UNet and the wrapper that attaches them."""

from .attention import ConditioningContext, DecoupledCrossAttnProcessor, attach_processors
from .audio_proj import AudioProjection, TokenProjection
from .build import TalkerParts, build_meta_talker, build_talker, build_unet, count_parameters, tiny_talker_config
from .classifier import EmotionClassifier, emotion_class
from .config import TalkerConfig
from .emotion import EmotionBank, EmotionConditioner, EmotionOutput
from .losses import LossWeights, classifier_loss, denoising_loss, total_loss, vq_loss
from .pose_guider import PoseGuider
from .talker import TRAINABLE_MODES, Talker, TalkerOutput

__all__ = [
    "AudioProjection",
    "ConditioningContext",
    "DecoupledCrossAttnProcessor",
    "EmotionBank",
    "EmotionClassifier",
    "EmotionConditioner",
    "EmotionOutput",
    "LossWeights",
    "PoseGuider",
    "TRAINABLE_MODES",
    "Talker",
    "TalkerConfig",
    "TalkerOutput",
    "TalkerParts",
    "TokenProjection",
    "attach_processors",
    "build_meta_talker",
    "build_talker",
    "build_unet",
    "classifier_loss",
    "count_parameters",
    "denoising_loss",
    "emotion_class",
    "tiny_talker_config",
    "total_loss",
    "vq_loss",
]
