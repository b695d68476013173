"""Token streams: the corpus tokenized once into flat arrays, cached as numpy memmaps.

Each split is the concatenation of its documents' token ids, each document followed by the
end-of-text token. The cache folder is keyed by the corpus fingerprint and the tokenizer hash, so a
second run with the same data and tokenizer memory-maps the arrays instead of re-tokenizing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from qscale.data.corpus import load_corpus
from qscale.data.tokenizer import cached_bpe, eos_id, load_tokenizer, tokenizer_hash
from qscale.errors import QscaleError, require
from qscale.provenance import temp_dir

_CHUNK_DOCS = 64


@dataclass
class DataConfig:
    """Where the text and tokenizer come from; ``None`` means the embedded defaults."""

    data: Path | None = None  # None = embedded corpus (Python stdlib .py sources)
    tokenizer: Path | None = None  # None = byte-level BPE trained on the train split (cached)
    vocab_size: int = 4096
    cache_dir: Path | None = None  # None = $QSCALE_CACHE or ~/.cache/qscale
    max_files: int | None = None  # optional cap on documents (tests)

    def __post_init__(self) -> None:
        require(self.vocab_size >= 256, f"vocab size must be >= 256 (the byte alphabet), got {self.vocab_size}")
        require(self.max_files is None or self.max_files >= 2, f"max_files must be >= 2, got {self.max_files}")

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        return Path(os.environ.get("QSCALE_CACHE") or Path.home() / ".cache" / "qscale")


@dataclass
class TokenStreams:
    """Tokenized train / validation splits (1-D memmaps), their tokenizer and the corpus fingerprint
    (content and split of the text), which runs record to refuse resuming on other data."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_hash: str
    tokenizer: Tokenizer
    data_fingerprint: str


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def _write_split(texts: list[str], tok: Tokenizer, path: Path, dtype: np.dtype, advance) -> int:
    eos = eos_id(tok)
    n = 0
    with open(path, "wb") as f:
        for i in range(0, len(texts), _CHUNK_DOCS):
            chunk = texts[i : i + _CHUNK_DOCS]
            for enc in tok.encode_batch(chunk, add_special_tokens=False):
                ids = enc.ids + ([eos] if eos is not None else [])
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                n += len(ids)
            advance(sum(len(t) for t in chunk))
        f.flush()
        os.fsync(f.fileno())
    return n


def _build(corpus, tok: Tokenizer, folder: Path, dtype: np.dtype, progress: bool) -> None:
    from rich.progress import Progress

    tmp = temp_dir(folder.parent, f".{folder.name}.")
    try:
        total = sum(len(t) for t in corpus.train) + sum(len(t) for t in corpus.val)
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("tokenizing corpus", total=total)
            sizes = {
                split: _write_split(texts, tok, tmp / f"{split}.bin", dtype, lambda k: bar.advance(task, k))
                for split, texts in (("train", corpus.train), ("val", corpus.val))
            }
        (tmp / "meta.json").write_text(json.dumps({"dtype": dtype.name, **sizes}))
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not just another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_error(cache: Path, e: OSError) -> QscaleError:
    return QscaleError(
        f"cannot write the token cache in {cache} ({e.strerror or type(e).__name__}): set QSCALE_CACHE "
        "to a writable folder"
    )


def load_token_streams(cfg: DataConfig, progress: bool = True) -> TokenStreams:
    """Read the corpus, get the tokenizer and the (cached) token streams for ``cfg``."""
    cache = cfg.resolved_cache_dir()
    corpus = load_corpus(cfg.data, cfg.max_files)
    tok = (
        load_tokenizer(cfg.tokenizer) if cfg.tokenizer is not None else cached_bpe(corpus.train, cfg.vocab_size, cache)
    )
    vocab, thash = tok.get_vocab_size(), tokenizer_hash(tok)
    folder = cache / "streams" / f"{corpus.fingerprint}-{thash}"
    if not (folder / "meta.json").is_file():
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            _build(corpus, tok, folder, _dtype(vocab), progress)
        except OSError as e:
            raise cache_error(cache, e) from e
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {
        s: np.memmap(folder / f"{s}.bin", dtype=meta["dtype"], mode="r", shape=(meta[s],)) for s in ("train", "val")
    }
    require(meta["train"] > 0 and meta["val"] > 0, f"corpus tokenized to an empty split: {meta}")
    return TokenStreams(arrays["train"], arrays["val"], vocab, thash, tok, corpus.fingerprint)
