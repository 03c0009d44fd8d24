"""Hugging Face checkpoints on the server's paged KV cache: the Llama family and GPT-2.

`load_hf_model(path)` reads a local checkpoint directory (config.json, *.safetensors; nothing is
downloaded) into one of two plain-torch modules whose parameter names are the checkpoint's own,
so the safetensors load straight in (mmap'd by safetensors, cast once to the serving dtype):

- `LlamaLM`: RMSNorm, rotary embeddings (rope_theta; "linear" and "llama3" scaling), grouped-query
  attention, SwiGLU MLP, optional q/k/v(/o) biases (Qwen2 has them), tied or separate LM head.
  Covers Llama 2/3.x, Qwen2/2.5, SmolLM2, TinyLlama, Mistral (sliding window not applied: the
  context must stay within it).
- `GPT2LM`: learned positions, LayerNorm, GELU (tanh approximation, "gelu_new"), fused c_attn,
  Conv1D weights ([in, out], used as x @ W + b), LM head tied to wte.

Both expose what the runner and engine use of the built-in model: `cfg` (vocab_size, n_layers,
n_kv_heads, head_dim, max_seq_len, to_dict), `forward(tokens, lengths)` (whole sequences, no
cache: scoring and tests) and `forward_step(step, cache)` (one continuous-batching step: the new
tokens of every sequence packed into one run, their K/V written into the paged cache, attention
reading each sequence's context back from it in length-bucketed groups, model/paged.py). The
cache holds the KV heads only (n_kv_heads, not n_heads); queries of a group share them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from services.inference.model.attention import attention
from services.inference.model.kv_cache import KVCache
from services.inference.model.paged import StepBatch, paged_attention

LLAMA_TYPES = {"llama", "qwen2", "mistral"}
GPT2_TYPES = {"gpt2"}


class CheckpointError(Exception):
    """A checkpoint directory is missing files, or holds an architecture we do not serve."""


@dataclass(frozen=True)
class HFConfig:
    arch: str  # "llama" | "gpt2"
    model_type: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    norm_eps: float
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    activation: str = "gelu_new"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> HFConfig:
        mt = str(raw.get("model_type", ""))
        if mt in GPT2_TYPES:
            d = int(raw["n_embd"])
            act = str(raw.get("activation_function", "gelu_new"))
            if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
                raise CheckpointError(f"GPT-2 activation {act!r} is not supported")
            if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("reorder_and_upcast_attn"):
                raise CheckpointError(
                    "GPT-2 scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn unsupported"
                )
            return cls(
                arch="gpt2",
                model_type=mt,
                vocab_size=int(raw["vocab_size"]),
                d_model=d,
                n_layers=int(raw["n_layer"]),
                n_heads=int(raw["n_head"]),
                n_kv_heads=int(raw["n_head"]),
                head_dim=d // int(raw["n_head"]),
                d_ff=int(raw.get("n_inner") or 4 * d),
                max_seq_len=int(raw["n_positions"]),
                norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
                tie_word_embeddings=True,
                activation=act,
            )
        if mt in LLAMA_TYPES:
            d = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            act = str(raw.get("hidden_act", "silu"))
            if act != "silu":
                raise CheckpointError(f"hidden_act {act!r} is not supported (silu only)")
            rope = dict(raw.get("rope_parameters") or {})
            scaling = dict(raw.get("rope_scaling") or {})
            theta = float(rope.get("rope_theta", raw.get("rope_theta", 10000.0)))
            scaling = {**scaling, **{k: v for k, v in rope.items() if k != "rope_theta"}}
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise CheckpointError(f"rope scaling {kind!r} is not supported")
            if float(raw.get("partial_rotary_factor", 1.0)) != 1.0:
                raise CheckpointError("partial_rotary_factor is not supported")
            qkv_bias = bool(raw.get("attention_bias", False)) or mt == "qwen2"
            return cls(
                arch="llama",
                model_type=mt,
                vocab_size=int(raw["vocab_size"]),
                d_model=d,
                n_layers=int(raw["num_hidden_layers"]),
                n_heads=heads,
                n_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or d // heads),
                d_ff=int(raw["intermediate_size"]),
                max_seq_len=int(raw.get("max_position_embeddings", 2048)),
                norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                qkv_bias=qkv_bias,
                o_bias=bool(raw.get("attention_bias", False)),
                mlp_bias=bool(raw.get("mlp_bias", False)),
                rope_theta=theta,
                rope_scaling={**scaling, "rope_type": kind},
                activation=act,
            )
        raise CheckpointError(
            f"model_type {mt!r} is not supported (Llama family: {sorted(LLAMA_TYPES)}, or gpt2)"
        )


def _full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """No cache: q [B, T, H, D], k/v [B, T, Hkv, D], mask [B|1, 1, T, T] -> [B, T, H, D]."""
    h, hkv = q.shape[2], k.shape[2]
    if hkv != h:
        k = k.repeat_interleave(h // hkv, dim=2)
        v = v.repeat_interleave(h // hkv, dim=2)
    out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
    return out.transpose(1, 2)


class PagedLM(nn.Module):
    cfg: HFConfig

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _layers(self) -> list[Any]:
        raise NotImplementedError

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] right-padded, lengths [B] -> logits [B, T, V] (float32)."""
        b, t = tokens.shape
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        pos = torch.arange(t, device=tokens.device)
        positions = pos[None, :].expand(b, t)
        x = self._embed(tokens, positions)
        mask = (pos[None, :] <= pos[:, None])[None, None]
        if lengths is not None:
            mask = mask & (pos[None, :] < lengths[:, None])[:, None, None, :]
        for layer in self._layers():
            q, k, v = layer.qkv(x, positions)
            x = layer.finish(x, _full_attention(q, k, v, mask))
        return self._head(x)

    def forward_step(self, step: StepBatch, cache: KVCache) -> torch.Tensor:
        """One continuous-batching step (packed tokens, model/paged.py) -> logits at
        `step.logit_index`, [R, V] float32."""
        positions = step.positions[None]  # [1, N]: the packed run is one row to the layers
        x = self._embed(step.tokens[None], positions)
        for i, layer in enumerate(self._layers()):
            q, k, v = layer.qkv(x, positions)
            attn = paged_attention(q[0], k[0], v[0], cache.k[i], cache.v[i], step)
            x = layer.finish(x, attn[None])
        return self._head(x[0].index_select(0, step.logit_index))


# -- Llama family ---------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As transformers: normalise in float32, cast back, then scale.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_inv_freq(cfg: HFConfig) -> torch.Tensor:
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    sc = cfg.rope_scaling
    kind = sc.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        factor = float(sc["factor"])
        low, high = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
        old = float(sc.get("original_max_position_embeddings", 8192))
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _LlamaAttention(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        h, hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, h * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, hkv * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, hkv * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(h * d, cfg.d_model, bias=cfg.o_bias)


class _LlamaMLP(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, cfg: HFConfig, inv_freq: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.self_attn = _LlamaAttention(cfg)
        self.mlp = _LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, D]; angles computed in float32, as transformers does."""
        freqs = positions.float()[..., None] * self.inv_freq.float()  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype)[:, :, None, :], emb.sin().to(x.dtype)[:, :, None, :]
        return x * cos + _rotate_half(x) * sin

    def qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        a, c = self.self_attn, self.cfg
        q = a.q_proj(h).view(b, t, c.n_heads, c.head_dim)
        k = a.k_proj(h).view(b, t, c.n_kv_heads, c.head_dim)
        v = a.v_proj(h).view(b, t, c.n_kv_heads, c.head_dim)
        return self._rope(q, positions), self._rope(k, positions), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, t = attn.shape[:2]
        x = x + self.self_attn.o_proj(attn.reshape(b, t, -1))
        return x + self.mlp(self.post_attention_layernorm(x))


class _LlamaBody(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        inv = rope_inv_freq(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(LlamaLayer(cfg, inv) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class LlamaLM(PagedLM):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = _LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(tokens)

    def _layers(self) -> list[Any]:
        return list(self.model.layers)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.norm(h)).float()


# -- GPT-2 ---------------------------------------------------------------------------------------
class Conv1D(nn.Module):
    """GPT-2's linear layer: weight [in, out], y = x @ W + b."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class _GPT2Attention(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.c_attn = Conv1D(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = Conv1D(cfg.d_model, cfg.d_model)


class _GPT2MLP(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(cfg.d_model, cfg.d_ff)
        self.c_proj = Conv1D(cfg.d_ff, cfg.d_model)
        self.approx = "none" if cfg.activation == "gelu" else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approx))


class GPT2Layer(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = _GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = _GPT2MLP(cfg)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b, t, _ = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(self.cfg.d_model, dim=-1)
        shape = (b, t, self.cfg.n_heads, self.cfg.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, t = attn.shape[:2]
        x = x + self.attn.c_proj(attn.reshape(b, t, -1))
        return x + self.mlp(self.ln_2(x))


class _GPT2Body(nn.Module):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.h = nn.ModuleList(GPT2Layer(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)


class GPT2LM(PagedLM):
    def __init__(self, cfg: HFConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = _GPT2Body(cfg)

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(tokens) + self.transformer.wpe(positions)

    def _layers(self) -> list[Any]:
        return list(self.transformer.h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transformer.ln_f(h), self.transformer.wte.weight).float()


# -- loading -------------------------------------------------------------------------------------
def read_config(path: str | Path) -> HFConfig:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face checkpoint directory)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{cfg_file}: {exc}") from None
    return HFConfig.from_hf(raw)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors file (.bin checkpoints are not loaded)")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:  # mmap'd; tensors read one by one
                for name in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                    out[name] = st.get_tensor(name)
        except Exception as exc:  # safetensors raises several types for a corrupt header
            raise CheckpointError(f"cannot read {f}: {exc}") from None
    return out


def _normalise_names(model: PagedLM, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = set(model.state_dict())
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name not in expected and isinstance(model, GPT2LM) and f"transformer.{name}" in expected:
            name = f"transformer.{name}"  # original gpt2 checkpoints have no "transformer." prefix
        if name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")) and name not in expected:
            continue  # old checkpoints saved the causal mask / rope buffers
        if name == "lm_head.weight" and isinstance(model, GPT2LM):
            continue  # tied to wte
        out[name] = t
    if isinstance(model, LlamaLM) and model.cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def load_hf_model(
    path: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> PagedLM:
    path = Path(path)
    cfg = read_config(path)
    with torch.device("meta"):
        model: PagedLM = LlamaLM(cfg) if cfg.arch == "llama" else GPT2LM(cfg)
    tensors = _normalise_names(model, _read_tensors(path))
    expected = model.state_dict()
    if isinstance(model, LlamaLM) and cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: missing tensors {missing[:5]}, unexpected {extra[:5]}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(t.shape)}, config expects {tuple(expected[name].shape)}"
            )
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    if isinstance(model, LlamaLM):
        inv = rope_inv_freq(cfg).to(device)
        for layer in model.model.layers:
            layer.inv_freq = inv  # buffers were on meta
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
