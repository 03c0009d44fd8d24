"""Inference service: a byte-level transformer and MiniLM embeddings behind a token-budget scheduler."""
