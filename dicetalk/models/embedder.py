"""Disentangled emotion embedder (paper section 3.1, Eq. 2-6).

Per window of N video frames:
- visual stream: standardised expression features -> Linear -> + positions -> transformer layers;
- audio stream: whisper-tiny hidden states (2N frames at 50 Hz x 5 layers x 384), each layer LayerNorm-ed
  and mixed with learnable softmax weights, adjacent 50 Hz frames concatenated (-> 25 Hz) -> Linear ->
  + positions -> transformer layers;
- fusion after every layer pair (Eq. 2-3): s_a <- s_a + lambda * CrossAttn(Q = s_a, K = V = s_v);
- head: each fused audio frame is projected to the prior size and LayerNorm-ed without affine parameters
  (so every frame, and any convex mix of frames, is zero-mean across dimensions like the released priors);
  attention pooling over time with weights a = softmax(W_s s_a) computed from the fused frames (Eq. 4-5):
  mu = sum_t a_t h_t, sigma^2 = sum_t a_t (h_t - mu)^2; prior s = mu + sigma * eps (Eq. 6).
Projecting before pooling keeps mu and sigma the exact weighted moments of the per-frame priors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

MODALITIES = ("both", "video", "audio")


@dataclass
class EmbedderConfig:
    """Sizes and regularisation of the embedder (the tiny and full YAML configs set these)."""

    expression_dim: int = 136  # 68 pose-normalised 2-D landmarks, flattened
    whisper_layers: int = 5
    whisper_dim: int = 384
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ff_dim: int = 1024
    dropout: float = 0.1
    max_frames: int = 256  # longest window (positional table size)
    fusion_scale: float = 1.0  # lambda of Eq. 3
    prior_dim: int = 256
    p_drop_video: float = 0.2  # modality dropout; video and audio are never dropped together
    p_drop_audio: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.p_drop_video and 0 <= self.p_drop_audio and self.p_drop_video + self.p_drop_audio <= 1):
            raise ValueError("EmbedderConfig: need p_drop_video, p_drop_audio >= 0 and their sum <= 1")
        if self.d_model % self.n_heads:
            raise ValueError(f"EmbedderConfig: d_model {self.d_model} not divisible by n_heads {self.n_heads}")


class EmbedderOutput(NamedTuple):
    mu: Tensor  # (B, prior_dim)
    sigma: Tensor  # (B, prior_dim)
    prior: Tensor  # (B, prior_dim): mu + sigma * eps
    attention: Tensor  # (B, N) pooling weights


def gaussian_pool(scores: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Attention pooling to a Gaussian (Eq. 4-5): a = softmax(scores) over time, mu = sum_t a_t h_t,
    sigma^2 = sum_t a_t (h_t - mu)^2. ``scores`` (B, N), ``h`` (B, N, P) -> mu, sigma (B, P), a (B, N)."""
    attention = scores.softmax(dim=1)
    mu = torch.einsum("bn,bnp->bp", attention, h)
    var = torch.einsum("bn,bnp->bp", attention, (h - mu[:, None]) ** 2)
    return mu, var.clamp_min(1e-12).sqrt(), attention


class CrossModalFusion(nn.Module):
    """s_a + lambda * MultiheadAttention(Q = s_a, K = V = s_v), pre-normalised."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, scale: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.scale = scale

    def forward(self, s_a: Tensor, s_v: Tensor) -> Tensor:
        kv = self.norm_kv(s_v)
        out, _ = self.attn(self.norm_q(s_a), kv, kv, need_weights=False)
        return s_a + self.scale * out


def _encoder_layer(cfg: EmbedderConfig) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
    )


class EmotionEmbedder(nn.Module):
    """Audio-visual emotion embedder giving a Gaussian emotion prior per window."""

    def __init__(self, config: EmbedderConfig | None = None):
        super().__init__()
        cfg = self.config = config or EmbedderConfig()
        d = cfg.d_model
        # Expression standardisation, fitted on training data (set_expression_stats) and saved with the weights.
        self.register_buffer("expression_mean", torch.zeros(cfg.expression_dim))
        self.register_buffer("expression_std", torch.ones(cfg.expression_dim))
        self.visual_in = nn.Linear(cfg.expression_dim, d)
        self.audio_layer_logits = nn.Parameter(torch.zeros(cfg.whisper_layers))
        self.audio_norm = nn.LayerNorm(cfg.whisper_dim, elementwise_affine=False)
        self.audio_in = nn.Linear(2 * cfg.whisper_dim, d)
        self.pos_video = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.pos_audio = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)
        self.visual_layers = nn.ModuleList(_encoder_layer(cfg) for _ in range(cfg.n_layers))
        self.audio_layers = nn.ModuleList(_encoder_layer(cfg) for _ in range(cfg.n_layers))
        self.fusion = nn.ModuleList(
            CrossModalFusion(d, cfg.n_heads, cfg.dropout, cfg.fusion_scale) for _ in range(cfg.n_layers)
        )
        self.out_norm = nn.LayerNorm(d)
        self.pool_score = nn.Linear(d, 1)  # W_s of Eq. 4
        self.head = nn.Linear(d, cfg.prior_dim)
        self.head_norm = nn.LayerNorm(cfg.prior_dim, elementwise_affine=False)

    def config_dict(self) -> dict:
        """The config as plain types (stored in checkpoints, so the embedder rebuilds without Lightning)."""
        return asdict(self.config)

    @torch.no_grad()
    def set_expression_stats(self, mean: Tensor, std: Tensor) -> None:
        """Fix the per-dimension standardisation of the expression features."""
        self.expression_mean.copy_(mean)
        self.expression_std.copy_(std.clamp_min(1e-6))

    def modality_masks(self, batch: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """Random (keep_video, keep_audio) per sample from one uniform draw, so never both are dropped."""
        u = torch.rand(batch, device=device)
        drop_video = u < self.config.p_drop_video
        drop_audio = (u >= self.config.p_drop_video) & (u < self.config.p_drop_video + self.config.p_drop_audio)
        return ~drop_video, ~drop_audio

    def _check(self, expression: Tensor, whisper: Tensor) -> None:
        cfg = self.config
        b, n = expression.shape[:2]
        if expression.shape != (b, n, cfg.expression_dim):
            raise ValueError(
                f"expression must be (B, N, {cfg.expression_dim}), got {tuple(expression.shape)} "
                "(set embedder.expression_dim to the store's feature size)"
            )
        if whisper.shape != (b, 2 * n, cfg.whisper_layers, cfg.whisper_dim):
            raise ValueError(
                f"whisper must be (B, 2N={2 * n}, {cfg.whisper_layers}, {cfg.whisper_dim}), got {tuple(whisper.shape)}"
            )
        if n > cfg.max_frames:
            raise ValueError(f"window of {n} frames exceeds max_frames={cfg.max_frames}")

    def forward(self, expression: Tensor, whisper: Tensor, modality: str | None = None) -> EmbedderOutput:
        """Prior of each window. ``modality`` "both"/"video"/"audio" zeroes the other input; None applies
        random modality dropout in training mode and uses both inputs in eval mode."""
        self._check(expression, whisper)
        b, n = expression.shape[:2]
        x_v = (expression.float() - self.expression_mean) / self.expression_std
        w = self.audio_norm(whisper.float())  # (B, 2N, L, W)
        # mix the whisper layers, then pair adjacent 50 Hz frames into one 25 Hz step
        x_a = (self.audio_layer_logits.softmax(0) @ w).reshape(b, n, -1)

        if modality is None and self.training:
            keep_v, keep_a = self.modality_masks(b, expression.device)
        elif modality in MODALITIES or modality is None:
            keep_v = torch.full((b,), modality != "audio", device=expression.device)
            keep_a = torch.full((b,), modality != "video", device=expression.device)
        else:
            raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
        # zero = the mean face (after standardisation) / silence-like normalised audio
        x_v = x_v * keep_v[:, None, None]
        x_a = x_a * keep_a[:, None, None]

        s_v = self.visual_in(x_v) + self.pos_video[:n]
        s_a = self.audio_in(x_a) + self.pos_audio[:n]
        for vis, aud, fuse in zip(self.visual_layers, self.audio_layers, self.fusion):
            s_v = vis(s_v)
            s_a = fuse(aud(s_a), s_v)
        s_a = self.out_norm(s_a)

        mu, sigma, attention = gaussian_pool(self.pool_score(s_a).squeeze(-1), self.head_norm(self.head(s_a)))
        prior = mu + sigma * torch.randn_like(sigma)
        return EmbedderOutput(mu, sigma, prior, attention)


def load_embedder(path: str, map_location: str | torch.device = "cpu") -> EmotionEmbedder:
    """Rebuild a trained embedder from an EmbedderModule checkpoint (no Lightning import needed).

    The checkpoint holds ``embedder_config`` (plain dict) and ``state_dict`` with keys ``embedder.*``.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "embedder_config" not in ckpt:
        raise ValueError(f"{path}: not an embedder checkpoint (no 'embedder_config')")
    model = EmotionEmbedder(EmbedderConfig(**ckpt["embedder_config"]))
    prefix = "embedder."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval()
