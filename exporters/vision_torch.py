"""The torch modules the vision encoder graph is exported from: the timm tower, then embed_vision's
soft path, computed as transformers' Gemma3nModel.get_image_features does (export time only)."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Gemma 3n's RMSNorm: x / rms(x) * weight (direct scale, in float32); no weight when with_scale=False."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.pow(x.float().pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        return y * self.weight.float() if self.weight is not None else y


class VisionEmbedder(nn.Module):
    """embed_vision (Gemma3nMultimodalEmbedder): the same tensor names as the checkpoint's."""

    def __init__(self, hidden: int, text_hidden: int, vocab: int, eps: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.hard_embedding_norm = RMSNorm(hidden, eps)
        self.soft_embedding_norm = RMSNorm(hidden, eps)
        self.embedding_projection = nn.Linear(hidden, text_hidden, bias=False)
        self.embedding_post_projection_norm = RMSNorm(text_hidden, eps, with_scale=False)

    def soft(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding_post_projection_norm(self.embedding_projection(self.soft_embedding_norm(x)))

    def hard(self, index: torch.Tensor) -> torch.Tensor:
        """Rows for vision ids vocab_offset + index."""
        return self.embedding_post_projection_norm(
            self.embedding_projection(self.hard_embedding_norm(self.embedding(index))))


class SoftEncoder(nn.Module):
    """pixels [N, 3, S, S] -> soft embeddings [N, tokens, D]: timm forward_features, flattened
    row-major to tokens, x sqrt(channels) (a Python float, as the reference multiplies), soft path."""

    def __init__(self, tower: nn.Module, embed: VisionEmbedder, tokens: int):
        super().__init__()
        self.tower, self.embed, self.tokens = tower, embed, tokens

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.tower.forward_features(pixels)                   # [N, C, h, w], h * w == tokens
        c = x.shape[1]
        x = x.reshape(x.shape[0], c, self.tokens).permute(0, 2, 1)
        return self.embed.soft(x * c ** 0.5)
