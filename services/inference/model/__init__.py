"""The built-in model: byte tokenizer, attention, transformer, KV cache, sampling, weights."""

from services.inference.model.kv_cache import KVCache
from services.inference.model.tokenizer import ByteTokenizer
from services.inference.model.transformer import ModelConfig, Transformer

__all__ = ["ByteTokenizer", "KVCache", "ModelConfig", "Transformer"]
