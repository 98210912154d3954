"""Neural network modules (plain PyTorch; no Lightning imports here)."""
from dicetalk.models.embedder import EmbedderConfig, EmbedderOutput, EmotionEmbedder, load_embedder

__all__ = ["EmbedderConfig", "EmbedderOutput", "EmotionEmbedder", "load_embedder"]
