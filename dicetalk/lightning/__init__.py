"""LightningModules: thin glue between models, losses, data and logging."""
from dicetalk.lightning.embedder_module import EmbedderModule
from dicetalk.lightning.talker_module import TalkerModule

__all__ = ["EmbedderModule", "TalkerModule"]
