import json

import pytest

from qscale.data.corpus import VAL_PERCENT, _is_val, load_corpus
from qscale.errors import QscaleError


def test_embedded_split_is_by_file_and_disjoint():
    corpus = load_corpus(max_files=60)
    assert corpus.train and corpus.val
    assert not set(corpus.train) & set(corpus.val)
    assert len(corpus.train) + len(corpus.val) == 60
    assert load_corpus(max_files=60).fingerprint == corpus.fingerprint


def test_hash_split_fraction_is_close_to_val_percent():
    keys = [f"pkg/mod{i}.py" for i in range(4000)]
    frac = sum(map(_is_val, keys)) / len(keys)
    assert abs(frac - VAL_PERCENT / 100) < 0.015


def test_user_formats_folder(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"line {i} text"}) for i in range(100)))
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(50)]}), tmp_path / "c.parquet")
    corpus = load_corpus(tmp_path)
    docs = corpus.train + corpus.val
    assert len(docs) == 151 and "row 7" in docs and "line 3 text" in docs
    assert corpus.val


def test_single_text_file_gets_a_val_tail(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 100)
    corpus = load_corpus(f)
    assert corpus.train[0] + corpus.val[0] == "abcdefghij" * 100
    assert len(corpus.val[0]) == 50


BAD_DATA = {  # file name -> (content or None for "do not create", expected message)
    "missing": (None, "does not exist"),
    "empty.txt": ("  \n", "no text"),
    "x.csv": ("a,b", "unsupported"),
    "bad.jsonl": ('{"body": "x"}', "text"),
}


@pytest.mark.parametrize("name", BAD_DATA)
def test_bad_data_raises(tmp_path, name):
    content, match = BAD_DATA[name]
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(QscaleError, match=match):
        load_corpus(tmp_path / name)


def test_folder_without_data_files_raises(tmp_path):
    (tmp_path / "notes.md").write_text("# not a data file")
    with pytest.raises(QscaleError, match=r"no \.txt"):
        load_corpus(tmp_path)


def test_binary_or_non_utf8_text_file_is_refused(tmp_path):
    (tmp_path / "model.txt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 10)  # a zip renamed .txt
    with pytest.raises(QscaleError, match="is binary"):
        load_corpus(tmp_path / "model.txt")
    (tmp_path / "latin1.txt").write_bytes("na\xefve caf\xe9".encode("latin-1") * 20)
    with pytest.raises(QscaleError, match="not UTF-8 text"):
        load_corpus(tmp_path / "latin1.txt")
