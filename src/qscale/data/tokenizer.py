"""Byte-level BPE tokenizers: trained on the train split and cached by content hash, or loaded from disk.

Training uses Hugging Face ``tokenizers`` (byte-level pre-tokenizer, so every byte string is encodable
and decoding round-trips exactly). For speed the BPE merges are learned on a deterministic prefix of the
train split: whole documents in corpus order up to ``TRAIN_PREFIX_BYTES`` (8 MB). The cache key is the
hash of that prefix and the settings, so the same corpus and vocabulary size never retrain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qscale.errors import QscaleError, require
from qscale.provenance import atomic_write_bytes

EOS = "<|endoftext|>"
TRAIN_PREFIX_BYTES = 8_000_000
_EOS_CANDIDATES = (EOS, "</s>", "<eos>", "<|end_of_text|>")
_FORMAT = "bytelevel-bpe-v1"
# what a Hugging Face tokenizer folder holds beside tokenizer.json (special tokens, BOS/EOS, chat template)
TOKENIZER_SIDE_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def training_prefix(texts: list[str], max_bytes: int = TRAIN_PREFIX_BYTES) -> list[str]:
    """Whole documents from the start of ``texts`` until ``max_bytes`` UTF-8 bytes (at least one)."""
    out, total = [], 0
    for t in texts:
        if out and total + len(t.encode()) > max_bytes:
            break
        out.append(t)
        total += len(t.encode())
    return out


def train_bpe(texts: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (256 bytes + EOS + merges) on ``texts``."""
    require(vocab_size >= 256, f"vocab size must be >= 256 (the byte alphabet), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def cached_bpe(texts: list[str], vocab_size: int, cache_dir: Path) -> Tokenizer:
    """:func:`train_bpe` on :func:`training_prefix` of ``texts``, cached under ``cache_dir/tokenizers``."""
    require(vocab_size >= 256, f"vocab size must be >= 256 (the byte alphabet), got {vocab_size}")
    prefix = training_prefix(texts)
    h = hashlib.sha256(f"{_FORMAT}\0{vocab_size}\0".encode())
    for t in prefix:
        h.update(hashlib.sha256(t.encode()).digest())
    path = Path(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{h.hexdigest()[:16]}.json"
    if path.is_file():
        return Tokenizer.from_file(str(path))
    tok = train_bpe(prefix, vocab_size)
    try:
        atomic_write_bytes(path, tok.to_str().encode())
    except OSError as e:
        raise QscaleError(
            f"cannot write the tokenizer cache in {cache_dir} ({e.strerror or type(e).__name__}): "
            "set QSCALE_CACHE to a writable folder"
        ) from e
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    """A ``tokenizer.json`` file, or a HF tokenizer folder (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``)."""
    path = Path(path)
    require(path.exists(), f"tokenizer path does not exist: {path}")
    try:
        if path.is_file():
            return Tokenizer.from_file(str(path))
        if (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            return tok
    except Exception as e:  # tokenizers raises bare Exception subclasses on malformed files
        raise QscaleError(
            f"cannot read tokenizer {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    raise QscaleError(f"no tokenizer.json (or vocab.json + merges.txt) in tokenizer folder {path}")


def folder_tokenizer(folder: Path) -> Path | None:
    """The tokenizer a model folder ships (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``), if any."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    return None


def tokenizer_side_files(folder: Path, tok: Tokenizer) -> list[Path]:
    """:data:`TOKENIZER_SIDE_FILES` of model ``folder``, when its own tokenizer is ``tok`` (else none: a
    ``tokenizer_config.json`` describes the tokenizer it was written for)."""
    own = folder_tokenizer(folder)
    if own is None or tokenizer_hash(load_tokenizer(own)) != tokenizer_hash(tok):
        return []
    return [Path(folder) / n for n in TOKENIZER_SIDE_FILES if (Path(folder) / n).is_file()]


def model_tokenizer(folder: Path, tokenizer: Path | None) -> Path:
    """``tokenizer`` if given, else the model folder's own: a model never gets a freshly trained BPE."""
    found = tokenizer or folder_tokenizer(folder)
    require(
        found is not None,
        f"model folder {folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): "
        "pass --tokenizer PATH, the tokenizer the model was trained with",
    )
    return found


def eos_id(tok: Tokenizer) -> int | None:
    """Id of the end-of-text token used to separate documents, if the tokenizer has one."""
    for name in _EOS_CANDIDATES:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def tokenizer_hash(tok: Tokenizer) -> str:
    """Content hash of a tokenizer (its canonical JSON)."""
    blob = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
