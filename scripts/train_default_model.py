"""Train the default model that `python -m services.inference` serves (pg-small).

Reproducible: the corpus is every docstring (module, class, function) of the Python standard
library found on this machine (`Lib/*.py` of the running interpreter, tests and site-packages
left out), read with `ast` in sorted file order; the tokenizer a byte-level BPE (2048 tokens)
trained on that corpus with `tokenizers`; the model a 4-layer Llama-architecture transformer
(RMSNorm, rotary, grouped-query attention, SwiGLU, tied head; `model/hf.py`, the code that
serves it); the seed fixed. Nothing is downloaded.

    .venv/bin/python scripts/train_default_model.py            # ~12 min on 1 shared core
    .venv/bin/python scripts/train_default_model.py --steps 50 --out /tmp/pg-small

Writes a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json with a ChatML chat template, generation_config.json; `transformers` loads
it too) into services/inference/weights/, a loss curve PNG and a JSON summary (corpus, steps,
losses, wall time) in docs/img/.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.inference.model.hf import HFConfig, LlamaLM  # noqa: E402

DEFAULT_OUT = ROOT / "services/inference/weights"  # flat: package-data is "weights/*"
MODEL_NAME = "pg-small"
SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def stdlib_docstrings(limit_bytes: int) -> list[str]:
    """Docstrings of the stdlib's .py files, cleaned (inspect.cleandoc), in file order."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    seen: set[str] = set()
    for path in sorted(lib.rglob("*.py")):
        if SKIP_PARTS & set(path.relative_to(lib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]
        for node in nodes:
            doc = ast.get_docstring(node, clean=False)
            if not doc or len(doc) < 40:
                continue
            doc = inspect.cleandoc(doc).strip()
            if doc in seen:
                continue
            seen.add(doc)
            docs.append(doc)
    out, total = [], 0
    for doc in docs:
        total += len(doc.encode("utf-8")) + 2
        if total > limit_bytes:
            break
        out.append(doc)
    return out


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(docs: list[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style: every byte has a token, so any text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(docs, trainer=trainer)
    return tk


def batches(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    """Random windows of seq+1 tokens (rotary positions: a window's offset does not matter)."""
    while True:
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        rows = torch.stack([data[s : s + seq + 1] for s in starts.tolist()])
        yield rows[:, :-1], rows[:, 1:]


def init_llama(model: LlamaLM, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    resid = 0.02 / math.sqrt(2 * model.cfg.n_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                p.fill_(1.0) if name.endswith("norm.weight") else p.zero_()
            else:
                std = resid if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--minutes", type=float, default=12.0, help="stop early after this wall time")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--corpus-bytes", type=int, default=8_000_000)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--img", type=Path, default=ROOT / "docs/img/default-model-loss.png")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    docs = stdlib_docstrings(args.corpus_bytes)
    tk = train_tokenizer(docs, args.vocab)
    eot = tk.token_to_id("<|endoftext|>")
    # Each docstring is one document, followed by <|endoftext|> (GPT-2's convention).
    ids: list[int] = []
    for enc in tk.encode_batch(docs, add_special_tokens=False):
        ids += [*enc.ids, eot]
    data = torch.tensor(ids, dtype=torch.long)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_val = min(100_000, len(data) // 20)
    train, val = data[:-n_val], data[-n_val:]
    print(f"corpus: {len(docs):,} docstrings, {n_bytes:,} bytes, {len(data):,} tokens")

    cfg = HFConfig(
        arch="llama",
        model_type="llama",
        vocab_size=tk.get_vocab_size(),
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        d_ff=384,
        max_seq_len=1024,
        norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rope_scaling={"rope_type": "default"},
        activation="silu",
    )
    model = LlamaLM(cfg)
    init_llama(model, args.seed)
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, args.steps // 40)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    bytes_per_token = n_bytes / len(data)

    def val_loss() -> float:
        model.eval()
        vgen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            x, y = next(batches(val, 32, args.seq, vgen))
            out = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
        model.train()
        return out

    curve: list[tuple[int, float]] = []
    vcurve: list[tuple[int, float]] = []
    t0 = time.monotonic()
    step = 0
    ema = None
    for step, (x, y) in enumerate(batches(train, args.batch, args.seq, gen)):
        if step >= args.steps or time.monotonic() - t0 > args.minutes * 60:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        curve.append((step, loss.item()))
        if step % 100 == 0:
            vcurve.append((step, val_loss()))
            el = time.monotonic() - t0
            print(f"step {step:5d}  loss {ema:.3f}  val {vcurve[-1][1]:.3f}  {el:6.0f}s", flush=True)
    wall = time.monotonic() - t0
    vcurve.append((step, val_loss()))
    model.eval()

    summary = {
        "model": MODEL_NAME,
        "architecture": "llama (RMSNorm, rotary, grouped-query attention 4q/2kv, SwiGLU, tied head)",
        "config": {k: v for k, v in cfg.to_dict().items() if k not in ("rope_scaling",)},
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": "docstrings of the Python standard library (ast over Lib/*.py, tests excluded)",
        "corpus_docstrings": len(docs),
        "corpus_bytes": n_bytes,
        "corpus_tokens": len(data),
        "bytes_per_token": round(bytes_per_token, 3),
        "python": sys.version.split()[0],
        "tokenizer": f"byte-level BPE, {tk.get_vocab_size()} tokens, trained on the same corpus",
        "seed": args.seed,
        "steps": step,
        "batch": args.batch,
        "seq": args.seq,
        "lr": args.lr,
        "train_loss_final_ema": round(ema or 0.0, 4),
        "val_loss_final": round(vcurve[-1][1], 4),
        "val_bits_per_byte": round(vcurve[-1][1] / math.log(2) / bytes_per_token, 4),
        "wall_seconds": round(wall, 1),
        "threads": args.threads,
    }
    save_checkpoint(model, tk, args.out, summary)
    print(json.dumps(summary, indent=1))
    _plot(curve, vcurve, args.img, summary)
    args.img.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def save_checkpoint(model: LlamaLM, tk, out: Path, summary: dict) -> None:
    """A Hugging Face checkpoint directory: transformers' LlamaForCausalLM loads it too."""
    from safetensors.torch import save_file

    cfg = model.cfg
    out.mkdir(parents=True, exist_ok=True)
    eot, im_end = tk.token_to_id("<|endoftext|>"), tk.token_to_id("<|im_end|>")
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(hf_config, indent=1) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eot, "eos_token_id": [eot, im_end]}, indent=1) + "\n"
    )
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "add_bos_token": True,  # documents followed <|endoftext|> in training
                "model_max_length": cfg.max_seq_len,
                "chat_template": CHATML,
            },
            indent=1,
        )
        + "\n"
    )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight
    save_file(
        state, str(out / "model.safetensors"), metadata={"format": "pt", "training": json.dumps(summary)}
    )


def _plot(curve, vcurve, img: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [s for s, _ in curve]
    ys = [v for _, v in curve]
    k = 25
    smooth = [sum(ys[max(0, i - k) : i + 1]) / len(ys[max(0, i - k) : i + 1]) for i in range(len(ys))]
    ax.plot(xs, ys, alpha=0.25, label="train (per step)")
    ax.plot(xs, smooth, label="train (mean of 25)")
    ax.plot([s for s, _ in vcurve], [v for _, v in vcurve], "o-", ms=3, label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(
        f"{summary['model']} on stdlib docstrings: {summary['parameters'] / 1e6:.2f}M params, "
        f"{summary['wall_seconds'] / 60:.1f} min CPU"
    )
    ax.legend()
    ax.grid(alpha=0.3)
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(img, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
