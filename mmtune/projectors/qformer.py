"""BLIP-2 / InstructBLIP Q-Former projector: learnable queries read the encoder features.

    queries [1, Q, H] (+ instruction tokens [B, L, H] in InstructBLIP mode) -> LayerNorm
    x num_layers:
        self-attention over [queries; instruction]           (post-LN, BERT style)
        cross-attention queries -> features, every `cross_attention_frequency`-th layer
                                   (layer 0, f, 2f, ...; queries only)
        feed-forward: queries through `ffn_query`, instruction tokens through `ffn_text`
    query outputs [B, Q, H] -> language_projection -> [B, Q, D_llm]

Same computation and LayerNorm placement as transformers' `Blip2QFormerModel` and
`InstructBlipQFormerModel` (checked against both in tests/test_qformer.py), so their weights
import with `load_hf_qformer`. Written here rather than wrapping the HF classes so the projector
follows mmtune's `projector(features) -> [n, K, D_llm]` contract and `num_tokens`.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..batch import Instruction
from ..parts import FeatureSpec
from ..registry import PROJECTORS
from .mlp import sincos_2d


class QFormerAttention(nn.Module):
    """Multi-head attention + output dense + dropout + LayerNorm(out + residual)."""

    def __init__(self, hidden: int, heads: int, kv_dim: int, eps: float, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_heads {heads}")
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(kv_dim, hidden)
        self.v = nn.Linear(kv_dim, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, h = x.shape
        d = h // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, H] -> [B, heads, T, d]
            return t.reshape(b, t.shape[1], self.heads, d).transpose(1, 2)

        mask = None if key_mask is None else key_mask[:, None, None, :].bool()  # True = attend
        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(kv)), split(self.v(kv)),
                                             attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = self.o(out.transpose(1, 2).reshape(b, n, h))
        return self.norm(F.dropout(out, self.dropout, self.training) + x)


class QFormerFFN(nn.Module):
    """Linear -> GELU -> Linear -> dropout -> LayerNorm(out + residual)."""

    def __init__(self, hidden: int, intermediate: int, eps: float, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(F.gelu(self.fc1(x)))
        return self.norm(F.dropout(out, self.dropout, self.training) + x)


class QFormerLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, encoder_hidden: int, cross: bool,
                 text: bool, eps: float, dropout: float) -> None:
        super().__init__()
        self.self_attn = QFormerAttention(hidden, heads, hidden, eps, dropout)
        self.cross_attn = QFormerAttention(hidden, heads, encoder_hidden, eps, dropout) if cross else None
        self.ffn_query = QFormerFFN(hidden, intermediate, eps, dropout)
        self.ffn_text = QFormerFFN(hidden, intermediate, eps, dropout) if text else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, features: torch.Tensor,
                n_queries: int) -> torch.Tensor:
        x = self.self_attn(x, x, mask)
        queries, text = x[:, :n_queries], x[:, n_queries:]
        if self.cross_attn is not None:
            queries = self.cross_attn(queries, features)  # every feature is real: no mask
        queries = self.ffn_query(queries)
        if text.shape[1] == 0:
            return queries
        return torch.cat([queries, self.ffn_text(text)], dim=1)


class QFormerProjector(nn.Module):
    """Q-Former + `language_projection`: [B, N, D_enc] -> [B, num_queries, D_llm].

    `instruction_aware=True` (InstructBLIP) adds word/position embeddings and a text feed-forward
    per layer; `forward(features, instruction)` then lets the queries attend to the instruction
    tokens in self-attention. `instruction_aware=False` is BLIP-2's Q-Former.
    """

    def __init__(self, encoder_hidden: int, llm_hidden: int, *, num_queries: int = 32,
                 hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12,
                 intermediate_size: int = 3072, cross_attention_frequency: int = 2,
                 instruction_aware: bool = True, vocab_size: int = 30523,
                 max_position_embeddings: int = 512, pad_token_id: int = 0,
                 layer_norm_eps: float = 1e-12, dropout: float = 0.1,
                 feature_pos_embed: bool = False) -> None:
        super().__init__()
        # Optional fixed 2-D sin-cos code added to the encoder features before cross-attention
        # (as Qwen-VL's resampler does): a pretrained tower's features say where each patch is;
        # a random-init tiny tower's barely do, and a Q-Former pools over positions.
        self.feature_pos_embed = feature_pos_embed
        if cross_attention_frequency < 1:
            raise ValueError(f"cross_attention_frequency must be >= 1; got {cross_attention_frequency}")
        self.num_queries = num_queries
        self.instruction_aware = instruction_aware
        self.dropout = dropout
        self.query_tokens = nn.Parameter(torch.randn(1, num_queries, hidden_size) * 0.02)
        if instruction_aware:
            self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
            self.position_embeddings = nn.Embedding(max_position_embeddings, hidden_size)
        self.embed_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.layers = nn.ModuleList(
            QFormerLayer(hidden_size, num_heads, intermediate_size, encoder_hidden,
                         cross=i % cross_attention_frequency == 0, text=instruction_aware,
                         eps=layer_norm_eps, dropout=dropout)
            for i in range(num_layers))
        self.language_projection = nn.Linear(hidden_size, llm_hidden)

    def num_tokens(self, n_in: int) -> int:
        return self.num_queries

    def qformer(self, features: torch.Tensor, instruction=None) -> torch.Tensor:
        """The Q-Former's query outputs [B, Q, H], before the language projection."""
        b = features.shape[0]
        features = features.to(self.query_tokens.dtype)
        if self.feature_pos_embed:
            features = features + sincos_2d(features.shape[1], features.shape[2]).to(features)
        x = self.query_tokens.expand(b, -1, -1)
        mask = None
        if instruction is not None:
            if not self.instruction_aware:
                raise ValueError("this Q-Former was built with instruction_aware=False")
            ids, text_mask = ((instruction.input_ids, instruction.attention_mask)
                              if isinstance(instruction, Instruction) else tuple(instruction))
            positions = torch.arange(ids.shape[1], device=ids.device)
            text = self.word_embeddings(ids) + self.position_embeddings(positions)[None]
            x = torch.cat([x, text.to(x.dtype)], dim=1)
            if text_mask is not None:
                mask = torch.cat([torch.ones(b, self.num_queries, dtype=torch.bool, device=ids.device),
                                  text_mask.bool()], dim=1)
        x = F.dropout(self.embed_norm(x), self.dropout, self.training)
        for layer in self.layers:
            x = layer(x, mask, features, self.num_queries)
        return x[:, :self.num_queries]

    def forward(self, features: torch.Tensor, instruction=None) -> torch.Tensor:
        return self.language_projection(self.qformer(features, instruction))


# ------------------------------------------------------------------------ HF weight import
_ATTN = {"attention.query": "q", "attention.key": "k", "attention.value": "v",
         "output.dense": "o", "output.LayerNorm": "norm"}
_FFN = {"query": ("intermediate_query.dense", "output_query.dense", "output_query.LayerNorm"),
        "text": ("intermediate.dense", "output.dense", "output.LayerNorm")}


def hf_qformer_key(name: str) -> str | None:
    """transformers' Q-Former state-dict name -> this projector's name (None: not used here)."""
    simple = {"layernorm.weight": "embed_norm.weight", "layernorm.bias": "embed_norm.bias",  # BLIP-2
              "embeddings.layernorm.weight": "embed_norm.weight",  # InstructBLIP
              "embeddings.layernorm.bias": "embed_norm.bias",
              "embeddings.word_embeddings.weight": "word_embeddings.weight",
              "embeddings.position_embeddings.weight": "position_embeddings.weight"}
    if name in simple:
        return simple[name]
    parts = name.split(".")
    if parts[:2] != ["encoder", "layer"] or len(parts) < 5:
        return None
    i, rest = parts[2], ".".join(parts[3:])
    stem, leaf = rest.rsplit(".", 1)
    for hf_block, ours in (("attention.", "self_attn"), ("crossattention.", "cross_attn")):
        if stem.startswith(hf_block) and stem[len(hf_block):] in _ATTN:
            return f"layers.{i}.{ours}.{_ATTN[stem[len(hf_block):]]}.{leaf}"
    for ours, (fc1, fc2, norm) in _FFN.items():
        for hf, sub in ((fc1, "fc1"), (fc2, "fc2"), (norm, "norm")):
            if stem == hf:
                return f"layers.{i}.ffn_{ours}.{sub}.{leaf}"
    return None


@torch.no_grad()
def load_hf_qformer(projector: QFormerProjector, qformer_state_dict: dict[str, torch.Tensor],
                    query_tokens: torch.Tensor, language_projection_state_dict: dict | None = None) -> list[str]:
    """Copy a transformers `Blip2QFormerModel` / `InstructBlipQFormerModel` state dict (plus the
    parent model's `query_tokens` and `language_projection`) into `projector`.

    Every HF tensor must find a home of the same shape, or this raises. Returns this projector's
    names left untouched (e.g. the text embeddings / text feed-forward when importing BLIP-2,
    whose Q-Former has none, or `language_projection` when no state dict for it is given).
    """
    own = projector.state_dict()
    new: dict[str, torch.Tensor] = {}
    unused = []
    for name, tensor in qformer_state_dict.items():
        key = hf_qformer_key(name)
        if key is None or key not in own:
            if name.endswith("position_ids"):
                continue  # a non-persistent buffer some versions still save
            unused.append(name)
            continue
        new[key] = tensor
    if unused:
        raise KeyError(f"Q-Former weights with no place in this projector: {unused}")
    new["query_tokens"] = query_tokens.reshape(1, *query_tokens.shape[-2:])  # HF: [1, Q, H]
    for k, v in (language_projection_state_dict or {}).items():
        new[f"language_projection.{k}"] = v
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in new.items()
           if k not in own or v.shape != own[k].shape]
    if bad:
        raise ValueError(f"shape mismatch importing the Q-Former: {bad}")
    for k, v in new.items():
        own[k].copy_(v)
    return sorted(set(own) - set(new))


def _build_qformer(features: FeatureSpec, out_dim: int, **options) -> QFormerProjector:
    return QFormerProjector(features.hidden_size, out_dim, **options)


PROJECTORS.register("qformer", _build_qformer)
