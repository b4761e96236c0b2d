"""Section 3, tokenization: the character and byte-level BPE tokenizers, their files, and their errors.

The known answers for BPE were worked out by hand; the working is in the comments beside them.
"""

from __future__ import annotations

import json

import pytest
import torch

import tinyllm
from tinyllm import BPETokenizer, CharTokenizer, load_tokenizer

EOT = "<|endoftext|>"

ROUND_TRIP_TEXTS = {
    "empty": "",
    "ascii": "Hello, World! It's 2024: 3.14 < 22/7 & x_y == snake_case__name.",
    "whitespace": "  leading\tand\r\ntrailing  \n\n\n   ",
    "cjk": "你好，世界。日本語のテキスト、한국어 문장.",
    "emoji": "😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",  # skin tone, a ZWJ family, a flag, a variation selector
    "combining": "e\u0301 n\u0303 a\u0308\u0304 Z\u0335\u0321\u0334",  # combining accents, not precomposed
    "mixed": "Ελληνικά, русский, עברית, العربية, हिन्दी — ∑∫√∞ ½ ² ①",
    "control": "\x00\x01\x7f\u200b\ufeff\U0010ffff",
}


@pytest.fixture(scope="module")
def bpe(corpus_text) -> BPETokenizer:
    """A small BPE tokenizer trained on the structured English corpus from conftest, with <|endoftext|>."""
    return BPETokenizer.train(corpus_text, 300, special_tokens=[EOT])


@pytest.fixture(scope="module")
def shakespeare_text(shakespeare_path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shakespeare_bpe(shakespeare_text) -> BPETokenizer:
    return BPETokenizer.train(shakespeare_text, 512)


# ---- the character tokenizer -------------------------------------------------------------------------

def test_char_vocabulary_is_the_sorted_distinct_characters():
    tok = CharTokenizer.from_text("hello")
    assert tok.chars == "ehlo" and tok.vocab_size == 4
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    assert tok.decode([3, 2, 0]) == "ole"


@pytest.mark.parametrize("name", [n for n in ROUND_TRIP_TEXTS if n != "empty"])
def test_char_round_trip(name):
    text = ROUND_TRIP_TEXTS[name]
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_char_tokenizer_of_tinyshakespeare_has_65_characters(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.vocab_size == 65  # the figure nanoGPT and char-rnn report
    assert tok.chars[:13] == "\n !$&',-.3:;?"
    ids = tok.encode(shakespeare_text)
    assert len(ids) == len(shakespeare_text) and tok.decode(ids) == shakespeare_text


def test_char_encode_of_unseen_characters_names_them():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"character\(s\) 'xz' not in this tokenizer's vocabulary"):
        tok.encode("abxcz")


def test_char_encode_names_at_most_20_unseen_characters():
    tok = CharTokenizer.from_text("a")
    with pytest.raises(ValueError, match=r"'bcdefghijklmnopqrstu' and 5 more"):
        tok.encode("abcdefghijklmnopqrstuvwxyz")


def test_char_tokenizer_needs_some_text():
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")


@pytest.mark.parametrize("ids", [[4], [-1], [0, 1, 99]])
def test_char_decode_of_ids_outside_the_vocabulary(ids):
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=r"outside this tokenizer's vocabulary 0\.\.3"):
        tok.decode(ids)


# ---- BPE: known answers worked out by hand ---------------------------------------------------------

def test_bpe_known_answer_aaabdaaabac():
    # One chunk, "aaabdaaabac" (a=97 b=98 c=99 d=100). Pair counts: aa 4, ab 2, the rest 1.
    #   merge 0: (a, a) -> 256; left to right, "aaab" becomes [256, a, b]:  [256 a b d 256 a b a c]
    #   now (256, a) and (a, b) both occur twice; the tie goes to the smaller pair, (97, 98) -> 257
    #   [256 257 d 256 257 a c]: (256, 257) occurs twice -> 258:  [258 d 258 a c]
    tok = BPETokenizer.train("aaabdaaabac", 259)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.vocab[256:] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aab") == [256, 98]  # merges apply in the order learned: aa first, then nothing fits


def test_bpe_known_answer_with_pre_split_chunks():
    # Chunks "hug", " hug", " pug" (the space stays with the word that follows it).
    # Pairs: (u, g) 3, (h, u) 2, the rest 1   -> merge 0: (117, 103) "ug" = 256
    # Now [h 256], [32 h 256], [32 p 256]: (h, 256) 2 -> merge 1: (104, 256) "hug" = 257
    # Now [257], [32 257], [32 p 256]: three pairs seen once; the smallest is (32, 112) " p" = 258
    tok = BPETokenizer.train("hug hug pug", 259)
    assert tok.merges == [(117, 103), (104, 256), (32, 112)]
    assert tok.encode("hug hug pug") == [257, 32, 257, 258, 256]
    # "pug" with no space before it: only "ug" applies; " hug" becomes " " + "hug"
    assert tok.encode("pug hug") == [112, 256, 32, 257]


def test_bpe_ties_go_to_the_smallest_pair():
    # "abcd": every pair occurs once, so the smallest wins each time: ab, then cd, then ab+cd.
    assert BPETokenizer.train("abcd", 259).merges == [(97, 98), (99, 100), (256, 257)]


def test_bpe_merges_never_cross_chunk_boundaries():
    # "ab.ab.ab." splits into "ab", ".", "ab", ".", ... so (b, .) never becomes a pair.
    tok = BPETokenizer.train("ab.ab.ab.", 257)
    assert tok.merges == [(97, 98)]
    with pytest.raises(ValueError, match="supports only 257 tokens"):
        BPETokenizer.train("ab.ab.ab.", 258)


def test_bpe_merge_i_gets_id_256_plus_i(bpe):
    assert bpe.vocab_size == 300 and len(bpe.merges) == 300 - 256 - 1
    for i, (a, b) in enumerate(bpe.merges):
        assert bpe.vocab[256 + i] == bpe.vocab[a] + bpe.vocab[b]
        assert a < 256 + i and b < 256 + i  # built only from earlier tokens
    assert bpe.vocab[:256] == [bytes([i]) for i in range(256)]


def test_bpe_with_vocab_256_is_plain_utf8_bytes():
    tok = BPETokenizer.train("anything", 256)
    assert tok.merges == [] and tok.vocab_size == 256
    assert tok.encode("é😀") == list("é😀".encode("utf-8")) == [195, 169, 240, 159, 152, 128]


def test_bpe_training_is_deterministic(corpus_text, bpe):
    again = BPETokenizer.train(corpus_text, 300, special_tokens=[EOT])
    assert again.merges == bpe.merges and again.special_tokens == bpe.special_tokens


def test_bpe_on_tinyshakespeare_known_answer(shakespeare_bpe, shakespeare_text):
    assert shakespeare_bpe.merges[:5] == [(32, 116), (104, 101), (32, 97), (111, 117), (32, 115)]  # " t" "he" " a" "ou" " s"
    ids = shakespeare_bpe.encode(shakespeare_text)
    assert len(ids) == 575_345  # 1.94 characters per token
    assert shakespeare_bpe.decode(ids) == shakespeare_text
    assert max(ids) < 512


# ---- BPE: round trips --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ROUND_TRIP_TEXTS))
def test_bpe_round_trip(bpe, name):
    text = ROUND_TRIP_TEXTS[name]
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_round_trip_of_text_it_never_saw(bpe):
    text = "Zebras juggle quixotically: 0xDEADBEEF, ñandú, Ωμέγα, 🦓🦓."
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_its_training_text(bpe, corpus_text):
    assert len(bpe.encode(corpus_text)) < 0.6 * len(corpus_text.encode("utf-8"))  # 43 merges save > 40%


def test_bpe_encoding_a_lone_surrogate_is_a_value_error(bpe):
    with pytest.raises(ValueError):  # not valid Unicode text, so it has no UTF-8 bytes
        bpe.encode("abc\ud800")


# ---- BPE: special tokens -------------------------------------------------------------------------------

def test_special_tokens_come_after_the_merges_and_are_never_split(bpe):
    eot = bpe.special_tokens[EOT]
    assert eot == 256 + len(bpe.merges) == bpe.vocab_size - 1
    ids = bpe.encode(f"The king{EOT}{EOT}The queen")
    assert ids.count(eot) == 2
    assert ids[: ids.index(eot)] == bpe.encode("The king")
    assert bpe.decode(ids) == f"The king{EOT}{EOT}The queen"
    assert bpe.decode([eot]) == EOT


def test_a_partial_special_token_is_ordinary_text(bpe):
    ids = bpe.encode("<|endoftext")
    assert bpe.special_tokens[EOT] not in ids
    assert bpe.decode(ids) == "<|endoftext"


def test_special_tokens_are_cut_out_of_the_training_text():
    # With <|endoftext|> removed, only the chunk "hi" is left: one merge, (h, i), is all there is.
    tok = BPETokenizer.train(f"hi{EOT}" * 100, 258, special_tokens=[EOT])
    assert tok.merges == [(104, 105)] and tok.special_tokens == {EOT: 257}
    with pytest.raises(ValueError, match="supports only 258 tokens"):
        BPETokenizer.train(f"hi{EOT}" * 100, 259, special_tokens=[EOT])


def test_the_longer_of_two_overlapping_special_tokens_wins():
    tok = BPETokenizer.train("some text", 258, special_tokens=["<a>", "<a>b"])
    assert tok.special_tokens == {"<a>": 256, "<a>b": 257}
    assert tok.encode("<a>b<a>") == [257, 256]


@pytest.mark.parametrize("specials", [[EOT, EOT], [""], [EOT, 7], [["<a>"]]])
def test_special_tokens_must_be_distinct_non_empty_strings(specials):
    with pytest.raises(ValueError, match="special tokens must be distinct, non-empty strings"):
        BPETokenizer.train("some text", 300, special_tokens=specials)


# ---- BPE: vocabulary size errors ------------------------------------------------------------------------

@pytest.mark.parametrize("vocab_size", [0, 100, 255])
def test_bpe_vocab_below_256_is_refused(vocab_size):
    with pytest.raises(ValueError, match=rf"vocab_size must be at least 256 .*got {vocab_size}: use a larger"):
        BPETokenizer.train("some text", vocab_size)


def test_bpe_vocab_must_leave_room_for_special_tokens():
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train("some text", 256, special_tokens=[EOT])


@pytest.mark.parametrize("text, most", [("", 256), ("a", 256), ("ab", 257), ("aaaa", 258)])
def test_bpe_vocab_larger_than_the_text_supports_is_refused(text, most):
    # "aaaa": (a, a) -> 256 gives [256 256], then (256, 256) -> 257 gives [257]: two merges at most.
    assert BPETokenizer.train(text, most).vocab_size == most
    with pytest.raises(ValueError, match=rf"the text supports only {most} tokens .* use a smaller vocab size or more text"):
        BPETokenizer.train(text, most + 1)


# ---- decode -------------------------------------------------------------------------------------------

def test_decode_of_invalid_utf8_gives_replacement_characters():
    tok = BPETokenizer.train("", 256)
    assert tok.decode([0xFF]) == "\ufffd"  # never valid in UTF-8
    assert tok.decode([240, 159]) == "\ufffd"  # the first half of 😀
    assert tok.decode([0x80, 97]) == "\ufffda"  # a stray continuation byte, then "a"
    emoji = tok.encode("😀")
    assert tok.decode(emoji[:2]) + tok.decode(emoji[2:]) == "\ufffd\ufffd\ufffd"
    assert tok.decode(emoji) == "😀"


@pytest.mark.parametrize("ids", [[300], [-1], [97, 10**9]])
def test_bpe_decode_of_ids_outside_the_vocabulary(bpe, ids):
    with pytest.raises(ValueError, match=r"outside this tokenizer's vocabulary 0\.\.299: were they made with"):
        bpe.decode(ids)


@pytest.mark.parametrize("ids", [[97.0], ["a"], "97", [None]])
def test_decode_wants_integer_ids(bpe, ids):
    with pytest.raises(TypeError, match="token ids must be integers"):
        bpe.decode(ids)


def test_decode_takes_a_tensor_of_ids(bpe):
    ids = bpe.encode("The king speaks.")
    assert bpe.decode(torch.tensor(ids)) == "The king speaks."
    assert CharTokenizer.from_text("ab").decode(torch.tensor([1, 0])) == "ba"


# ---- saving and loading ---------------------------------------------------------------------------------

def test_char_save_and_load_round_trip(tmp_path):
    tok = CharTokenizer.from_text("héllo wörld\n")  # sorted by code point: é and ö come last
    tok.save(tmp_path / "char.json")
    data = json.loads((tmp_path / "char.json").read_text(encoding="utf-8"))
    assert data == {"format": "tinyllm-tokenizer", "version": 1, "type": "char", "chars": "\n dhlorwéö"}
    assert "ö" in (tmp_path / "char.json").read_text(encoding="utf-8")  # readable, not \u00f6
    loaded = load_tokenizer(tmp_path / "char.json")
    assert isinstance(loaded, CharTokenizer) and loaded.chars == tok.chars
    assert loaded.encode("wörld héllo") == tok.encode("wörld héllo") == [7, 9, 6, 4, 2, 1, 3, 8, 4, 4, 5]


def test_bpe_save_and_load_round_trip(tmp_path, bpe, corpus_text):
    bpe.save(tmp_path / "bpe.json")
    data = json.loads((tmp_path / "bpe.json").read_text(encoding="utf-8"))
    assert data["format"] == "tinyllm-tokenizer" and data["version"] == 1 and data["type"] == "bpe"
    assert data["merges"][0] == list(bpe.merges[0]) and data["special_tokens"] == {EOT: 299}
    assert data["pattern"] == tinyllm.SPLIT_PATTERN
    loaded = load_tokenizer(str(tmp_path / "bpe.json"))
    assert isinstance(loaded, BPETokenizer)
    assert loaded.merges == bpe.merges and loaded.special_tokens == bpe.special_tokens
    assert loaded.vocab_size == bpe.vocab_size and loaded.vocab == bpe.vocab
    text = corpus_text[:500] + EOT + "日本 😀"
    assert loaded.encode(text) == bpe.encode(text)
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_bytes() == (tmp_path / "bpe.json").read_bytes()


def test_a_custom_split_pattern_is_saved_but_only_code_restores_it(tmp_path):
    """A file's pattern could be hostile, so load_tokenizer reads only tinyllm's own; code that trusts one rebuilds it."""
    tok = BPETokenizer.train("ab ab ab", 257, pattern=r"\S+|\s+")
    tok.save(tmp_path / "t.json")
    with pytest.raises(ValueError, match=r"t\.json: bad split pattern in BPE tokenizer: tinyllm reads only its own"):
        load_tokenizer(tmp_path / "t.json")
    data = json.loads((tmp_path / "t.json").read_text(encoding="utf-8"))
    assert data["pattern"] == r"\S+|\s+"
    rebuilt = BPETokenizer(data["merges"], data["special_tokens"], data["pattern"])
    assert rebuilt.encode("ab ab") == tok.encode("ab ab") == [256, 32, 256]


# ---- malformed tokenizer files ----------------------------------------------------------------------------

def write_tokenizer(tmp_path, **fields):
    """A valid BPE tokenizer file (one merge, one special token) with some fields replaced or removed."""
    data = {"format": "tinyllm-tokenizer", "version": 1, "type": "bpe", "pattern": tinyllm.SPLIT_PATTERN,
            "merges": [[104, 105]], "special_tokens": {EOT: 257}}
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not REMOVE}
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


REMOVE = object()


def test_the_valid_base_file_loads(tmp_path):
    tok = load_tokenizer(write_tokenizer(tmp_path))
    assert tok.encode(f"hi{EOT}") == [256, 257]


@pytest.mark.parametrize("fields, message", [
    ({"format": "something-else"}, "not a tinyllm tokenizer file"),
    ({"format": REMOVE}, "not a tinyllm tokenizer file"),
    ({"version": REMOVE}, "has no format version"),
    ({"version": 2}, "tokenizer format version 2; this tinyllm reads version 1"),
    ({"version": "1"}, "tokenizer format version '1'"),
    ({"type": "wordpiece"}, "expected a 'type' of 'char' or 'bpe'"),
    ({"merges": "104 105"}, "'merges' must be a list"),
    ({"merges": REMOVE}, "'merges' must be a list"),
    ({"special_tokens": [EOT]}, "'special_tokens' a dict"),
    ({"pattern": 5}, "'pattern' a string"),
    ({"merges": [[104]]}, r"merge 0 is \[104\], expected two ids below 256"),
    ({"merges": [[104, 105, 106]]}, "merge 0 is"),
    ({"merges": [[104, 256]]}, r"merge 0 is \[104, 256\], expected two ids below 256"),  # itself
    ({"merges": [[104, 105], [258, 1]]}, r"merge 1 is \[258, 1\], expected two ids below 257"),
    ({"merges": [[-1, 105]]}, "merge 0 is"),
    ({"merges": [[104.0, 105]]}, "merge 0 is"),
    ({"merges": [[True, 105]]}, "merge 0 is"),
    ({"merges": [["h", "i"]]}, "merge 0 is"),
    ({"merges": [{"a": 1, "b": 2}]}, "merge 0 is"),
    ({"merges": [[104, 105], [104, 105]], "special_tokens": {}}, "merge 1 .* repeats an earlier merge"),
    ({"special_tokens": {EOT: 300}}, r"special tokens must be non-empty strings with the ids 257\.\.257"),
    ({"special_tokens": {EOT: 256}}, "special tokens must be"),  # clashes with merge 0
    ({"special_tokens": {EOT: "257"}}, "special tokens must be"),
    ({"special_tokens": {EOT: 257.0}}, "special tokens must be"),
    ({"special_tokens": {EOT: 257, "<pad>": 257}}, "special tokens must be"),
    ({"special_tokens": {"": 257}}, "special tokens must be"),
    ({"pattern": "(unclosed"}, "bad split pattern"),
    ({"pattern": "a{99999999999}"}, "bad split pattern"),
    ({"type": "char", "chars": ""}, "'chars' must be a non-empty string"),
    ({"type": "char", "chars": "aab"}, "distinct, sorted characters"),
    ({"type": "char", "chars": "ba"}, "distinct, sorted characters"),
    ({"type": "char", "chars": ["a", "b"]}, "'chars' must be"),
    ({"type": "char", "chars": REMOVE}, "'chars' must be"),
])
def test_malformed_tokenizer_files_are_refused(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        load_tokenizer(write_tokenizer(tmp_path, **fields))


@pytest.mark.parametrize("content", [
    b"hello, I am not JSON",
    b"\x80\x04\x95 a pickle, say",
    b'{"format": "tinyllm-tokenizer", "version": 1, ',  # cut short
    b"[" * 100_000 + b"]" * 100_000,  # nested too deep for the JSON parser
], ids=["text", "binary", "truncated", "deeply-nested"])
def test_files_that_are_not_json_are_refused(tmp_path, content):
    path = tmp_path / "tok.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a tokenizer file"):
        load_tokenizer(path)


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"a string"', "null", "{}"])
def test_json_that_is_not_a_tokenizer_object_is_refused(tmp_path, content):
    path = tmp_path / "tok.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="is not a tinyllm tokenizer file"):
        load_tokenizer(path)


def test_loading_a_missing_file_or_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer file at .*written by Tokenizer.save"):
        load_tokenizer(tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path)


# ---- text that is not valid Unicode ------------------------------------------------------------------------

LONE_SURROGATE = r"the text holds a lone surrogate '\\ud800' at position 4, which is not valid Unicode text .*" \
                 r"clean it first, e\.g\. with text\.encode\('utf-8', 'replace'\)"


def test_a_lone_surrogate_is_a_clear_error_for_bpe(bpe):
    with pytest.raises(ValueError, match=LONE_SURROGATE):  # was UnicodeEncodeError, from deep inside encode
        bpe.encode("The \ud800 king")
    with pytest.raises(ValueError, match=LONE_SURROGATE):
        BPETokenizer.train("The \ud800 king", 260)
    cleaned = "The \ud800 king".encode("utf-8", "replace").decode("utf-8")  # the cure the message suggests
    assert bpe.decode(bpe.encode(cleaned)) == cleaned == "The ? king"


def test_a_lone_surrogate_is_a_clear_error_for_chars():
    tok = CharTokenizer.from_text("The king")
    with pytest.raises(ValueError, match=LONE_SURROGATE):  # was "not in this tokenizer's vocabulary: ... use BPE"
        tok.encode("The \ud800 king")
    with pytest.raises(ValueError, match=LONE_SURROGATE):  # was accepted, and the tokenizer could not be saved
        CharTokenizer.from_text("The \ud800 king")


# ---- hostile split patterns -----------------------------------------------------------------------------------

OLD_SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+"  # before "_" was punctuation


def test_a_hostile_split_pattern_in_a_file_is_refused_at_once(tmp_path):
    """(a+)+$ backtracks catastrophically: splitting 40 a's and a b would take hours (each a doubles the time)."""
    for pattern in [r"(a+)+$", r"(\w|\w\w)*!", OLD_SPLIT_PATTERN + "|x"]:
        with pytest.raises(ValueError, match=r"tok\.json: bad split pattern in BPE tokenizer: tinyllm reads only its "
                                             r"own \(SPLIT_PATTERN, or the one before it\), since a regex from a file "
                                             r"could make encoding hang; for another pattern, build BPETokenizer"):
            load_tokenizer(write_tokenizer(tmp_path, pattern=pattern))


def test_the_split_patterns_tinyllm_has_written_still_load(tmp_path):
    assert load_tokenizer(write_tokenizer(tmp_path)).pattern == tinyllm.SPLIT_PATTERN
    old = load_tokenizer(write_tokenizer(tmp_path, pattern=OLD_SPLIT_PATTERN))  # checkpoints from before the "_" fix
    assert old.pattern == OLD_SPLIT_PATTERN and old.encode("hi there") == [256, 32, 116, 104, 101, 114, 101]
