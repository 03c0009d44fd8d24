"""Tiny random Hugging Face checkpoints built locally (nothing downloaded).

A byte-level BPE tokenizer trained with `tokenizers` on a small text, saved as tokenizer.json
plus a tokenizer_config.json with a ChatML chat template; a Llama (GQA), Qwen2 (q/k/v biases),
GPT-2 model from `transformers` configs with random weights, saved with save_pretrained as
safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT = (
    "The quick brown fox jumps over the lazy dog. A paged KV cache holds keys and values in "
    "fixed-size blocks. Continuous batching lets new requests join while others decode. "
    "Café, naïve, résumé: accents take two bytes in UTF-8; emoji like 🙂 take four. "
    "def add(a, b):\n    return a + b\n"
) * 4

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(out: Path, *, vocab_size: int = 320) -> int:
    """Byte-level BPE (GPT-2 style) with <s>/</s> and ChatML specials; returns its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([TEXT], trainer=trainer)
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    out.mkdir(parents=True, exist_ok=True)
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<s>",
                "eos_token": "</s>",
                "chat_template": CHATML,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    return tk.get_vocab_size()


def build_checkpoint(out: Path, arch: str, *, seed: int = 0) -> Path:
    """arch: llama | qwen2 | gpt2 -> a checkpoint directory with a tokenizer."""
    import transformers

    vocab = train_tokenizer(out)
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos, eos = tk.token_to_id("<s>"), tk.token_to_id("</s>")
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos)
    if arch == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rope_theta=5000.0,
            tie_word_embeddings=False,
            **common,
        )
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **common,
        )
        model = transformers.Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **common)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    # Random init is small; scale weights up so logits differ visibly between tokens.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos, "eos_token_id": [eos, tk.token_to_id("<|im_end|>")]})
    )
    return out


def load_reference(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()
