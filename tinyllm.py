"""tinyllm: a tiny language model, from text to samples, in one readable file.

The pipeline is: text -> tokenizer -> decoder-only transformer -> training loop -> sampling, and then
conversations -> fine-tuning with a masked loss -> a chat model (section 14).

The file has two parts:
  Part I, the chapter (sections 1-14): what a learner needs to see, in the order of the notebook
    `tiny_llm.ipynb`, which holds every one of these definitions too, identical, under the same
    numbered headings. Read it side by side with the notebook.
  Part II, the toolkit (the package tinyllm_toolkit/, reached through this module's footer): what
    real runs need on top - crash-safe checkpoint files, exact resume, Ctrl-C, several GPUs (DDP),
    the command line and export - built from Part I's pieces, never a copy of them.
`python tinyllm.py --help` is the command line, and `import tinyllm` the library.

The model follows today's small open models rather than GPT-2. The papers behind it:
  - Attention Is All You Need (Vaswani et al., 2017): the transformer and scaled dot-product attention.
  - Language Models are Unsupervised Multitask Learners (Radford et al., 2019): GPT-2, byte-level BPE.
  - Root Mean Square Layer Normalization (Zhang & Sennrich, 2019): RMSNorm.
  - RoFormer (Su et al., 2021): rotary position embeddings (RoPE).
  - GLU Variants Improve Transformer (Shazeer, 2020): the SwiGLU feed-forward layer.
  - LLaMA (Touvron et al., 2023): how these pieces fit together in a pre-norm decoder.
  - Decoupled Weight Decay Regularization (Loshchilov & Hutter, 2019): AdamW.
  - Muon: An optimizer for hidden layers in neural networks (Jordan et al., 2024, kellerjordan.github.io):
    the cpu preset's optimizer for the blocks' weight matrices.
  - Scaling Vision Transformers to 22 Billion Parameters (Dehghani et al., 2023): QK-norm.
  - Dropout (Srivastava et al., 2014): the regularisation of the 9m preset.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import http.client
import json
import math
import operator
import os
import random
import re
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Where downloaded datasets are cached (TINYLLM_DATA_DIR overrides it). The notebook uses ./data.
DATA_DIR = Path(__file__).resolve().parent / "data"


# ==============================================================================================
# Part I - the chapter (mirrored by tiny_llm.ipynb, definition for definition)
# ==============================================================================================

# ----------------------------------------------------------------------------------------------
# 1. Setup: device, seed, versions
# ----------------------------------------------------------------------------------------------

def pick_device(name: str = "auto") -> torch.device:
    """The device to train on: "auto" takes CUDA, then Apple's MPS, then the CPU.

    An explicit name ("cpu", "cuda", "cuda:1", "mps") is checked, so a typo or a missing GPU is a
    clear error here rather than a cryptic one on the first matrix multiply.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available here: use --device cpu (or auto)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here: use --device cpu (or auto)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so that a run can be repeated exactly (on the CPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions() -> str:
    """One line naming the versions that matter, for bug reports and the notebook's header."""
    cuda = torch.version.cuda or "none"
    return f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {cuda}), numpy {np.__version__}"


# ----------------------------------------------------------------------------------------------
# 2. The data
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """A built-in corpus: where it comes from, the name it is cached under, and its SHA-256."""

    url: str
    filename: str
    sha256: str


DATASETS = {
    "shakespeare": Dataset(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        filename="tinyshakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_dataset(name: str, data_dir: Path) -> Path:
    """Fetch a built-in dataset once, check its SHA-256, and cache it in `data_dir`.

    A cached copy is used only if its hash matches: a file cut short by a crash, or edited by hand,
    is fetched again rather than trusted. Nothing is written unless the download's hash matches too.
    """
    ds = DATASETS[name]
    path = Path(data_dir) / ds.filename
    if path.is_file() and sha256_of(path.read_bytes()) == ds.sha256:
        return path  # cache hit: a verified copy is already here
    try:
        with urllib.request.urlopen(ds.url, timeout=60) as response:
            data = response.read()
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts; a connection dropped mid-download
        raise ConnectionError(
            f"could not download {name!r} from {ds.url} ({e}). Connect to the internet and try again, or "
            f"download that file by hand and save it as {path} (or set TINYLLM_DATA_DIR to a folder "
            f"holding {ds.filename})"
        ) from None
    if sha256_of(data) != ds.sha256:
        raise ValueError(
            f"the download from {ds.url} has SHA-256 {sha256_of(data)}, not the expected {ds.sha256}: it is "
            f"damaged or has changed. Try again later, or save a good copy by hand as {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)  # a write cut short fails the hash check next time, and is fetched again
    return path


def load_text(source: str | Path, data_dir: Optional[str | Path] = None) -> str:
    """The text of a built-in dataset (e.g. "shakespeare") or of any UTF-8 text file.

    A dataset is downloaded once and cached in `data_dir` (default: $TINYLLM_DATA_DIR, else data/).
    The toolkit's tinyllm_toolkit.inputs.load_text_checked adds a clear error for each way this can fail.
    """
    if str(source) in DATASETS:
        source = download_dataset(str(source), Path(data_dir or os.environ.get("TINYLLM_DATA_DIR") or DATA_DIR))
    return Path(source).read_bytes().decode("utf-8-sig")  # "utf-8-sig": UTF-8, minus a byte-order mark


def split_train_val(data: Sequence, val_fraction: float = 0.1) -> tuple:
    """Split text or token ids into (train, val): the last `val_fraction` is validation, as nanoGPT does."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n = int(len(data) * (1.0 - val_fraction))
    return data[:n], data[n:]


# ----------------------------------------------------------------------------------------------
# 3. Tokenization
# ----------------------------------------------------------------------------------------------

TOKENIZER_FORMAT = "tinyllm-tokenizer"
TOKENIZER_VERSION = 1


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    """The special tokens as a list, after checking that they are distinct, non-empty strings."""
    special_tokens = list(special_tokens)
    if not all(isinstance(s, str) and s for s in special_tokens) or len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, non-empty strings, got {special_tokens!r}")
    return special_tokens


def unknown_characters(unseen: set) -> ValueError:
    """The error for characters outside a character vocabulary, naming (the first 20 of) them."""
    unseen = sorted(unseen)
    more = f" and {len(unseen) - 20} more" if len(unseen) > 20 else ""
    return ValueError(f"character(s) {''.join(unseen[:20])!r}{more} not in this tokenizer's vocabulary: "
                      "use only characters of the training text (or a BPE tokenizer, which encodes any text)")


class Tokenizer:
    """What every tokenizer offers: encode, decode, vocab_size, and save as readable JSON."""

    kind = "base"

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """`text` as plain text, never a special token: how to encode what a user typed (section 14)."""
        return self.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """Save as JSON (human-readable, versioned); `load_tokenizer(path)` restores it."""
        data = {"format": TOKENIZER_FORMAT, "version": TOKENIZER_VERSION, **self.to_dict()}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        """The ids as a list of Python ints, after checking each one names a token of this vocabulary.

        Without the check, a negative id would quietly index from the end of a Python list.
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else ids  # a tensor or array, as a list
        try:
            ids = [operator.index(i) for i in ids]  # ints, NumPy ints, integer tensors; not 2.5 or "7"
        except TypeError:
            raise TypeError("token ids must be integers (a list of ints, or an integer tensor)") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token id(s) {bad[:5]} outside this tokenizer's vocabulary 0..{self.vocab_size - 1}: "
                "were they made with another tokenizer, or by a model with a larger vocabulary?"
            )
        return ids

    @staticmethod
    def _check_text(text: str) -> None:
        """Refuse a lone surrogate ("\\ud800"): a Python string can hold one, but it is no character, and no UTF-8."""
        bad = re.search(r"[\ud800-\udfff]", text)
        if bad:
            raise ValueError(f"the text holds a lone surrogate {bad.group()!r} at position {bad.start()}, which is not "
                             "valid Unicode text (bytes that were not UTF-8?): clean it first, e.g. with "
                             "text.encode('utf-8', 'replace').decode('utf-8')")


class CharTokenizer(Tokenizer):
    """One token per character, the tokenizer char-rnn and nanoGPT start with. Special tokens (section
    14's chat markers) take the ids after the characters; `encode` never produces one."""

    kind = "char"

    def __init__(self, chars: str, special_tokens: Sequence[str] = ()):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}  # character -> id
        specials = check_special_tokens(special_tokens)
        self.special_tokens = {s: len(self.chars) + i for i, s in enumerate(specials)}  # text -> id
        self.itos = list(self.chars) + specials  # id -> text

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary is every distinct character of `text`, sorted, so the ids never depend on order."""
        if not text:
            raise ValueError("cannot build a character tokenizer from empty text: give it the training text")
        cls._check_text(text)
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        self._check_text(text)
        if not set(text) <= self.stoi.keys():
            raise unknown_characters(set(text) - self.stoi.keys())
        return [self.stoi[c] for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.itos[i] for i in self._check_ids(ids))

    def to_dict(self) -> dict:
        specials = {"special_tokens": list(self.special_tokens)} if self.special_tokens else {}
        return {"type": "char", "chars": self.chars, **specials}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        return cls(data["chars"], data.get("special_tokens", ()))


# GPT-2 style pre-split: contractions, words with their leading space, numbers, punctuation runs and
# whitespace. Merges never cross these chunk boundaries, so "dog." and "dog!" share the token " dog".
# Every character lands in exactly one chunk (the underscore, a "word" character to Python's \w, is
# counted as punctuation), so joining the chunks gives back the text and decode(encode(s)) == s.
SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` (left to right) with `new_id`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def pair_counts(ids: Sequence[int], weight: int = 1, counts: Optional[dict] = None) -> dict:
    """Count adjacent pairs in `ids`, each occurrence counting `weight` times."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def train_bpe_simple(text: str, vocab_size: int, pattern: str = SPLIT_PATTERN) -> list[tuple[int, int]]:
    """The textbook BPE loop (Sennrich et al., 2016) on UTF-8 bytes: the merges it learns, in order.

    Count every adjacent pair in the text, merge the most frequent one everywhere into a new id,
    and repeat. Merges never cross the chunks of the split pattern. Ties go to the smallest pair,
    as in BPETokenizer.train, so both learn the same merges; this one recounts everything after
    every merge, which makes it slow: O(merges x text).
    """
    chunks = [list(chunk.encode("utf-8")) for chunk in re.findall(pattern, text)]
    merges: list[tuple[int, int]] = []
    while 256 + len(merges) < vocab_size:
        counts: dict = {}
        for ids in chunks:
            pair_counts(ids, counts=counts)
        if not counts:
            break  # every chunk is a single token: nothing left to merge
        pair = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties to the smallest pair
        chunks = [merge_pair(ids, pair, 256 + len(merges)) for ids in chunks]
        merges.append(pair)
    return merges


def learn_merges(text: str, n_merges: int, special_tokens: Sequence[str] = (),
                 pattern: str = SPLIT_PATTERN) -> list[tuple[int, int]]:
    """The merges of train_bpe_simple, learned fast.

    Three ideas avoid recounting the whole text after every merge:
      1. Identical chunks are counted once, with their frequency: Shakespeare's 300k chunks are
         only 15k distinct words.
      2. `where` remembers which words hold each pair, so a merge visits only those words, and
         the pair counts are corrected by the difference the merge made there.
      3. A heap hands out the most frequent pair without scanning all the counts.
    Special tokens are cut out of the text first, so no merge ever learns a piece of one.
    """
    Tokenizer._check_text(text)
    longest_first = sorted(special_tokens, key=len, reverse=True)
    parts = re.split("|".join(map(re.escape, longest_first)), text) if special_tokens else [text]
    chunk_counts: dict[str, int] = {}
    for chunk in (c for part in parts for c in re.findall(pattern, part)):
        chunk_counts[chunk] = chunk_counts.get(chunk, 0) + 1
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each distinct chunk, as ids
    freqs = list(chunk_counts.values())  # how often each one occurs in the text
    counts: dict[tuple[int, int], int] = {}  # pair -> its number of occurrences in the text
    where: dict[tuple[int, int], set[int]] = {}  # pair -> the words it occurs in (and maybe a few more)
    for w, (ids, freq) in enumerate(zip(words, freqs)):
        for pair in zip(ids, ids[1:]):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(w)
    heap = [(-c, pair) for pair, c in counts.items()]  # heapq is a min-heap, so counts go in negated
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        while heap and counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # a stale entry: this pair's count has changed since it was pushed
        if not heap:
            raise ValueError(f"the text supports only {256 + len(merges) + len(special_tokens)} tokens (no pair is left to "
                             f"merge), fewer than vocab_size={256 + n_merges + len(special_tokens)}: use a smaller "
                             "vocab size or more text")
        _, pair = heapq.heappop(heap)  # the most frequent pair; ties go to the smallest
        new_id = 256 + len(merges)
        merges.append(pair)
        delta: dict[tuple[int, int], int] = {}  # how this merge changes each pair's count
        for w in where.pop(pair):
            ids, freq = words[w], freqs[w]
            merged = merge_pair(ids, pair, new_id)
            if len(merged) == len(ids):
                continue  # an earlier merge already took this pair apart in this word
            pair_counts(ids, -freq, delta)  # the word's pairs before the merge go out ...
            pair_counts(merged, freq, delta)  # ... and its pairs after the merge come in
            for p in zip(merged, merged[1:]):
                if new_id in p:  # every other pair was already in this word, and in `where`
                    where.setdefault(p, set()).add(w)
            words[w] = merged
        for p, d in delta.items():
            if d:
                counts[p] = counts.get(p, 0) + d
                if counts[p] > 0:
                    heapq.heappush(heap, (-counts[p], p))
                else:
                    del counts[p]
    return merges


def bpe_encode_chunk(chunk: str, ranks: dict[tuple[int, int], int]) -> list[int]:
    """Apply the merges to one chunk, always the one learned first (lowest rank) next, as training did."""
    ids = list(chunk.encode("utf-8"))
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, math.inf))
        if pair not in ranks:
            break  # nothing left to merge
        ids = merge_pair(ids, pair, ranks[pair])
    return ids


def bpe_merges_wanted(vocab_size: int, special_tokens: list[str]) -> int:
    """How many merges a BPE vocabulary of vocab_size has room for, after the 256 bytes and the special tokens."""
    check_special_tokens(special_tokens)
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size must be at least {256 + len(special_tokens)} (256 byte tokens + "
                         f"{len(special_tokens)} special tokens), got {vocab_size}: use a larger vocab size")
    return vocab_size - 256 - len(special_tokens)


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding (BPE), as in GPT-2: ids 0-255 are the UTF-8 bytes, so any text can be
    encoded; merge i (a pair of ids that often stand side by side) is id 256 + i; then the special tokens."""

    kind = "bpe"

    def __init__(self, merges: Sequence[tuple[int, int]], special_tokens: Optional[dict] = None,
                 pattern: str = SPLIT_PATTERN):
        self.merges = [tuple(m) for m in merges]
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}  # pair -> its new id
        self.pattern, self.regex = pattern, re.compile(pattern)
        self.vocab = [bytes([i]) for i in range(256)]
        for a, b in self.merges:
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.special_tokens = dict(special_tokens or {})  # text -> id
        specials = sorted(self.special_tokens, key=len, reverse=True)  # the longest match first
        self.special_regex = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        self.cache: dict[str, list[int]] = {}  # chunk -> ids: most chunks are words that recur

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Sequence[str] = (),
              pattern: str = SPLIT_PATTERN) -> "BPETokenizer":
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text` (with learn_merges)."""
        merges = learn_merges(text, bpe_merges_wanted(vocab_size, special_tokens), special_tokens, pattern)
        return cls(merges, {s: 256 + len(merges) + i for i, s in enumerate(special_tokens)}, pattern)

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.merges) + len(self.special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids for `text` as plain text: a special token's spelling becomes ordinary tokens."""
        self._check_text(text)
        ids: list[int] = []
        for chunk in self.regex.findall(text):
            chunk_ids = self.cache.get(chunk) or bpe_encode_chunk(chunk, self.ranks)
            if len(self.cache) < 100_000:  # bounded, whatever text comes in
                self.cache[chunk] = chunk_ids
            ids.extend(chunk_ids)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`: special tokens whole, the text between them through encode_ordinary."""
        ids: list[int] = []
        for part in self.special_regex.split(text) if self.special_regex else [text]:
            ids += [self.special_tokens[part]] if part in self.special_tokens else self.encode_ordinary(part)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes back to text; ids that do not form valid UTF-8 become the replacement character."""
        specials = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        return b"".join(specials.get(i) or self.vocab[i] for i in self._check_ids(ids)).decode("utf-8", "replace")

    def to_dict(self) -> dict:
        return {"type": "bpe", "pattern": self.pattern, "merges": [list(m) for m in self.merges],
                "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, data: dict) -> "BPETokenizer":
        return cls([tuple(m) for m in data["merges"]], data.get("special_tokens"), data.get("pattern", SPLIT_PATTERN))


def tokenizer_of(data: dict) -> Tokenizer:
    """The tokenizer that a saved dict (`to_dict`, or a tokenizer file's JSON) describes.

    Each kind of tokenizer (a subclass of Tokenizer: "char", "bpe") rebuilds itself with from_dict. It
    trusts its input: files from elsewhere go through the toolkit's `load_tokenizer`, which checks them.
    """
    kinds = {cls.kind: cls for cls in Tokenizer.__subclasses__()}  # the newest class of each kind
    return kinds[data["type"]].from_dict(data)


# ----------------------------------------------------------------------------------------------
# 4. Baselines and embeddings
# ----------------------------------------------------------------------------------------------
# Before any network: the loss every model here is scored by, and what counting alone achieves
# (the baselines the transformer has to beat). A token id becomes a learned vector by looking up a
# row of an nn.Embedding table (the learned bigram, such a table and nothing else, is in section 9,
# where it tests the training loop). There are no position embeddings: RoPE, inside attention (section 6).

def cross_entropy_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean of -log p(target), F.cross_entropy written out step by step.

    logits (N, V) are unnormalised scores, one row per position; targets (N,) the tokens that came
    next. The loss is 0 when the model gave the right token probability 1, and grows without bound as
    that probability goes to 0, so it punishes confident mistakes hardest. (F.cross_entropy computes
    the same with log_softmax, which cannot take the log of a probability that rounded to 0.)
    """
    probs = F.softmax(logits.float(), dim=-1)  # (N, V): each row sums to 1
    p_next = probs[torch.arange(len(targets)), targets]  # (N,): the probability given to what came next
    return -p_next.log().mean()  # nats per token


def bigram_probs(ids: torch.Tensor, vocab_size: int, smoothing: float = 1.0) -> torch.Tensor:
    """P[a, b], the probability that token b follows token a, counted in ids: a (V, V) table.

    The best a model that sees only the previous token can do is to predict these frequencies.
    `smoothing` is added to every count (Laplace smoothing), so that a pair never seen in training
    gets a small probability rather than 0, whose log would make the loss on new text infinite.
    """
    counts = torch.full((vocab_size, vocab_size), float(smoothing))
    ones = torch.ones(len(ids) - 1)
    counts.index_put_((ids[:-1], ids[1:]), ones, accumulate=True)  # counts[a, b] += 1 for each neighbouring pair
    return counts / counts.sum(dim=1, keepdim=True)  # each row: a distribution over the next token


# ----------------------------------------------------------------------------------------------
# 5. Self-attention
# ----------------------------------------------------------------------------------------------

def attention_by_hand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, every step written out: softmax(q k^T / sqrt(d) + mask) v.

    q is (B, H, Tq, D); k and v are (B, H, Tk, D). With `causal`, query i may only look at keys up
    to its own position (the last Tq of the Tk keys are the queries' own). Returns the output
    (B, H, Tq, D) and the attention weights (B, H, Tq, Tk), which are handy for plotting.
    """
    Tq, Tk, D = q.size(-2), k.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, Tq, Tk): how well each query matches each key
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
        scores = scores.masked_fill(~allowed, float("-inf"))  # no peeking at the future
    weights = F.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, Tq, Tk), each row sums to 1
    return weights @ v, weights  # (B, H, Tq, D): a weighted average of the values


class AttentionHead(nn.Module):
    """One causal attention head with its own query, key and value projections (no positions yet).

    Each position's vector (d_model numbers) is projected three ways, to head_dim numbers each: the
    query says what the position is looking for, the key what it offers, the value what it hands
    over when chosen. Learning the three projections is learning what to attend to. The last
    attention weights are kept in `weights` (B, T, T) for plotting.
    """

    def __init__(self, d_model: int, head_dim: int):
        super().__init__()
        self.query = nn.Linear(d_model, head_dim, bias=False)
        self.key = nn.Linear(d_model, head_dim, bias=False)
        self.value = nn.Linear(d_model, head_dim, bias=False)
        self.weights: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)  # (B, T, head_dim) each
        q, k, v = q[:, None], k[:, None], v[:, None]  # (B, 1, T, head_dim): attention_by_hand wants a head axis
        out, weights = attention_by_hand(q, k, v)
        self.weights = weights[:, 0]  # (B, T, T)
        return out[:, 0]  # (B, T, head_dim)


class MultiHeadAttention(nn.Module):
    """n_head AttentionHeads side by side: their outputs concatenated, then mixed by one linear layer.

    Each head works in head_dim = d_model / n_head channels, so n_head heads cost what one wide head
    would, yet can follow n_head different relations at once (the previous character, the start of
    the word, ...). Plain and slow, one head after another; CausalSelfAttention (section 6) computes
    the same thing with one matrix product for all heads.
    """

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        assert d_model % n_head == 0, "d_model must be divisible by n_head"
        self.heads = nn.ModuleList([AttentionHead(d_model, d_model // n_head) for _ in range(n_head)])
        self.proj = nn.Linear(d_model, d_model, bias=False)  # mixes what the heads found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([head(x) for head in self.heads], dim=-1)  # (B, T, n_head * head_dim) = (B, T, d_model)
        return self.proj(y)


# ----------------------------------------------------------------------------------------------
# 6. Multi-head attention and RoPE
# ----------------------------------------------------------------------------------------------

def rope_angles(head_dim: int, positions: torch.Tensor, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles pos * theta^(-2i/head_dim), each (T, head_dim / 2).

    Pair i of a head's channels (channels i and i + head_dim/2) turns at its own frequency, from one
    turn per ~6 tokens (i = 0) to very slow ones, so that near and far offsets are both visible in
    the dot products.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, head_dim / 2): one angle per pair
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + D/2]) of x (B, H, T, D) by its angle.

    A query at position m and a key at position n are rotated by m and n, so their dot product
    depends only on m - n: attention sees relative positions, whatever the absolute ones are.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, D/2) each: the first and second members of every pair
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)  # (B, H, T, D)


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain: x / rms(x) * g.

    GPT-2's LayerNorm also subtracts the mean and adds a bias; RMSNorm drops both, is cheaper, and
    trains as well. Computed in float32 so that it is safe under fp16 autocast.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE.

    Each head compares queries with keys in its own head_dim channels. The fast path is PyTorch's
    fused `scaled_dot_product_attention`; `by_hand = True` runs `attention_by_hand` and keeps the
    weights in `self.weights` for plotting.
    """

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # queries, keys, values in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        # QK-norm (cfg.qk_norm): every head's queries and keys at unit RMS keep the attention logits bounded
        self.q_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.by_hand, self.weights = False, None  # by_hand = True keeps the attention weights for plots

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `cache` is a KVCache (section 12) during fast generation, else None."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        causal = True
        if cache is not None:
            k, v = cache.add(k, v)  # (B, H, S, D): every key and value this layer still remembers
            causal = T > 1  # a single new query may look at everything in the cache
        if self.by_hand:
            y, self.weights = attention_by_hand(q, k, v, causal=causal)
        else:  # on a CPU in float32, also under bf16 autocast: there the fused kernel is slower in bf16
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(*(t.float() if t.is_cpu else t for t in (q, k, v)), is_causal=causal)
        y = y.to(v.dtype).transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): the heads side by side again
        return self.proj(y)


# ----------------------------------------------------------------------------------------------
# 7. The transformer block
# ----------------------------------------------------------------------------------------------

class SwiGLU(nn.Module):
    """The feed-forward layer: down(silu(gate(x)) * up(x)).

    GPT-2 uses down(gelu(up(x))). The gate lets the layer switch each hidden unit on and off
    smoothly; at equal parameter count it learns faster (Shazeer, 2020), so LLaMA and most open
    models use it. `gate` and `up` are computed in one matmul.
    """

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, d_ff) each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Normalising the input of each branch (not its output, as the 2017 transformer did) leaves a
    clean residual path from the embedding to the head, which keeps deep stacks easy to train.
    """

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.d_model)
        self.mlp = SwiGLU(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), cos, sin, cache))
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x


# ----------------------------------------------------------------------------------------------
# 8. The whole model
# ----------------------------------------------------------------------------------------------

# Every named configuration, model and training settings together, in one place.
PRESETS: dict[str, dict[str, dict]] = {
    # For tests: tiny and quick.
    "tiny": {
        "model": dict(n_layer=2, n_head=2, d_model=32, d_ff=64, block_size=32),
        "train": dict(batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=10, max_steps=100, eval_interval=50,
                      eval_windows=8, log_interval=25),
    },
    # The most model that ~100 s on 2 CPU cores can train (see bench/README.md for how it was chosen).
    "cpu": {
        # Context 64 (twice the steps/s of 128), 3 wide layers, lr 2e-3, no weight decay: the winners of the
        # experiments in bench/README.md ("Training on CPU"); Muon (3 Newton-Schulz steps), QK-norm, batch 24
        # and a short warmup: the speedrun's ("Speedrun"), as is dtype auto's bf16 on a CPU with bf16
        # instructions (1.3x the steps a second there). Fewer than two passes over the text: no dropout.
        "model": dict(n_layer=3, n_head=4, d_model=128, d_ff=384, block_size=64, qk_norm=True),
        "train": dict(batch_size=24, lr=2e-3, min_lr=2e-4, warmup_steps=10, weight_decay=0.0, optimizer="muon",
                      muon_lr=0.02, muon_steps=3, max_steps=100_000, max_time=100.0, eval_interval=250,
                      eval_windows=32, log_interval=100),
    },
    # The GPU default: ~8.9M parameters with a 65-character vocabulary, context 256. It memorises
    # TinyShakespeare fast: without dropout, validation loss turns up after ~500 steps (1.51 -> 3.90 at
    # step 3000). Dropout 0.2 and 1,000 steps gave the best validation loss (bench/dropout_9m.py).
    "9m": {
        "model": dict(n_layer=6, n_head=6, d_model=384, d_ff=768, block_size=256, dropout=0.2),
        "train": dict(batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=1000, max_time=540.0,
                      eval_interval=100, eval_windows=100, log_interval=50),
    },
}


def check_preset(name: str) -> dict[str, dict]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def check_model_config(cfg: "ModelConfig") -> None:
    """Refuse a shape the network cannot take here, rather than with a puzzling error deep in a forward pass."""
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model", "d_ff"):
        value = getattr(cfg, name)
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cfg.d_model % cfg.n_head:
        raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_head ({cfg.n_head}): "
                         "each head gets d_model / n_head channels")
    if cfg.d_model // cfg.n_head % 2:
        raise ValueError(f"the head size d_model / n_head = {cfg.d_model // cfg.n_head} must be even: "
                         "RoPE rotates channels in pairs")
    if not 0 <= cfg.dropout < 1:
        raise ValueError(f"dropout must be at least 0 and below 1, got {cfg.dropout}")
    if not (math.isfinite(cfg.rope_theta) and cfg.rope_theta > 0):
        raise ValueError(f"rope_theta must be a positive number, got {cfg.rope_theta}")
    if not isinstance(cfg.qk_norm, bool):
        raise ValueError(f"qk_norm must be True or False, got {cfg.qk_norm!r}")


@dataclass
class ModelConfig:
    """The shape of the network. `from_preset` gives the named sizes; any field can be overridden."""

    vocab_size: int = 65
    block_size: int = 256  # the context: how many tokens the model sees at once
    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384
    d_ff: int = 768  # hidden width of the SwiGLU feed-forward layer
    dropout: float = 0.0
    rope_theta: float = 10000.0
    qk_norm: bool = False  # an RMSNorm on each head's queries and keys (section 6)

    def __post_init__(self) -> None:
        check_model_config(self)  # a bad shape is a clear error now, not a puzzling one in a forward pass

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, **overrides) -> "ModelConfig":
        return cls(vocab_size=vocab_size, **{**check_preset(name)["model"], **overrides})


class TinyLLM(nn.Module):
    """A decoder-only transformer: embed tokens, n_layer blocks, a final norm, and a head tied to the embedding.

    Compared with GPT-2: RoPE instead of learned positions, RMSNorm instead of LayerNorm, SwiGLU
    instead of a GELU MLP, and no biases - the recipe of LLaMA and most open models since.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # weight tying: one matrix reads tokens in and writes them out
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                # The layers that write into the residual stream start smaller, so the stream's
                # variance does not grow with depth (GPT-2's scaled init).
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # RoPE's cos and sin for positions 0 .. block_size - 1, computed once rather than every forward
        # (buffers move with .to(device); not saved in checkpoints, as nothing in them is learned).
        cos, sin = rope_angles(cfg.d_model // cfg.n_head, torch.arange(cfg.block_size), cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """All parameters, the tied embedding counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                cache: Optional[list] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits (B, T, vocab_size) for token ids idx (B, T), and the cross-entropy loss if targets are given.

        With a `cache` (one per block, section 12), idx holds only the new tokens, at the next positions.
        """
        B, T = idx.shape
        start = cache[0].seen if cache else 0
        if cache is None and T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.block_size})")
        if start + T <= self.config.block_size:
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        else:  # generation with the KV cache runs past the context: positions beyond the table
            cos, sin = rope_angles(self.config.d_model // self.config.n_head,
                                   torch.arange(start, start + T, device=idx.device), self.config.rope_theta)
        x = self.embed(idx)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache[i] if cache else None)
        logits = self.head(self.norm(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


# ----------------------------------------------------------------------------------------------
# 9. The training loop
# ----------------------------------------------------------------------------------------------

def check_train_config(config: "TrainConfig") -> None:
    """Refuse settings that would fail later with a puzzling message (a modulo by zero, a NaN loss)."""
    at_least = {"batch_size": 1, "grad_accum": 1, "max_steps": 1, "eval_interval": 1, "eval_windows": 1,
                "log_interval": 1, "warmup_steps": 0, "ckpt_interval": 0, "muon_steps": 1}
    for name, low in at_least.items():
        if not getattr(config, name) >= low:
            raise ValueError(f"{name} must be at least {low}, got {getattr(config, name)}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {config.lr}")
    if config.optimizer not in ("adamw", "muon"):
        raise ValueError(f"optimizer must be 'adamw' or 'muon', got {config.optimizer!r}")
    if not (math.isfinite(config.muon_lr) and config.muon_lr > 0):
        raise ValueError(f"muon_lr must be a positive number, got {config.muon_lr}")
    if not config.min_lr >= 0:
        raise ValueError(f"min_lr must be at least 0, got {config.min_lr}")
    if config.max_time is not None and not config.max_time > 0:
        raise ValueError(f"max_time must be a positive number of seconds, got {config.max_time}")


@dataclass
class TrainConfig:
    """How to train. Stops at max_steps or after max_time seconds, whichever comes first."""

    batch_size: int = 32
    grad_accum: int = 1  # micro-batches per optimizer step: the effective batch is batch_size * grad_accum
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    max_steps: int = 2000
    max_time: Optional[float] = None  # seconds; with it, the LR schedule follows the clock
    weight_decay: float = 0.1
    beta2: float = 0.99
    optimizer: str = "adamw"  # or "muon": Muon for the blocks' weight matrices, AdamW for the rest
    muon_lr: float = 0.02  # Muon's peak LR; its schedule is the same warmup and cosine, scaled
    muon_steps: int = 5  # Newton-Schulz steps of Muon's orthogonalize
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_windows: int = 64  # validation windows per periodic evaluation; the final one uses all
    log_interval: int = 50
    ckpt_interval: int = 0  # steps between last.pt saves (0: at evaluations and at the end)
    device: str = "auto"
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    seed: int = 1337
    out_dir: Optional[str] = None  # where last.pt and best.pt go; None saves nothing
    chars_per_token: float = 1.0  # to report bits per character for any tokenizer
    progress: bool = True
    keep_best: bool = False  # train(): end with the weights of the best evaluation (fit keeps best.pt instead)

    def __post_init__(self) -> None:
        check_train_config(self)  # settings that would fail later, refused now with a clear message

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        return cls(**{**check_preset(name)["train"], **overrides})


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the token stream: inputs x and targets y = x shifted by one, each (B, T)."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    chunk = data[starts[:, None] + torch.arange(block_size + 1)]  # (B, T + 1), contiguous
    if device.type == "cuda":  # pinned memory lets the copy run while the GPU is still busy
        chunk = chunk.pin_memory().to(device, non_blocking=True)
    else:
        chunk = chunk.to(device)
    return chunk[:, :-1], chunk[:, 1:]  # x, y: two views of the one copy


def lr_at(step: int, progress: float, config: TrainConfig) -> float:
    """Linear warmup for warmup_steps, then a cosine from lr down to min_lr as progress goes 0 -> 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_lr + cosine * (config.lr - config.min_lr)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """g with its singular vectors kept and its singular values pushed close to 1 (U V^T, for g = U S V^T).

    Newton-Schulz: x -> a x + b (x x^T) x + c (x x^T)^2 x turns each singular value s into a s + b s^3 + c s^5;
    five take every s from ~0.002 (of the norm) to 1 into 0.7 .. 1.2; three, every s above 0.01 into 0.4 .. 1.2."""
    a, b, c = 3.4445, -4.7750, 2.0315  # Keller Jordan's quintic (the Muon write-up, 2024)
    tall = g.size(0) > g.size(1)
    x = g.T if tall else g  # (m, n) with m <= n, so that x @ x.T is the smaller square
    x = x / (x.norm() + 1e-7)  # every singular value now at most 1
    for _ in range(steps):
        s = x @ x.T  # (m, m)
        x = torch.addmm(x, torch.addmm(s, s, s, beta=b, alpha=c), x, beta=a)  # a x + (b s + c s s) x, fused
    return x.T if tall else x


class MuonAdamW(torch.optim.AdamW):
    """AdamW, except for the parameter groups marked "muon", which take Muon's step (Jordan et al., 2024):
    momentum as in SGD, but a step along orthogonalize(momentum), every direction of it the same size, so
    that the rarely pushed directions learn as fast as the often pushed ones; at muon_scale times the LR.
    """

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in (g for g in self.param_groups if g.get("muon")):
            for p in (p for p in group["params"] if p.grad is not None):
                state = self.state[p]
                if not state:  # a step count too, which AdamW's loader expects of every parameter's state
                    state.update(step=torch.tensor(0.0), momentum=torch.zeros_like(p))
                state["step"] += 1
                state["momentum"].lerp_(p.grad, 1 - group["momentum"])  # a running mean of the gradients
                update = orthogonalize(p.grad.lerp(state["momentum"], group["momentum"]), group["ns_steps"])  # Nesterov: a step ahead
                lr = group["lr"] * group["muon_scale"]  # decoupled weight decay, then the step (longer if tall)
                p.mul_(1 - lr * group["weight_decay"]).add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)
                p.grad = None  # done: AdamW's step below skips a parameter without a gradient
        super().step()


def make_optimizer(model: nn.Module, config: TrainConfig) -> MuonAdamW:
    """AdamW, with weight decay on the weight matrices (the tied embedding too), none on the 1-D RMSNorm gains,
    which set scales rather than store patterns; with optimizer = "muon", Muon for the blocks' matrices."""
    decay, no_decay, muon = ({"params": [], "weight_decay": wd} for wd in (config.weight_decay, 0.0, config.weight_decay))
    muon.update(muon=True, momentum=0.95, muon_scale=config.muon_lr / config.lr, ns_steps=config.muon_steps)
    for name, p in ((n, p) for n, p in model.named_parameters() if p.requires_grad):
        is_muon = config.optimizer == "muon" and "blocks." in name and p.dim() == 2  # also under DDP or compile
        (muon if is_muon else decay if p.dim() >= 2 else no_decay)["params"].append(p)
    return MuonAdamW([g for g in (decay, no_decay, muon) if g["params"]], lr=config.lr, betas=(0.9, config.beta2))


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_precision(device: torch.device, dtype: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain float32.

    On CUDA, bf16 needs compute capability 8.0 (Ampere) or newer; older GPUs such as the T4 get fp16,
    which needs a GradScaler. `torch.cuda.is_bf16_supported()` is no guide: it says True on a T4,
    where bf16 is only emulated and slow. A CPU gets bf16 where it has bf16 instructions (AVX512-BF16,
    AMX), which multiply bf16 matrices about twice as fast as float32 ones; elsewhere (and on MPS)
    float32 unless asked otherwise.
    """
    if dtype not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else None
    if dtype == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else None
    if dtype == "auto":
        return None if major is None else torch.bfloat16 if major >= 8 else torch.float16
    if dtype == "bf16" and major is not None and major < 8:
        print(f"warning: bf16 on a GPU of compute capability {major}.x is emulated and slow: use --dtype fp16",
              file=sys.stderr)
    if dtype == "fp16" and device.type == "mps":
        raise ValueError("fp16 training on MPS needs a gradient scaler that MPS does not support in every "
                         "PyTorch release: use --dtype bf16 or fp32 there")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def autocast_for(device: torch.device, dtype: Optional[torch.dtype]):
    """Mixed precision where asked: autocast runs matmuls in bf16/fp16 and keeps the rest in float32.

    With no dtype, a null context: nothing to switch off, and nothing to trip over on devices or
    PyTorch versions where autocast has gaps.
    """
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 32,
             max_windows: Optional[int] = None, autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Mean next-token loss (nats) over non-overlapping windows of `data`, starting at its first token.

    With max_windows, an evenly spaced subset of them (cheaper, during training). Deterministic, and
    with dropout off (model.eval()) while measuring.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    T = min(block_size, len(data) - 1)
    n = (len(data) - 1) // T
    if n < 1:
        raise ValueError("validation data is too short: it needs at least 2 tokens")
    starts = torch.arange(n) * T
    if max_windows is not None and max_windows < n:
        starts = starts[torch.linspace(0, n - 1, max_windows).long()]
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        idx = starts[i:i + batch_size, None] + torch.arange(T + 1)  # (b, T + 1)
        chunk = data[idx].to(device)
        with autocast_for(device, autocast_dtype):
            _, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += loss.item() * idx.numel()
        count += idx.numel()
    model.train(was_training)
    return total / count


def bits_per_char(loss: float, chars_per_token: float = 1.0) -> float:
    """Convert a loss in nats per token to bits per character, comparable across tokenizers."""
    return loss / math.log(2) / chars_per_token


def forward_backward(model: nn.Module, scaler: torch.amp.GradScaler, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     amp_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Forward and backward over one or more micro-batches (x, y); returns their mean loss.

    Several micro-batches are gradient accumulation: each backward adds to .grad, as one big batch
    would. With fp16 the scaler multiplies the loss first, so that small gradients do not round to 0.
    """
    losses = []
    for x, y in batches:
        with autocast_for(x.device, amp_dtype):
            _, loss = model(x, y)
        scaler.scale(loss / len(batches)).backward()
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, lr: float,
                   grad_clip: float = 1.0) -> None:
    """Clip the gradients, update the weights at learning rate lr, and clear the gradients."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    scaler.unscale_(optimizer)  # so that clipping sees the true gradients
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)  # one bad batch cannot wreck the weights
    scaler.step(optimizer)  # with fp16, skipped if a gradient overflowed (the scaler then lowers its scale)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batches: Sequence[tuple[torch.Tensor, torch.Tensor]], lr: float,
               amp_dtype: Optional[torch.dtype] = None, grad_clip: float = 1.0) -> float:
    """One training step: gradients of the loss, a check, then the update. Returns the loss."""
    loss = forward_backward(model, scaler, batches, amp_dtype).item()
    if not math.isfinite(loss):  # stop before a NaN or an infinity can reach the weights
        raise FloatingPointError(f"the loss became {loss}")
    optimizer_step(model, optimizer, scaler, lr, grad_clip)
    return loss


@dataclass
class TrainState:
    """Where a run stands. With the weights, the optimizer and the RNGs, enough to carry on exactly."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training so far
    best_val: float = math.inf
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    recent_losses: list[float] = field(default_factory=list)  # training losses since the last evaluation

    def progress(self, config: TrainConfig) -> float:
        """How far through the budget, 0 -> 1: steps or seconds, whichever is further along."""
        return max(self.step / config.max_steps, self.elapsed / config.max_time if config.max_time else 0.0)

    def finished(self, config: TrainConfig) -> bool:
        return self.step >= config.max_steps or bool(config.max_time and self.elapsed >= config.max_time)


def record_evaluation(state: TrainState, config: TrainConfig, val_loss: float, lr: float, block_size: int,
                      world: int = 1) -> dict:
    """Add a row to the history: the mean training loss since the last row, val_loss, lr, time, tokens seen."""
    train_loss = sum(state.recent_losses) / max(len(state.recent_losses), 1)
    row = {"step": state.step, "tokens": state.step * config.batch_size * config.grad_accum * block_size * world,
           "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "seconds": round(state.elapsed, 2),
           "train_bpc": bits_per_char(train_loss, config.chars_per_token),
           "val_bpc": bits_per_char(val_loss, config.chars_per_token)}
    state.history.append(row)
    state.recent_losses = []
    state.best_val = min(state.best_val, val_loss)
    return row


def log_line(row: dict) -> str:
    """One printed line per evaluation (a row) or per log_interval (a row without val_loss)."""
    val = f" | val {row['val_loss']:.4f} ({row['val_bpc']:.3f} bits/char)" if "val_loss" in row else ""
    return f"step {row['step']:>6} | train {row['train_loss']:.4f}{val} | lr {row['lr']:.2e} | {row['seconds']:6.1f}s"


def train(model: TinyLLM, train_ids: Sequence[int] | torch.Tensor, val_ids: Sequence[int] | torch.Tensor,
          config: TrainConfig) -> list[dict]:
    """Train `model` in place; return the history, one row (a dict) per evaluation.

    Stops after max_steps or max_time seconds, or when interrupted (Ctrl-C, a notebook's stop button),
    keeping what it learned. With keep_best, it ends with the weights of its best evaluation. The
    toolkit's `fit` is the same steps plus checkpoints, resume and several GPUs.
    """
    device, cfg = pick_device(config.device), model.config
    amp_dtype = choose_precision(device, config.dtype)
    train_data, val_data = torch.as_tensor(train_ids, dtype=torch.long), torch.as_tensor(val_ids, dtype=torch.long)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    state, t0, best_weights = TrainState(), time.perf_counter(), None
    try:
        while not state.finished(config):
            lr = lr_at(state.step, state.progress(config), config)
            batches = [get_batch(train_data, config.batch_size, cfg.block_size, generator, device)
                       for _ in range(config.grad_accum)]
            loss = train_step(model, optimizer, scaler, batches, lr, amp_dtype, config.grad_clip)
            state.step, state.elapsed = state.step + 1, time.perf_counter() - t0
            state.recent_losses.append(loss)
            done = state.finished(config)
            if state.step % config.eval_interval == 0 or done:  # the last evaluation uses the whole split
                val_loss = evaluate(model, val_data, cfg.block_size, 64, None if done else config.eval_windows, amp_dtype)
                row = record_evaluation(state, config, val_loss, lr, cfg.block_size)
                if config.progress:
                    print(log_line(row))
                if config.keep_best and val_loss <= state.best_val:  # a copy of the best weights so far
                    best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif config.progress and state.step % config.log_interval == 0:
                print(log_line({"step": state.step, "train_loss": loss, "lr": lr, "seconds": state.elapsed}))
    except KeyboardInterrupt:  # keep what was learned, and a history row for where it stopped
        print(f"interrupted at step {state.step}: training stopped; the history so far is kept")
        if state.step and (not state.history or state.history[-1]["step"] != state.step):
            val_loss = evaluate(model, val_data, cfg.block_size, 64, config.eval_windows, amp_dtype)
            record_evaluation(state, config, val_loss, lr, cfg.block_size)
    if best_weights is not None and state.history and state.history[-1]["val_loss"] > state.best_val:
        model.load_state_dict(best_weights)  # early stopping: the last steps made validation worse
        print(f"kept the weights of the best evaluation (val {state.best_val:.4f}), not the last ones")
    return state.history


# A model whose best loss we know, to test the loop with: the learned bigram.
class BigramLM(nn.Module):
    """The simplest neural language model: the logits for the next token are a learned row per token.

    A (vocab_size, vocab_size) embedding table is the whole model. It sees one token of context, so
    at best it learns the counted bigram table (bigram_probs), but it has TinyLLM's interface (token
    ids in, logits and loss out), so the same training, evaluation and sampling code runs it.
    The table starts at zero: every token equally likely, exactly the uniform baseline (section 4).
    """

    def __init__(self, cfg: "ModelConfig"):
        super().__init__()
        self.config = cfg  # only vocab_size and block_size are used
        self.logits = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.zeros_(self.logits.weight)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        logits = self.logits(idx)  # (B, T, V): row idx[b, t] of the table
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())  # (B*T, V) against (B*T,)
        return logits, loss


# ----------------------------------------------------------------------------------------------
# 10. Training it
# ----------------------------------------------------------------------------------------------

def prepare_data(text: str, tokenizer: Tokenizer) -> tuple[list[int], list[int], float]:
    """Split a corpus and encode both parts; also returns the validation split's characters per token.

    Characters per token turn a loss per token into bits per character, the unit in which a char
    model and a BPE model can be compared fairly.
    """
    train_text, val_text = split_train_val(text)
    val_ids = tokenizer.encode(val_text)
    return tokenizer.encode(train_text), val_ids, len(val_text) / max(len(val_ids), 1)


# ----------------------------------------------------------------------------------------------
# 11. Sampling
# ----------------------------------------------------------------------------------------------

def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    """Refuse sampling settings that mean nothing, with a message that says what is allowed."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token from logits (B, V); returns (B, 1).

    temperature 0 is greedy (argmax); otherwise logits / temperature become probabilities, cut to the
    top_k most likely tokens and/or the smallest set whose probability reaches top_p, and sampled from.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - F.softmax(sorted_logits, dim=-1) >= top_p  # keep tokens until top_p is reached
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_simple(model: TinyLLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None,
                    seed: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Yield new tokens (B, 1) one at a time, continuing idx (B, T): the plain way.

    Every step runs the model over the last block_size tokens, though only the last position is new.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()  # no dropout while generating
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    idx = idx.to(device)
    try:
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.block_size:])  # (B, T, vocab_size)
            token = sample_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, token], dim=1)[:, -model.config.block_size:]  # the window slides
            yield token
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------------------------
# 12. The KV cache
# ----------------------------------------------------------------------------------------------

class KVCache:
    """The keys and values one attention layer has computed so far, so each new token costs one step.

    block_size slots; once full, a new token overwrites the oldest (a ring buffer). With RoPE nothing
    needs recomputing: keys keep their rotations, and scores depend only on distances. The order of
    the slots does not matter, since a single query attends to all of them at once.
    """

    def __init__(self, batch_size: int, n_head: int, size: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        self.k = torch.zeros(batch_size, n_head, size, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.seen = 0  # tokens added so far (their positions are 0 .. seen - 1)

    def add(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys and values (B, H, T, D); return everything remembered, (B, H, S, D)."""
        T, size = k.size(2), self.k.size(2)
        if T > 1 and (self.seen > 0 or T > size):
            raise ValueError("a KVCache takes a prompt of at most block_size tokens first, then one token at a time")
        slot = self.seen % size
        self.k[:, :, slot:slot + T] = k
        self.v[:, :, slot:slot + T] = v
        self.seen += T
        n = min(self.seen, size)
        return self.k[:, :, :n], self.v[:, :, :n]


def new_cache(model: TinyLLM, batch_size: int) -> list[KVCache]:
    """An empty KV cache for generation: one per block, each with room for block_size tokens."""
    p, cfg = model.embed.weight, model.config
    return [KVCache(batch_size, cfg.n_head, cfg.block_size, cfg.d_model // cfg.n_head, p.device, p.dtype)
            for _ in model.blocks]


@torch.no_grad()
def generate_tokens(model: TinyLLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                    use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield new tokens (B, 1) one at a time, continuing idx (B, T): the fast way, with a KV cache.

    The prompt runs once; each later step feeds only the newest token. use_cache=False is generate_simple.
    """
    if not use_cache:
        yield from generate_simple(model, idx, max_new_tokens, temperature, top_k, top_p, seed)
        return
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    idx = idx.to(device)[:, -model.config.block_size:]  # the prompt, all at once
    cache = new_cache(model, idx.size(0))
    try:
        for _ in range(max_new_tokens):
            logits, _ = model(idx, cache=cache)
            idx = sample_token(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1): next input
            yield idx
    finally:
        model.train(was_training)


def generate(model: TinyLLM, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
             stop_token: Optional[int] = None, use_cache: bool = True,
             on_token: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Continue the token ids idx (B, T) by up to max_new_tokens; returns (B, T + n).

    `on_token` gets each new token of the first row (streaming); all rows at `stop_token` stops it.
    """
    out = [idx]
    for token in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache):
        out.append(token.to(idx.device))
        if on_token is not None:
            on_token(int(token[0, 0]))
        if stop_token is not None and bool((token == stop_token).all()):
            break
    return torch.cat(out, dim=1)


def complete(model: TinyLLM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 500,
             temperature: float = 0.8, top_k: Optional[int] = None, top_p: Optional[float] = None,
             seed: Optional[int] = None, stop: Optional[str] = None, use_cache: bool = True,
             on_text: Optional[Callable[[str], None]] = None) -> str:
    """Continue a text prompt; returns the new text. `on_text` receives it piece by piece (streaming).

    Generation ends after max_new_tokens or just before the first occurrence of `stop`. Text is
    held back while it might be the start of `stop`, or while it ends in an incomplete UTF-8
    character (a byte-level BPE token can be half of one).
    """
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        raise ValueError("the prompt is empty after tokenization: give at least one character")
    device = next(model.parameters()).device
    new: list[int] = []
    shown = ""
    for token in generate_tokens(model, torch.tensor([ids], device=device), max_new_tokens,
                                 temperature, top_k, top_p, seed, use_cache):
        new.append(int(token[0, 0]))
        text = tokenizer.decode(new)
        if stop and stop in text:
            text = text[:text.index(stop)]
            if on_text and text[len(shown):]:
                on_text(text[len(shown):])
            return text
        ready = len(text.rstrip("\ufffd"))
        if stop:  # keep back a tail that could still grow into `stop`
            for k in range(min(len(stop) - 1, ready), 0, -1):
                if stop.startswith(text[ready - k:ready]):
                    ready -= k
                    break
        if on_text and ready > len(shown):
            on_text(text[len(shown):ready])
            shown = text[:ready]
    text = tokenizer.decode(new)
    if on_text and text[len(shown):]:
        on_text(text[len(shown):])
    return text


# ----------------------------------------------------------------------------------------------
# 13. Saving and loading
# ----------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "tinyllm-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_dict(model: TinyLLM, tokenizer: Optional[Tokenizer] = None, **extra) -> dict:
    """Everything needed to rebuild the model, as tensors and plain Python data (no pickled objects).

    The weights (the state dict), the config that says how to build the model that holds them, and
    the tokenizer that says what the ids mean; `extra` can add training state (steps, history, ...).
    """
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_config": asdict(model.config),
            "model": model.state_dict(), "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
            **extra}


def save_model(path: str | Path, model: TinyLLM, tokenizer: Optional[Tokenizer] = None) -> None:
    """Save a model and its tokenizer to one file; `load_model` (or `tinyllm.py sample --ckpt`) reads it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint_dict(model, tokenizer), path)


def model_from_checkpoint(data: dict, device: str | torch.device = "cpu") -> TinyLLM:
    """Build the model a checkpoint dict describes and put its weights in."""
    model = TinyLLM(ModelConfig(**data["model_config"]))
    model.load_state_dict(data["model"])
    return model.to(device)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TinyLLM, Optional[Tokenizer]]:
    """Load what save_model wrote: the model (on `device`) and its tokenizer.

    weights_only=True makes torch.load refuse anything but tensors and plain data. A checkpoint is a
    pickle, and unpickling an untrusted pickle can run any code it likes; this way, it cannot.
    """
    data = torch.load(path, map_location=device, weights_only=True)
    tokenizer = tokenizer_of(data["tokenizer"]) if data.get("tokenizer") else None
    return model_from_checkpoint(data, device), tokenizer


# ----------------------------------------------------------------------------------------------
# 14. From text to conversation
# ----------------------------------------------------------------------------------------------

# Who speaks, and where a turn ends: three special tokens, given by id, never spelled by text.
CHAT_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
# Every character a conversation may hold: printable ASCII and the newline. "<", "|" and ">" are
# among them, so a user who types "<|end|>" gets seven ordinary characters, not the token.
CHAT_CHARS = "\n" + "".join(chr(i) for i in range(32, 127))

# The persona: Tilly, a tortoise who lives in a garden and is good at sums. Small talk is (what a
# user may say, what Tilly answers); {name} is filled in by the generator.
SMALL_TALK = [
    (["hello", "hi", "hi Tilly", "hello there!", "good morning"],
     ["hello! I am Tilly, a tortoise.", "hi! nice to see you."]),
    (["how are you?", "how are you today?", "are you well?"],
     ["I am well. the sun is warm on my shell.", "slow and happy, thanks."]),
    (["what is your name?", "who are you?"], ["I am Tilly, a small tortoise.", "my name is Tilly."]),
    (["what do you eat?", "what is your favourite food?"], ["dandelions, every day.", "I love dandelions."]),
    (["where do you live?", "where is your home?"], ["in a garden, under the rhubarb.", "under the rhubarb."]),
    (["my name is {name}.", "I am {name}.", "call me {name}."], ["nice to meet you, {name}!", "hello, {name}!"]),
    (["are you fast?", "can you run?"], ["no, I am very slow.", "slow, but I get there."]),
    (["tell me a joke", "say something funny"], ["why so slow? I am a tortoise!", "I lost a race to a snail."]),
    (["thank you!", "thanks", "thanks Tilly"], ["you are welcome!", "any time."]),
    (["bye", "goodbye!", "see you later"], ["goodbye! come back soon.", "bye! I will be here."]),
]
NAMES = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Max", "Nia", "Omar",
         "Pia", "Raj", "Sam", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe"]
# The skill with one checkable answer: adding two numbers from 0 to 99. The reply restates the
# question, then gives the sum: one right reply per question, so a reply is checked by exact match.
SUM_QUESTIONS = ["what is {a} plus {b}?", "what is {a} + {b}?", "{a} + {b} = ?", "can you add {a} and {b}?",
                 "add {a} and {b}, please."]
SUM_REPLY = "{a} plus {b} is {s}."
MAX_NUMBER = 99


def is_held_out(a: int, b: int) -> bool:
    """Whether the pair {a, b} (in either order) is kept out of training: a fixed tenth of all pairs.

    The split is by combination of values, decided by a hash, not by a seed: a model that answers a
    held-out pair has learned to add, not remembered the pair (or its mirror image).
    """
    low, high = sorted((a, b))
    return int(sha256_of(f"{low}+{high}".encode())[:8], 16) % 10 == 0


def sum_exchange(rng: random.Random, a: int, b: int) -> tuple[str, str]:
    """A question about a + b, in one of several phrasings, and Tilly's one right answer."""
    return rng.choice(SUM_QUESTIONS).format(a=a, b=b), SUM_REPLY.format(a=a, b=b, s=a + b)


def lint_conversation(messages: list[dict], chars: str = CHAT_CHARS) -> None:
    """Refuse a generated conversation that would teach the model garbage, before it reaches the data.

    An unfilled placeholder ("{name}": a forgotten f-prefix or format call) would be learned and
    repeated; a character the tokenizer lacks would fail later, far from its cause.
    """
    for m in messages:
        text = m["content"]
        if m["role"] not in ("user", "assistant") or not text.strip():
            raise ValueError(f"bad message {m!r}: the role must be user or assistant, the content non-empty")
        placeholder = re.search(r"\{[^{}]*\}", text)
        if placeholder:
            raise ValueError(f"unfilled placeholder {placeholder.group()!r} in {text!r}")
        foreign = sorted(set(text) - set(chars))
        if foreign:
            raise ValueError(f"character(s) {''.join(foreign)!r} outside the tokenizer's in {text!r}")
        if any(token in text for token in CHAT_TOKENS):
            raise ValueError(f"a chat token spelled out in {text!r}")


def make_conversations(n: int, seed: int, held_out: bool = False, max_number: int = MAX_NUMBER,
                       sums: float = 0.75) -> list[list[dict]]:
    """n conversations of 1-3 exchanges, a share `sums` of them sums, the rest small talk; the same for the same seed.

    Sums use only pairs outside the held-out set (or, with held_out=True, only pairs inside it).
    Each conversation is a list of {"role": "user" | "assistant", "content": text}, linted.
    """
    rng = random.Random(seed)
    conversations = []
    for _ in range(n):
        messages = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < sums:
                a, b = rng.randint(0, max_number), rng.randint(0, max_number)
                while is_held_out(a, b) != held_out:
                    a, b = rng.randint(0, max_number), rng.randint(0, max_number)
                question, answer = sum_exchange(rng, a, b)
            else:
                users, replies = rng.choice(SMALL_TALK)
                name = rng.choice(NAMES)
                question, answer = rng.choice(users).format(name=name), rng.choice(replies).format(name=name)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lint_conversation(messages)
        conversations.append(messages)
    return conversations


def held_out_sums(n: int = 200, max_number: int = MAX_NUMBER, seed: int = 0) -> list[tuple[str, str]]:
    """(question, expected reply) for n pairs of the held-out set: the exam, never seen in training."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_number + 1) for b in range(a, max_number + 1) if is_held_out(a, b)]
    rng.shuffle(pairs)
    return [sum_exchange(rng, *(pair if rng.random() < 0.5 else pair[::-1])) for pair in pairs[:n]]


def chat_tokenizer(base: Optional[Tokenizer] = None) -> Tokenizer:
    """The tokenizer for conversations: `base` (or none) plus CHAT_CHARS and the three chat tokens.

    A character tokenizer gains the characters it lacks (Shakespeare has no digits but "3", and no
    "<", "|", ">"); a byte-level BPE can already spell anything. Every old token keeps its meaning,
    so a model trained with `base` can keep its knowledge (grow_vocab moves its rows along).
    """
    if base is None:
        return CharTokenizer(CHAT_CHARS, CHAT_TOKENS)
    specials = list(base.special_tokens) + [t for t in CHAT_TOKENS if t not in base.special_tokens]
    if base.kind == "char":
        return CharTokenizer(base.chars + CHAT_CHARS, specials)
    if base.kind == "bpe":  # a BPETokenizer (section 3.2): the same merges, the chat tokens after them
        first = 256 + len(base.merges)
        return type(base)(base.merges, {s: first + i for i, s in enumerate(specials)}, base.pattern)
    raise ValueError(f"cannot add chat tokens to a {type(base).__name__}")


def chat_token_ids(tokenizer: Tokenizer) -> tuple[int, int, int]:
    """The ids of <|user|>, <|assistant|> and <|end|>; a clear error for a tokenizer without them."""
    specials = getattr(tokenizer, "special_tokens", {})
    if not all(t in specials for t in CHAT_TOKENS):
        raise ValueError("this is a text model, not a chat model: its tokenizer has no <|user|>, <|assistant|> and "
                         "<|end|> tokens (fine-tune it first: python tinyllm.py chat-train --init CKPT)")
    return specials["<|user|>"], specials["<|assistant|>"], specials["<|end|>"]


def encode_chat(tokenizer: Tokenizer, messages: list[dict], reply_next: bool = False) -> tuple[list[int], list[int]]:
    """The token ids of a conversation, and its loss mask (1: a token the model is trained to say).

    Each message is its speaker's token (added by id), its text (through encode_ordinary, so typed
    text never becomes a special token), then <|end|>. The mask covers the assistant's text AND its
    <|end|>: that is how the model learns to stop. With reply_next, the ids end with <|assistant|>.
    """
    user, assistant, end = chat_token_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} is {m!r}: expected {{'role': 'user' or 'assistant', 'content': text}}")
        if m["role"] == "user" and not m["content"].strip():
            raise ValueError(f"message {i} is empty: a user message needs some text")
        text = tokenizer.encode_ordinary(m["content"])
        said = int(m["role"] == "assistant")
        ids += [assistant if said else user, *text, end]
        mask += [0] + [said] * (len(text) + 1)
    if reply_next:
        ids, mask = ids + [assistant], mask + [0]
    return ids, mask


@torch.no_grad()
def grow_vocab(model: TinyLLM, old: Tokenizer, new: Tokenizer, seed: int = 0) -> TinyLLM:
    """A copy of `model` for the larger vocabulary of `new`: every old token's row moves to its new id.

    Rows are matched by token, not position (a character's id can change: "0" sorts before "A"). New
    rows start at the mean of the old ones plus a little noise; the tied head grows with them.
    """
    if old.kind == new.kind == "char":
        pairs = [(i, new.stoi.get(c)) for c, i in old.stoi.items()]
    elif old.kind == new.kind == "bpe" and old.merges == new.merges:
        pairs = [(i, i) for i in range(256 + len(old.merges))]
    else:
        raise ValueError("the new tokenizer must be the old one with tokens added (use chat_tokenizer)")
    pairs += [(i, new.special_tokens.get(s)) for s, i in old.special_tokens.items()]
    if any(j is None for _, j in pairs) or model.config.vocab_size != old.vocab_size:
        raise ValueError("the model and the old tokenizer do not match, or the new tokenizer lacks old tokens")
    rows = model.embed.weight  # (old vocab, d_model)
    noise = torch.randn(new.vocab_size, rows.size(1), generator=torch.Generator().manual_seed(seed))
    grown_rows = rows.mean(0) + 0.02 * noise.to(rows.device, rows.dtype)  # (new vocab, d_model)
    grown_rows[[j for _, j in pairs]] = rows[[i for i, _ in pairs]]
    grown = TinyLLM(ModelConfig(**{**asdict(model.config), "vocab_size": new.vocab_size})).to(rows.device)
    state = {**model.state_dict(), "embed.weight": grown_rows, "head.weight": grown_rows}
    grown.load_state_dict(state)
    return grown


@dataclass
class ChatData:
    """Conversations as one token stream: the ids, the loss mask, and where training windows may start."""

    ids: torch.Tensor  # (N,) token ids, conversation after conversation
    mask: torch.Tensor  # (N,) True where the token is one the assistant says
    starts: torch.Tensor  # (S,) positions of <|user|> tokens whose whole exchange fits in a window


def chat_data(tokenizer: Tokenizer, conversations: list[list[dict]], block_size: int) -> ChatData:
    """Encode conversations into one stream, and find the user turns a window can start at.

    A window starts at a user turn whose reply (with its <|end|>) ends inside it: no answer without its question.
    """
    ids: list[int] = []
    mask: list[int] = []
    for messages in conversations:
        i, m = encode_chat(tokenizer, messages)
        ids += i
        mask += m
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
    user, _, end = chat_token_ids(tokenizer)
    turns = (ids_t == user).nonzero().flatten()  # where each user turn starts
    ends = (ids_t == end).nonzero().flatten()  # every <|end|>: the user's, then the assistant's
    reply_ends = ends[(torch.searchsorted(ends, turns) + 1).clamp(max=len(ends) - 1)]
    fits = (reply_ends > turns) & (reply_ends - turns <= block_size) & (turns + block_size < len(ids))
    if not fits.any():
        raise ValueError(f"no exchange of these conversations fits in the model's context of {block_size} tokens")
    return ChatData(ids_t, mask_t, turns[fits])


def chat_windows(data: ChatData, starts: torch.Tensor, block_size: int,
                 masked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and targets y (B, T) for windows at `starts`; with `masked`, targets outside the mask are -100.

    -100 is cross_entropy's ignore_index: those positions add nothing to the loss, and nothing changes.
    """
    idx = starts[:, None] + torch.arange(block_size + 1)  # (B, T + 1)
    chunk, said = data.ids[idx], data.mask[idx]
    targets = chunk[:, 1:].masked_fill(~said[:, 1:], -100) if masked else chunk[:, 1:]
    return chunk[:, :-1], targets


def chat_batch(data: ChatData, batch_size: int, block_size: int, generator: torch.Generator,
               device: torch.device, masked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of windows that start at user turns: get_batch (section 9) for conversations."""
    starts = data.starts[torch.randint(len(data.starts), (batch_size,), generator=generator)]
    x, y = chat_windows(data, starts, block_size, masked)
    return x.to(device), y.to(device)


@torch.no_grad()
def assistant_loss(model: TinyLLM, data: ChatData, windows: int = 64) -> float:
    """The mean loss on the assistant's tokens only, over `windows` evenly spaced windows (deterministic)."""
    was_training = model.training
    model.eval()
    starts = data.starts[torch.linspace(0, len(data.starts) - 1, min(windows, len(data.starts))).long()]
    x, y = chat_windows(data, starts, model.config.block_size)
    _, loss = model(x.to(model.embed.weight.device), y.to(model.embed.weight.device))
    model.train(was_training)
    return loss.item()


@torch.no_grad()
def chat_eval(model: TinyLLM, tokenizer: Tokenizer, questions: Sequence[tuple[str, str]], budget: int = 32) -> dict:
    """Greedy replies to one-turn questions: the share exactly right, and the share that ended with <|end|>.

    Right means: <|end|> within `budget` tokens, and exactly the expected text. Same-length prompts run as one batch.
    """
    end = chat_token_ids(tokenizer)[2]
    device = model.embed.weight.device
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": q}], reply_next=True)[0] for q, _ in questions]
    right = stopped = 0
    for length in sorted({len(p) for p in prompts}):
        group = [i for i, p in enumerate(prompts) if len(p) == length]
        idx = torch.tensor([prompts[i] for i in group], device=device)  # (b, length): no padding needed
        for i, new in zip(group, generate(model, idx, budget, temperature=0)[:, length:].tolist()):
            if end in new:
                stopped += 1
                right += tokenizer.decode(new[:new.index(end)]) == questions[i][1]
    n = max(len(questions), 1)
    return {"accuracy": right / n, "stop_rate": stopped / n, "n": len(questions)}


def finetune(model: TinyLLM, data: ChatData, config: TrainConfig, masked: bool = True,
             on_eval: Optional[Callable[[TinyLLM], dict]] = None) -> list[dict]:
    """Fine-tune on conversations: section 9's loop with the same train_step; only the batches are new.

    Every eval_interval steps, and at the end, a history row: step, seconds, training loss, and `on_eval(model)`.
    """
    device = pick_device(config.device)
    amp_dtype = choose_precision(device, config.dtype)
    model.to(device).train()
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(config.seed)
    state, t0 = TrainState(), time.perf_counter()
    while not state.finished(config):
        lr = lr_at(state.step, state.progress(config), config)
        batches = [chat_batch(data, config.batch_size, model.config.block_size, generator, device, masked)
                   for _ in range(config.grad_accum)]
        state.recent_losses.append(train_step(model, optimizer, scaler, batches, lr, amp_dtype, config.grad_clip))
        state.step, state.elapsed = state.step + 1, time.perf_counter() - t0
        if state.step % config.eval_interval == 0 or state.finished(config):
            row = {"step": state.step, "seconds": round(state.elapsed, 1),
                   "train_loss": sum(state.recent_losses) / len(state.recent_losses)}
            row.update(on_eval(model) if on_eval else {})
            state.history.append(row)
            state.recent_losses = []
            if config.progress:
                print(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return state.history


def fit_context(tokenizer: Tokenizer, messages: list[dict], block_size: int, reserve: int) -> list[int]:
    """The prompt for the next reply: the newest turns that fit in the context, each one whole.

    `reserve` tokens are kept free for the reply; the kept part starts with a user turn, as every
    training window did. A turn too long on its own is an error: cut, it would be a new question.
    """
    turns = [encode_chat(tokenizer, [m])[0] for m in messages]
    room = block_size - reserve - 1  # 1: the <|assistant|> token that opens the reply
    if len(turns[-1]) > room:
        raise ValueError(f"the message is {len(turns[-1]) - 2} tokens long, but this model's context of {block_size} "
                         f"tokens has room for {room - 2} (the rest is kept for the reply): write a shorter one")
    first, used = len(turns), 0
    while first > 0 and used + len(turns[first - 1]) <= room:
        first, used = first - 1, used + len(turns[first - 1])
    while messages[first]["role"] != "user":
        first += 1
    return [i for turn in turns[first:] for i in turn] + [chat_token_ids(tokenizer)[1]]


def chat(model: TinyLLM, tokenizer: Tokenizer, messages: list[dict], max_new_tokens: int = 64,
         temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
         seed: Optional[int] = None, on_text: Optional[Callable[[str], None]] = None,
         reserve: Optional[int] = None) -> str:
    """The assistant's reply to `messages` (dicts with "role" and "content", the last one the user's).

    Greedy by default; it ends at a chat token or after max_new_tokens, and `on_text` gets it piece by
    piece. Older turns are dropped to fit the context, keeping `reserve` tokens (a quarter) for it.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("the conversation must end with a user message")
    block_size = model.config.block_size
    prompt = fit_context(tokenizer, messages, block_size, block_size // 4 if reserve is None else reserve)
    stops, new, shown = set(chat_token_ids(tokenizer)), [], ""
    idx = torch.tensor([prompt], device=model.embed.weight.device)
    for token in generate_tokens(model, idx, max_new_tokens, temperature, top_k, top_p, seed):
        if int(token[0, 0]) in stops:
            break
        new.append(int(token[0, 0]))
        text = tokenizer.decode(new)
        ready = len(text.rstrip("\ufffd"))  # hold back half a UTF-8 character (byte-level BPE)
        if on_text and ready > len(shown):
            on_text(text[len(shown):ready])
            shown = text[:ready]
    text = tokenizer.decode(new)
    if on_text and len(text) > len(shown):
        on_text(text[len(shown):])
    return text


# ==============================================================================================
# Footer (module only): the toolkit and the command line
# ==============================================================================================
# Everything above is the chapter. What real runs need on top of it (crash-safe checkpoints, exact
# resume, Ctrl-C, several GPUs, the command line, export) lives in the package tinyllm_toolkit/,
# built from these definitions. Its public names are reachable from here too (tl.fit,
# tl.load_checkpoint, tl.export_hf, ...), imported the first time one is asked for.
TOOLKIT_MODULES = ("files", "runs", "export_hf", "export_onnx", "cli")


def __getattr__(name: str):
    import importlib

    for module in TOOLKIT_MODULES if not name.startswith("_") else ():  # not __path__, __spec__, ...
        found = getattr(importlib.import_module(f"tinyllm_toolkit.{module}"), name, None)
        if found is not None:
            return found
    raise AttributeError(f"module 'tinyllm' has no attribute {name!r}")


if __name__ == "__main__":
    from tinyllm_toolkit.cli import main

    sys.exit(main())
