"""Latent Guard: classify prompts as harmful from an LLM's own hidden states."""
