"""qscale.data: the corpus, its tokenizer and cached token streams; batches of windows."""

from qscale.data.streams import DataConfig, TokenStreams, load_token_streams

__all__ = ["DataConfig", "TokenStreams", "load_token_streams"]
