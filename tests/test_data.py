"""Section 2, the data: load_text for files and built-in datasets, the download cache, and the split.

No test here touches the network. Built-in datasets are replaced by fake ones whose URL is a
`file://` address in tmp_path, and an autouse guard makes any other URL fail the test at once.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import tinyllm
from tinyllm_toolkit import inputs

SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TEXT = "To be, or not to be: that is the question.\nWhether 'tis nobler — ça va? 你好 😀\n"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Record every URL opened; allow only file:// ones, so a test can never reach the internet."""
    real_urlopen = urllib.request.urlopen
    opened: list[str] = []

    def guarded_urlopen(url, *args, **kwargs):
        opened.append(url)
        if not str(url).startswith("file:"):
            raise AssertionError(f"a test tried to reach the network: {url}")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded_urlopen)
    monkeypatch.delenv("TINYLLM_DATA_DIR", raising=False)
    return opened


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """A built-in dataset "tiny" served from a local file; returns (its source file, the cache dir)."""
    source = tmp_path / "server" / "input.txt"
    source.parent.mkdir()
    source.write_bytes(TEXT.encode("utf-8"))
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    monkeypatch.setattr(tinyllm, "DATASETS", {"tiny": tinyllm.Dataset(source.as_uri(), "tiny.txt", sha)})
    return source, tmp_path / "cache"


# ---- a path to a text file -------------------------------------------------------------------------

def test_load_text_reads_a_utf8_file_exactly(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(TEXT.encode("utf-8"))
    assert tinyllm.load_text(str(path)) == TEXT
    assert tinyllm.load_text(path) == TEXT  # a Path works too


def test_load_text_keeps_line_endings_and_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbfline one\r\nline two\r\n")
    assert tinyllm.load_text(path) == "line one\r\nline two\r\n"


# The checks on a file live in the toolkit (tinyllm_toolkit/inputs.py), which the command line reads with.

def test_missing_file_is_a_file_not_found_error_that_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file") as err:
        inputs.load_text_checked(tmp_path / "nope.txt")
    assert "UTF-8 text file" in str(err.value) and "shakespeare" in str(err.value)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory: give the path of a UTF-8 text file"):
        inputs.load_text_checked(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"], ids=["empty", "only-a-byte-order-mark"])
def test_an_empty_file_is_refused(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is empty: give a file with some text in it"):
        inputs.load_text_checked(path)


def test_a_file_that_is_not_utf8_is_refused_with_the_offset_and_a_fix(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))  # é is the single byte 0xe9 in Latin-1
    with pytest.raises(ValueError, match="not UTF-8") as err:
        inputs.load_text_checked(path)
    assert "offset 3" in str(err.value) and "iconv" in str(err.value)


# ---- a built-in dataset: download, verify, cache ---------------------------------------------------

def test_the_checked_load_text_reads_what_the_chapters_reads(tmp_path, fake_dataset):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"\xef\xbb\xbf" + TEXT.encode("utf-8"))
    assert inputs.load_text_checked(path) == tinyllm.load_text(path) == TEXT
    _, cache = fake_dataset
    assert inputs.load_text_checked("tiny", data_dir=cache) == TEXT


def test_first_load_downloads_verifies_and_caches(fake_dataset, no_network):
    source, cache = fake_dataset
    assert tinyllm.load_text("tiny", data_dir=cache) == TEXT
    assert no_network == [source.as_uri()]
    assert (cache / "tiny.txt").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.txt"]  # no temporary file left behind


def test_cache_hit_does_not_fetch(fake_dataset, no_network):
    source, cache = fake_dataset
    tinyllm.load_text("tiny", data_dir=cache)
    source.unlink()  # the "server" is gone: only the cached copy can answer now
    assert tinyllm.load_text("tiny", data_dir=cache) == TEXT
    assert len(no_network) == 1


def test_cached_copy_with_a_wrong_checksum_is_fetched_again(fake_dataset, no_network):
    source, cache = fake_dataset
    cache.mkdir()
    (cache / "tiny.txt").write_text("To be, or not to b", encoding="utf-8")  # cut short by a crash
    assert tinyllm.load_text("tiny", data_dir=cache) == TEXT
    assert no_network == [source.as_uri()]
    assert (cache / "tiny.txt").read_bytes() == source.read_bytes()


def test_download_with_the_wrong_checksum_is_an_error_and_caches_nothing(fake_dataset, monkeypatch):
    source, cache = fake_dataset
    good = tinyllm.DATASETS["tiny"]
    monkeypatch.setitem(tinyllm.DATASETS, "tiny", tinyllm.Dataset(good.url, good.filename, "0" * 64))
    with pytest.raises(ValueError, match="SHA-256") as err:
        tinyllm.load_text("tiny", data_dir=cache)
    assert good.sha256 in str(err.value)  # the hash it actually got, to compare by hand
    assert str(cache / "tiny.txt") in str(err.value)  # where a good copy would go
    assert not (cache / "tiny.txt").exists()


def test_offline_without_a_cache_names_the_url_the_file_and_where_to_put_it(fake_dataset, monkeypatch):
    source, cache = fake_dataset

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError) as err:
        tinyllm.load_text("tiny", data_dir=cache)
    message = str(err.value)
    assert source.as_uri() in message  # the URL
    assert str(cache / "tiny.txt") in message  # the file expected, and where
    assert "by hand" in message and "TINYLLM_DATA_DIR" in message


def test_unreachable_url_with_a_damaged_cache_is_not_trusted(fake_dataset):
    source, cache = fake_dataset
    cache.mkdir()
    (cache / "tiny.txt").write_text("damaged", encoding="utf-8")
    source.unlink()  # a file:// URL that no longer exists fails like a dead server
    with pytest.raises(ConnectionError, match="could not download 'tiny'"):
        tinyllm.load_text("tiny", data_dir=cache)


def test_tinyllm_data_dir_overrides_the_default(fake_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(tinyllm, "DATA_DIR", tmp_path / "default")
    monkeypatch.setenv("TINYLLM_DATA_DIR", str(tmp_path / "from-env"))
    assert tinyllm.load_text("tiny") == TEXT
    assert (tmp_path / "from-env" / "tiny.txt").is_file()
    assert not (tmp_path / "default").exists()


def test_data_dir_argument_overrides_the_environment(fake_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLM_DATA_DIR", str(tmp_path / "from-env"))
    assert tinyllm.load_text("tiny", data_dir=tmp_path / "explicit") == TEXT
    assert (tmp_path / "explicit" / "tiny.txt").is_file()
    assert not (tmp_path / "from-env").exists()


def test_without_overrides_the_cache_is_the_repositorys_data_folder(fake_dataset, tmp_path, monkeypatch):
    assert tinyllm.DATA_DIR == Path(tinyllm.__file__).resolve().parent / "data"
    monkeypatch.setattr(tinyllm, "DATA_DIR", tmp_path / "repo-data")
    assert tinyllm.load_text("tiny") == TEXT
    assert (tmp_path / "repo-data" / "tiny.txt").is_file()


def test_shakespeare_is_registered_with_its_canonical_url_and_hash():
    ds = tinyllm.DATASETS["shakespeare"]
    assert ds.url == "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    assert ds.filename == "tinyshakespeare.txt"
    assert ds.sha256 == SHAKESPEARE_SHA256


def test_real_tinyshakespeare_loads_from_the_cache(shakespeare_path, monkeypatch, no_network):
    monkeypatch.setenv("TINYLLM_DATA_DIR", str(shakespeare_path.parent))
    text = tinyllm.load_text("shakespeare")
    assert no_network == []  # a verified copy was there, so nothing was fetched
    assert len(text) == 1_115_394 and len(text.encode("utf-8")) == 1_115_394
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")


# ---- atomic writes -----------------------------------------------------------------------------------

def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    tinyllm.atomic_write_bytes(path, b"first")
    tinyllm.atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["f.bin"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    tinyllm.atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        tinyllm.atomic_write_bytes(path, "not bytes")  # fails inside the write, after the temp file exists
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


# ---- the train/validation split ----------------------------------------------------------------------

def test_split_keeps_the_last_tenth_for_validation():
    train, val = tinyllm.split_train_val(list(range(100)))
    assert train == list(range(90)) and val == list(range(90, 100))
    assert tinyllm.split_train_val("abcdefghij") == ("abcdefghi", "j")
    assert tinyllm.split_train_val("abcdefghijk") == ("abcdefghi", "jk")  # int(11 * 0.9) = 9, as nanoGPT


def test_split_with_another_fraction_and_bad_fractions():
    assert tinyllm.split_train_val("abcd", val_fraction=0.25) == ("abc", "d")
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            tinyllm.split_train_val("abcd", val_fraction=bad)


def test_split_of_tinyshakespeare_matches_nanogpt(shakespeare_path):
    text = shakespeare_path.read_text(encoding="utf-8")
    train, val = tinyllm.split_train_val(text)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert train + val == text
    assert val.startswith("?\n\nGREMIO:\nGood morrow, neighbour")
