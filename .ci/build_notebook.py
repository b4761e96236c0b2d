#!/usr/bin/env python3
"""Build tiny_llm.ipynb, the course chapter, from tinyllm.py and the chapter text in this file.

The notebook must define every function and class itself (Colab opens only the .ipynb), and each
definition must stay identical to the one in tinyllm.py. So the notebook is never edited by hand:
this script holds the prose (markdown cells) and the cell layout, and copies each definition's
source text out of the *current* tinyllm.py by name (using the line ranges `ast` reports).

    python .ci/build_notebook.py            # rebuild tiny_llm.ipynb (cells only, no outputs)
    python .ci/build_notebook.py --execute  # rebuild and run it top to bottom (cwd = repo root),
                                            # keeping the outputs of that one clean run
    python .ci/build_notebook.py --check    # exit 1 if tiny_llm.ipynb is not what this would build

Re-run it with --execute whenever tinyllm.py changes. A definition that tinyllm.py gains and the
layout below does not mention is still copied in (at the end of its section, with a warning), so
the notebook stays complete; give it prose here when you can. The names that stay out of the
notebook are MODULE_ONLY in tests/test_notebook.py, read from there so the list lives in one place.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_PATH = ROOT / "tinyllm.py"
NOTEBOOK_PATH = ROOT / "tiny_llm.ipynb"
TEST_PATH = ROOT / "tests" / "test_notebook.py"
MAX_BYTES = 2_000_000

# Where the "Open in Colab" badge points. PLACEHOLDER: replace tinyllm/tinyllm with the real owner/repo.
GITHUB_REPO = "tinyllm/tinyllm"
COLAB_URL = f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/tiny_llm.ipynb"

# The module's DATA_DIR is the folder next to tinyllm.py; the notebook caches data next to itself.
NOTEBOOK_DATA_DIR = '''\
# Where the dataset is cached: a data/ folder next to this notebook (tinyllm.py uses the data/
# folder next to itself). TINYLLM_DATA_DIR in the environment overrides both.
DATA_DIR = Path("data")'''


# ------------------------------------------------------------------------------------------------
# Reading tinyllm.py
# ------------------------------------------------------------------------------------------------

@dataclass
class Definition:
    name: str
    kind: str  # "def", "class" or "const"
    start: int  # first line (1-based), comments just above it included
    end: int  # last line
    section: int  # number of the "# N. Title" section it sits in (0: before section 1)


class Module:
    """tinyllm.py taken apart: its imports, numbered sections and top-level definitions."""

    def __init__(self, path: Path):
        self.source = path.read_text(encoding="utf-8")
        self.lines = self.source.splitlines()
        tree = ast.parse(self.source)
        self.sections: dict[int, tuple[str, int]] = {}  # number -> (title, line)
        for i, line in enumerate(self.lines, 1):
            m = re.fullmatch(r"# (\d+)\. (.+)", line)
            if m and i > 1 and self.lines[i - 2].startswith("# ---"):
                self.sections[int(m.group(1))] = (m.group(2).strip(), i)
        self.imports: list[str] = []
        self.defs: dict[str, Definition] = {}
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.imports.append(self.text(node.lineno, node.end_lineno))
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names, kind = [node.name], "class" if isinstance(node, ast.ClassDef) else "def"
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
                names, kind, start = [t.id for t in node.targets], "const", node.lineno
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names, kind, start = [node.target.id], "const", node.lineno
            else:
                continue  # the docstring, `if __name__ == "__main__":`
            while start > 1 and self.lines[start - 2].startswith("#") and not self.lines[start - 2].startswith("# ---"):
                start -= 1  # take the comment lines right above the definition along
            section = max([n for n, (_, line) in self.sections.items() if line < start], default=0)
            for name in names:
                self.defs[name] = Definition(name, kind, start, node.end_lineno, section)

    def text(self, start: int, end: int) -> str:
        return "\n".join(self.lines[start - 1:end])

    def source_of(self, name: str) -> str:
        if name not in self.defs:
            raise SystemExit(f"build_notebook: tinyllm.py has no top-level definition named {name!r}; "
                             f"update CHAPTER in {Path(__file__).name}")
        d = self.defs[name]
        return self.text(d.start, d.end)

    def module_only_sections(self) -> set[int]:
        return {n for n, (title, _) in self.sections.items() if "module only" in title.lower()}


def read_module_only(path: Path = TEST_PATH) -> set[str]:
    """The MODULE_ONLY set of tests/test_notebook.py: tinyllm.py names the notebook leaves out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODULE_ONLY" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") in ("set", "frozenset"):
                value = value.args[0] if value.args else ast.Set(elts=[])
            return set(ast.literal_eval(value))
    raise SystemExit(f"build_notebook: no MODULE_ONLY set found in {path}")


# ------------------------------------------------------------------------------------------------
# The chapter: a list of cells
# ------------------------------------------------------------------------------------------------

@dataclass
class Md:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Defs:
    """A code cell with these tinyllm.py definitions, in this order, copied verbatim."""
    names: tuple

    def __init__(self, *names: str):
        self.names = names


@dataclass
class Imports:
    """A code cell with tinyllm.py's imports, verbatim, then some notebook-only lines."""
    extra: str = ""


@dataclass
class Section:
    """The heading of tinyllm.py's section `number` (its title taken from the module), then prose."""
    number: int
    text: str


@dataclass
class Heading:
    """A notebook-only heading (the sections after tinyllm.py's last shared one)."""
    title: str
    text: str


def md(s: str) -> Md:
    return Md(textwrap.dedent(s).strip("\n"))


def code(s: str) -> Code:
    return Code(textwrap.dedent(s).strip("\n"))


def section(number: int, s: str) -> Section:
    return Section(number, textwrap.dedent(s).strip("\n"))


def heading(title: str, s: str) -> Heading:
    return Heading(title, textwrap.dedent(s).strip("\n"))


CHAPTER = [
    md(rf"""
    # Build a tiny language model from scratch

    [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL})

    <!-- PLACEHOLDER: the badge above points at {GITHUB_REPO}; change it to this repository's owner/name. -->

    A language model does one thing: given some text, it says how likely each possible next piece of
    text is. Sample a piece, append it, ask again, and the model writes. In this chapter you build
    one completely, in plain PyTorch, and train it on the works of Shakespeare:

    **text** → **tokenizer** → **transformer** → **training** → **sampling**

    What you will build, step by step:

    - a **tokenizer** that turns text into integers — one per character first, then byte-level
      **BPE**, the kind GPT-2 and its successors use;
    - a **decoder-only transformer** with the parts today's open models use (RoPE, RMSNorm,
      SwiGLU): about **9 million parameters** in its GPU size;
    - a **training loop** with AdamW, warmup and a cosine schedule, mixed precision and checkpoints;
    - **sampling** with temperature, top-k and top-p, made fast with a **KV cache**.

    Every function is written out in the notebook, and each piece ends with a visible check: a shape,
    an `assert`, or a plot. Nothing is imported from a library beyond PyTorch, NumPy, tqdm and
    matplotlib (Colab has them all).

    **How long it takes.** *Runtime → Run all*. On Colab's free **T4 GPU** the whole notebook takes
    about ten minutes, nine of them training the 9M-parameter model. On a **laptop CPU** it takes
    about five minutes: it notices that there is no GPU and trains a smaller model on a budget of
    100 seconds, which already writes recognisably Shakespeare-shaped text.

    **You need** some Python, a little PyTorch (tensors, `nn.Module`, autograd) and the idea of a
    matrix product. The same code lives in `tinyllm.py`, one readable file with the same numbered
    sections and a command line; this notebook and that file are kept identical, definition for
    definition.

    **Contents.** 1 Setup · 2 The data · 3 Tokenization · 4 Embeddings · 5 Self-attention ·
    6 Multi-head attention and RoPE · 7 The transformer block · 8 The whole model · 9 The training loop ·
    10 Training it · 11 Sampling · 12 The KV cache · 13 Saving and loading · 14 What to try next ·
    15 Exercises · 16 Summary · Solutions
    """),

    # --------------------------------------------------------------------------------------------
    section(1, r"""
    Three chores before any machine learning. We import what we need; we pick the **device** the
    arithmetic runs on (a CUDA GPU if there is one, Apple's MPS on a Mac, otherwise the CPU); and we
    **seed** every random number generator, so that running the notebook twice gives the same numbers
    (exactly so on a CPU; GPUs allow themselves tiny differences in the order they add numbers).

    The imports below are exactly those of `tinyllm.py`. The line `from __future__ import annotations`
    lets type hints name classes that are only defined further down, such as `KVCache`.
    """),
    Imports(extra=r"""
    # Only for this notebook's figures and counts:
    import textwrap
    from collections import Counter
    from types import SimpleNamespace

    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 80, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    """),
    md(r"""
    `pick_device("auto")` tries CUDA, then MPS, then the CPU. Asking for a device by name checks that it
    exists, so a missing GPU is a clear message here instead of a puzzling error deep inside PyTorch.
    """),
    Defs("pick_device", "seed_everything", "versions"),
    md(r"""
    How much we train depends on the hardware. A **preset** is a named set of model and training
    sizes (section 8 lists them): `9m` on a CUDA GPU, the smaller `cpu` preset otherwise, which trains
    for a fixed 100 seconds. (Automated tests of this notebook set `TINYLLM_FAST=1` to get the `tiny`
    preset and a run of a few seconds.)
    """),
    code(r"""
    FAST = os.environ.get("TINYLLM_FAST") == "1"  # a very short run, for automated tests of this notebook
    device = pick_device("auto")
    seed_everything(1337)
    print(versions())
    print("device:", device, f"({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    if FAST:
        PRESET = "tiny"
    elif device.type == "cuda":
        PRESET = "9m"
    else:
        PRESET = "cpu"
        print("No CUDA GPU, so this run trains the small `cpu` preset for about 100 seconds.\n"
              "On Colab, choose Runtime > Change runtime type > T4 GPU (then Run all) to train the 9M model.")
    print(f"preset: {PRESET}" + ("  (TINYLLM_FAST=1: a very short test run)" if FAST else ""))
    """),

    # --------------------------------------------------------------------------------------------
    section(2, r"""
    Our corpus is **TinyShakespeare**: about 40,000 lines from Shakespeare's plays in one plain text
    file of 1.1 million characters, collected by Andrej Karpathy for his char-rnn experiments. It is
    small enough to train on in minutes and structured enough to show whether a model learned
    anything: speaker names in capitals, a colon, verse lines, blank lines between speeches.

    The file is downloaded once and cached. Its **SHA-256** hash is checked against a known value:
    if the download is cut short or the file ever changes upstream, we stop with a clear error
    instead of silently training on different data. Writes go to a temporary file that is then
    renamed over the target, so an interrupted download never leaves half a file behind.
    """),
    Defs("DATA_DIR"),
    Defs("Dataset", "DATASETS", "sha256_of", "atomic_write_bytes", "download_dataset", "load_text",
         "split_train_val"),
    code(r"""
    text = load_text("shakespeare")
    print(f"{len(text):,} characters, {len(text.splitlines()):,} lines, {len(set(text))} distinct characters\n")
    print(text[:300])
    """),
    md(r"""
    A first look at the statistics. Spaces, `e`, `t` and `o` are everywhere; `Z`, `&` and the dollar
    sign occur a handful of times. A model that knew nothing but these frequencies would already beat uniform
    guessing — and it is the first thing our model will learn.
    """),
    code(r"""
    def plot_label(c: str) -> str:
        "How a character is shown on a plot axis: visible marks for space and newline."
        return {" ": "␣", "\n": "↵"}.get(c, c)


    counts = Counter(text).most_common()
    fig, ax = plt.subplots(figsize=(10, 2.4))
    ax.bar(range(len(counts)), [n for _, n in counts], color="tab:blue")
    ax.set_xticks(range(len(counts)), [plot_label(c) for c, _ in counts], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("count")
    ax.set_title("Characters of TinyShakespeare, most frequent first")
    plt.show()
    """),
    md(r"""
    We keep the **last 10%** as validation text, never trained on, to measure how well the model
    does on text it has not seen. A contiguous split (rather than randomly chosen lines) matters:
    neighbouring lines share names and phrases, and a random split would let the model meet
    near-copies of its validation text during training.
    """),
    code(r"""
    train_text, val_text = split_train_val(text)
    print(f"train: {len(train_text):,} characters   validation: {len(val_text):,} characters")
    print("validation text starts with:", repr(val_text[:70]))
    """),

    # --------------------------------------------------------------------------------------------
    section(3, r"""
    A neural network computes with numbers, so text must become a sequence of integers, **token
    ids**, and back. That is the tokenizer's job. The choice of tokens is a trade-off: small tokens
    (characters) give a tiny vocabulary but long sequences; bigger tokens (pieces of words) give
    shorter sequences, so the model sees more text at once, at the price of a larger vocabulary and
    fewer examples of each token.

    Every tokenizer here offers the same small interface — `encode`, `decode`, `vocab_size`, and
    `save` to a readable JSON file — so the rest of the code does not care which one it gets.

    ### 3.1 Characters
    The simplest tokenizer gives each distinct character of the training text its own id.
    """),
    Defs("TOKENIZER_FORMAT", "TOKENIZER_VERSION", "Tokenizer", "CharTokenizer"),
    code(r"""
    char_tok = CharTokenizer.from_text(text)
    print("vocabulary:", repr(char_tok.chars))
    print("vocab_size:", char_tok.vocab_size)
    ids = char_tok.encode("To be, or not to be")
    print(ids)
    assert char_tok.decode(ids) == "To be, or not to be"
    try:
        char_tok.encode("café")
    except ValueError as e:
        print("ValueError:", e)
    """),
    md(r"""
    Sixty-five ids cover the whole corpus, but one unseen character (the `é`) is already a failure.

    ### 3.2 Byte-level BPE
    **Byte-pair encoding** starts from a base vocabulary that can spell anything and then *learns*
    bigger tokens. Byte-level BPE (GPT-2's variant) starts from the 256 possible **bytes** of UTF-8
    text, so every string in every language can be encoded, and repeats one step: find the pair of
    neighbouring tokens that occurs most often in the training text, give that pair a new id, and
    replace it everywhere. After $n$ merges the vocabulary has $256 + n$ tokens, and frequent words
    have become single tokens.

    **Pre-splitting.** Before counting pairs, the text is cut into chunks with a regular expression,
    and merges never cross a chunk boundary. The pattern below is GPT-2's idea: a chunk is a
    contraction (`'s`, `'ll`, …), a run of letters with the space in front of it, a number, a run of
    punctuation, or whitespace. Three reasons to do this:

    - a word gets the same tokens wherever it stands: `dog.` and `dog!` and `dog,` all contain the
      token ` dog`, instead of the merges spending ids on `dog.`, `dog!`, `dog,` separately;
    - the space belongs to the word that follows it, so ` the` is one token, and there is no need for
      tokens that end in a space;
    - training gets fast: Shakespeare's million characters hold only about 25,000 *distinct* chunks,
      so each distinct chunk is counted once, weighted by how often it occurs.

    The price: no token can span two words (` of the` stays two tokens), which for a corpus this
    small is no loss.
    """),
    Defs("SPLIT_PATTERN"),
    code(r"""
    sample = "MENENIUS:\nWe'll hear you, dog. A dog's life!  In 1601..."
    print(re.findall(SPLIT_PATTERN, sample))
    """),
    md(r"""
    The two steps of training, counting neighbouring pairs and merging one of them, are small
    functions. Here they are at work on a short string of bytes, three merges by hand:
    """),
    Defs("merge_pair", "pair_counts"),
    code(r"""
    ids = list("the theatre, thither".encode("utf-8"))
    vocab = {i: bytes([i]) for i in range(256)}
    for new_id in range(256, 259):
        counts = pair_counts(ids)
        pair = max(counts, key=counts.get)  # the most frequent neighbouring pair
        ids = merge_pair(ids, pair, new_id)
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]
        print(f"merge {pair} -> {new_id} = {vocab[new_id]!r}:  {len(ids)} tokens:", [vocab[i].decode() for i in ids])
    """),
    md(r"""
    `BPETokenizer.train` does the same on the whole training text, with the bookkeeping that makes it
    take a second rather than an hour: identical chunks are counted once, only the chunks that contain
    the merged pair are recounted after each merge, and a heap hands out the most frequent pair.

    **Encoding** new text replays the merges: within each chunk, repeatedly apply the merge that was
    *learned first* among the pairs present, until none applies. **Decoding** concatenates each
    token's bytes and decodes them as UTF-8. The tokenizer also supports **special tokens** (such as an
    end-of-text marker), which are never split; we will not need them. `tokenizer_from_dict` checks a
    saved tokenizer as untrusted data before using it.
    """),
    Defs("BPETokenizer", "tokenizer_from_dict", "load_tokenizer"),
    code(r"""
    BPE_VOCAB = 300 if FAST else 1024
    t0 = time.perf_counter()
    bpe = BPETokenizer.train(train_text, BPE_VOCAB)
    print(f"learned {len(bpe.merges)} merges in {time.perf_counter() - t0:.1f} s: vocab_size {bpe.vocab_size}\n")
    print("the first 24 merges:")
    for i in range(256, 256 + 24, 4):
        print("   ".join(f"{j}={bpe.vocab[j].decode(errors='replace')!r:<8}" for j in range(i, i + 4)))
    longest = sorted(range(256, bpe.vocab_size), key=lambda i: len(bpe.vocab[i]))[-10:]
    print("\nthe longest tokens:", [bpe.vocab[i].decode(errors="replace") for i in longest])
    """),
    md(r"""
    The first merges are the commonest pairs of English letters, many with the space that starts a
    word (the pre-split puts spaces at the *start* of chunks): ` t`, `he`, ` a`, and soon ` the`.
    The last ones are whole words and the names of speakers. Any text at all round-trips, including
    characters Shakespeare never used:
    """),
    code(r"""
    for s in [val_text[:2000], "Any text at all: café, naïve, 東京, 🙂"]:
        assert bpe.decode(bpe.encode(s)) == s
    ids = bpe.encode("To be, or not to be")
    print(ids, "=", [bpe.decode([i]) for i in ids])

    with tempfile.TemporaryDirectory() as tmp:
        bpe.save(Path(tmp) / "bpe.json")
        print("\nthe saved file starts:", (Path(tmp) / "bpe.json").read_text()[:90].replace("\n", " "), "...")
        again = load_tokenizer(Path(tmp) / "bpe.json")
    assert again.merges == bpe.merges and again.encode(val_text[:2000]) == bpe.encode(val_text[:2000])
    print("save -> load round trip: identical")
    """),
    md(r"""
    **How much shorter do sequences get?** BPE training is greedy, so the first $n$ merges of our
    1024-token tokenizer are exactly the merges a smaller tokenizer would have learned: we can compare
    vocabulary sizes without training again.
    """),
    code(r"""
    rows = [("characters", char_tok.vocab_size, len(char_tok.encode(val_text)))]
    for size in [256, 300, 384, 512, 768, 1024]:
        if size <= bpe.vocab_size:
            rows.append(("BPE", size, len(BPETokenizer(bpe.merges[:size - 256]).encode(val_text))))
    print(f"{'tokenizer':<11}{'vocab':>6}{'tokens':>9}{'chars/token':>13}")
    for name, size, n in rows:
        print(f"{name:<11}{size:>6}{n:>9,}{len(val_text) / n:>13.2f}")

    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot([s for _, s, _ in rows[1:]], [len(val_text) / n for _, _, n in rows[1:]], "o-")
    ax.set_xlabel("BPE vocabulary size")
    ax.set_ylabel("characters per token")
    ax.set_title("Validation text: longer tokens with more merges")
    plt.show()
    """),
    md(r"""
    At 1024 tokens, each token covers more than two characters on average, so a context of 256 tokens
    holds over 500 characters of Shakespeare. Yet for this chapter's model we stay with **characters**:
    65 tokens, each seen hundreds of thousands of times, are the easiest target for a small model and
    a small corpus, and the numbers are easy to read. To compare models with different tokenizers
    fairly we will report the loss in **bits per character**, which does not depend on how the text
    was cut up. Training on BPE tokens is one of the things to try in section 14.
    """),
    code(r"""
    tokenizer = char_tok
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.long)
    val_ids = torch.tensor(tokenizer.encode(val_text), dtype=torch.long)
    print("train_ids", tuple(train_ids.shape), " val_ids", tuple(val_ids.shape))
    print(train_ids[:24].tolist(), "=", repr(tokenizer.decode(train_ids[:24].tolist())))
    """),

    # --------------------------------------------------------------------------------------------
    section(4, r"""
    A token id is only a name: id 20 is not "closer" to id 21 than to id 50. The model's first layer
    therefore replaces each id by a **learned vector** of `d_model` numbers, row `id` of an
    **embedding table** of shape `(vocab_size, d_model)`. Training moves these vectors so that
    tokens used alike end up with similar vectors.

    Looking up row $i$ is the same as multiplying a one-hot vector by the table,
    $e_i = \mathrm{onehot}(i)\,W_E$, just much cheaper. There are no position embeddings here: where a
    token stands enters later, inside attention (section 6).
    """),
    code(r"""
    torch.manual_seed(0)
    emb = nn.Embedding(tokenizer.vocab_size, 8)  # a toy table: 8 numbers per token
    ids = torch.tensor(tokenizer.encode("First"))
    vectors = emb(ids)
    print(ids.tolist(), "->", tuple(vectors.shape))
    one_hot = F.one_hot(ids, tokenizer.vocab_size).float()
    assert torch.allclose(one_hot @ emb.weight, vectors)
    print("an embedding lookup is a one-hot vector times the table: checked")
    """),

    # --------------------------------------------------------------------------------------------
    section(5, r"""
    To predict the next character, a position needs information from the positions before it.
    **Self-attention** lets every position gather it, with weights it computes itself. Each position
    $t$ emits three vectors, all linear functions of its embedding:

    - a **query** $q_t$: what am I looking for?
    - a **key** $k_s$: what do I contain? (matched against queries)
    - a **value** $v_s$: what do I hand over if chosen?

    Position $t$ scores every position $s$ by the dot product $q_t \cdot k_s$, turns the scores into
    weights with a softmax, and takes the weighted average of the values:

    $$\mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}} + M\right) V$$

    Two details. The **causal mask** $M$ is $0$ where $s \le t$ and $-\infty$ where $s > t$: after
    the softmax, a position gives weight exactly zero to the future, which it must not see when its
    job is to predict it. And the division by $\sqrt{d}$ (the vector length) keeps the scores at a
    sensible scale — more on that below. Here it is with every step written out:
    """),
    Defs("attention_by_hand"),
    md(r"""
    A worked example with 5 positions and vectors of length 4, so every number fits on the screen:
    """),
    code(r"""
    torch.manual_seed(2)
    T, D = 5, 4
    q, k, v = torch.randn(3, 1, 1, T, D).unbind(0)  # (batch 1, head 1, T, D) each
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    out, weights = attention_by_hand(q, k, v)
    torch.set_printoptions(precision=2, sci_mode=False)
    print("scores q·k/√d:\n", scores[0, 0])
    print("weights after mask and softmax:\n", weights[0, 0])
    torch.set_printoptions(profile="default")

    assert torch.allclose(weights.sum(-1), torch.ones(1, 1, T))  # every row sums to 1
    assert (weights[0, 0].triu(diagonal=1) == 0).all()  # no weight on the future
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    print("rows sum to 1, the future gets 0, and PyTorch's fused attention agrees")
    """),
    code(r"""
    def plot_matrix(ax, m, labels, title, annotate=False, cmap="viridis"):
        "A heatmap of a (T, T) matrix with the tokens on both axes: rows are queries, columns keys."
        m = m.detach().float().cpu()
        ax.imshow(m.masked_fill(~torch.isfinite(m), float("nan")), cmap=cmap)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        if annotate:
            for i in range(m.size(0)):
                for j in range(m.size(1)):
                    color = "gray" if m[i, j] == -math.inf else "white" if m[i, j] < m[torch.isfinite(m)].mean() else "black"
                    ax.text(j, i, "-inf" if m[i, j] == -math.inf else f"{m[i, j]:.2f}", ha="center", va="center",
                            fontsize=7, color=color)


    masked = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, m, title in zip(axes, [scores, masked, weights], ["1. scores q·k/√d", "2. causal mask: future = -inf",
                                                              "3. softmax: attention weights"]):
        plot_matrix(ax, m[0, 0], [str(i) for i in range(T)], title, annotate=True)
    plt.tight_layout()
    plt.show()
    """),
    md(r"""
    Read the weights row by row: position 0 can only look at itself, so its row is $[1, 0, 0, 0, 0]$;
    position 4 spreads its attention over all five.

    **Why divide by $\sqrt{d}$?** If the entries of $q$ and $k$ are roughly independent with variance
    1, their dot product is a sum of $d$ such products and has variance $d$. With large scores the
    softmax puts nearly all weight on one position, and its gradient all but vanishes. Dividing by
    $\sqrt{d}$ brings the spread back to about 1, whatever the head size:
    """),
    code(r"""
    for d in (4, 64, 1024):
        a, b = torch.randn(2, 20000, d).unbind(0)
        dots = (a * b).sum(-1)
        print(f"d = {d:4}:  std of q·k = {dots.std():5.2f}   std of q·k/√d = {(dots / math.sqrt(d)).std():.2f}")
    """),

    # --------------------------------------------------------------------------------------------
    section(6, r"""
    One attention pattern per layer is limiting: a position may want to look at the previous
    character *and* at the start of the current word at once. **Multi-head attention** splits the
    `d_model` channels into `n_head` groups of `head_dim = d_model / n_head` and runs attention in each
    group separately, with its own queries, keys and values; the heads' outputs are put side by side
    again and mixed by one more linear layer (`proj`). It costs the same as one big head.

    **Where is position?** Attention as written treats its input as a set: shuffle the positions and
    each output is shuffled along, unchanged. GPT-2 adds a learned vector per position to the
    embeddings. Most models since use **rotary position embeddings (RoPE)** instead. RoPE rotates
    each query and key, pair of channels by pair of channels, by an angle proportional to its
    position $m$: channel pair $i$ turns by $m\,\theta_i$ with $\theta_i = 10000^{-2i/d}$. Since
    rotating $q$ by angle $\alpha$ and $k$ by $\beta$ changes their dot product exactly as rotating
    $q$ by $\alpha - \beta$ alone,

    $$ (R_m q) \cdot (R_n k) = q \cdot (R_{n-m}\, k), $$

    attention scores depend only on the **distance** $m - n$ between two tokens, not on where they
    stand. Nothing is learned, and the fast and slow frequencies let heads see near and far offsets.
    """),
    Defs("rope_angles", "apply_rope"),
    code(r"""
    head_dim, n_pos = 16, 48
    cos, sin = rope_angles(head_dim, torch.arange(n_pos))
    print("cos, sin:", tuple(cos.shape), tuple(sin.shape))

    torch.manual_seed(0)
    x = torch.randn(1, 1, n_pos, head_dim)
    assert torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # rotations keep lengths

    q1, k1 = torch.randn(2, head_dim).unbind(0)
    Q = apply_rope(q1.expand(1, 1, n_pos, head_dim), cos, sin)[0, 0]  # the same query placed at every position
    K = apply_rope(k1.expand(1, 1, n_pos, head_dim), cos, sin)[0, 0]  # the same key placed at every position
    S = Q @ K.T  # S[m, n]: score of the query at position m against the key at position n
    for offset in range(-n_pos + 1, n_pos):
        diagonal = torch.diagonal(S, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4)
    print("the score depends only on the offset m - n: checked for every offset")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].imshow(S, cmap="RdBu")
    axes[0].set_title("score of query at m, key at n:\nconstant along each diagonal", fontsize=9)
    axes[0].set_xlabel("key position n")
    axes[0].set_ylabel("query position m")
    QQ = apply_rope(q1.expand(1, 1, n_pos, head_dim), cos, sin)[0, 0]
    axes[1].plot(range(n_pos), QQ @ QQ[0], "o-", ms=3)
    axes[1].set_title("a vector against itself, moved n positions away", fontsize=9)
    axes[1].set_xlabel("distance n")
    axes[1].set_ylabel("dot product")
    plt.tight_layout()
    plt.show()
    """),
    md(r"""
    On the right: a vector scores highest against itself at distance 0, and the match fades and
    wobbles with distance, because each channel pair turns at its own speed. Together these pieces
    make the attention layer. One matrix multiply computes queries, keys and values for all heads
    (`qkv`); the tensors are reshaped to `(batch, heads, T, head_dim)` so that the heads run in
    parallel. The default path is PyTorch's fused `scaled_dot_product_attention`, which never builds
    the $T \times T$ matrix in memory; with `by_hand = True` the layer uses our `attention_by_hand`
    and keeps the weights, which we will plot after training. (The `cache` argument is for fast
    generation, section 12.)
    """),
    Defs("CausalSelfAttention"),
    code(r"""
    # The model's configuration class comes in section 8; a namespace with the fields the layers read will do.
    cfg = SimpleNamespace(d_model=32, n_head=4, d_ff=64, dropout=0.0)
    attn = CausalSelfAttention(cfg)
    x = torch.randn(2, 10, cfg.d_model)  # (batch, T, d_model)
    cos, sin = rope_angles(cfg.d_model // cfg.n_head, torch.arange(10))
    fast = attn(x, cos, sin)
    attn.by_hand = True
    slow = attn(x, cos, sin)
    assert torch.allclose(fast, slow, atol=1e-5)
    print("output:", tuple(fast.shape), " weights:", tuple(attn.weights.shape), "= (batch, heads, queries, keys)")
    print("fused and by-hand attention agree")
    """),

    # --------------------------------------------------------------------------------------------
    section(7, r"""
    A transformer is a stack of identical **blocks**. Each block has two sub-layers: attention, where
    positions exchange information, and a **feed-forward** layer (MLP), where each position thinks on
    its own. Around each sub-layer sits a **residual connection**, $x \leftarrow x + f(x)$: the block
    only *adds* a correction to a running vector, the **residual stream**, that flows from the
    embedding to the output. Gradients flow back along the same path unhindered, which is what
    makes deep stacks trainable.

    **Normalisation.** Each sub-layer reads a normalised copy of the stream (*pre-norm*; the 2017
    transformer normalised after the addition, which trains less stably). We use **RMSNorm**: divide
    a vector by its root mean square, then multiply by a learned gain $g$:

    $$\mathrm{RMSNorm}(x) = \frac{x}{\sqrt{\frac{1}{d}\sum_i x_i^2 + \epsilon}} \odot g$$

    It is LayerNorm without subtracting the mean and without a bias: cheaper, and as good.

    **SwiGLU.** The feed-forward layer widens each vector to `d_ff` hidden units and back. GPT-2
    uses $W_2\,\mathrm{GELU}(W_1 x)$; we use a **gated** version,

    $$\mathrm{SwiGLU}(x) = W_{down}\,\big(\mathrm{SiLU}(W_{gate}\,x) \odot W_{up}\,x\big),$$

    where one projection decides how much of the other passes, unit by unit. At the same parameter
    count it learns faster, and LLaMA and most open models use it.
    """),
    Defs("RMSNorm", "SwiGLU", "Block"),
    code(r"""
    norm = RMSNorm(cfg.d_model)
    x = torch.randn(2, 10, cfg.d_model) * 5 + 3
    rms = lambda t: t.pow(2).mean(-1).sqrt()
    print(f"root mean square before RMSNorm: {rms(x).mean():.2f}, after: {rms(norm(x)).mean():.3f}")
    assert torch.allclose(rms(norm(x)), torch.ones(2, 10), atol=1e-3)

    block = Block(cfg)
    y = block(x, cos, sin)
    assert y.shape == x.shape  # a block maps the stream to a stream of the same shape
    print("block:", tuple(x.shape), "->", tuple(y.shape), f"with {sum(p.numel() for p in block.parameters()):,} parameters")
    """),

    # --------------------------------------------------------------------------------------------
    section(8, r"""
    The model is now a short list: an embedding table, `n_layer` blocks, a final RMSNorm, and a
    linear **head** that turns each position's vector into `vocab_size` scores (**logits**) for the
    next token. The head shares its matrix with the embedding table (**weight tying**): the same
    vector that represents a token on the way in is the one its score is matched against on the way
    out, which saves parameters and helps small models.

    The loss is the **cross-entropy** between the predicted distribution and the actual next token:
    $-\log p(\text{next token})$, in **nats**, averaged over all positions. One forward pass
    trains on every position of a sequence at once, each predicting its successor — the causal mask
    makes sure none of them can peek.

    **Initialisation** matters: all weights start small (normal, standard deviation 0.02), and the
    two layers that write into the residual stream (`proj` and `down`) smaller still, scaled by
    $1/\sqrt{2\,n_{layer}}$, so the stream does not grow with depth. The named sizes, the
    **presets**, sit next to the model; `tiny` is for tests, `cpu` is the largest model that learns
    well in about 100 seconds on a laptop, and `9m` is the GPU model.

    (`new_cache` and `generate` use the KV cache and the samplers of sections 11 and 12. Python looks
    names up when a function runs, not when it is defined, so that is fine.)
    """),
    Defs("PRESETS", "check_preset", "ModelConfig", "TinyLLM"),
    md(r"""
    **Where do the ~9M parameters sit?** With width $d$ = `d_model`, each block's attention has
    $4 d^2$ weights ($W_{qkv}$ is $d \times 3d$, `proj` is $d \times d$) and its SwiGLU layer
    $3\, d\, d_{ff}$ (`gate_up` is $d \times 2 d_{ff}$, `down` is $d_{ff} \times d$); the embedding
    is small with only 65 tokens. Counted for the `9m` preset:
    """),
    code(r"""
    big = TinyLLM(ModelConfig.from_preset("9m", tokenizer.vocab_size))
    c = big.config
    parts = {
        "token embedding (tied with the head)": big.embed.weight.numel(),
        f"attention (qkv + proj) x {c.n_layer}": sum(p.numel() for b in big.blocks for p in b.attn.parameters()),
        f"feed-forward (SwiGLU) x {c.n_layer}": sum(p.numel() for b in big.blocks for p in b.mlp.parameters()),
        "RMSNorm gains": sum(p.numel() for n, p in big.named_parameters() if "norm" in n),
    }
    assert sum(parts.values()) == big.num_params()
    for name, n in parts.items():
        print(f"{name:<38}{n:>11,}  {100 * n / big.num_params():5.1f}%")
    print(f"{'total':<38}{big.num_params():>11,}")
    del big
    """),
    md(r"""
    Two thirds of the weights are in the feed-forward layers, a third in attention. Now the model we
    will actually train, with the preset chosen in section 1. An untrained model should be
    uniformly unsure: each of the 65 characters about equally likely, so the loss should start near
    $\ln 65 \approx 4.17$ nats. That is a useful check that nothing is broken before spending any
    time on training.
    """),
    code(r"""
    seed_everything(1337)
    model = TinyLLM(ModelConfig.from_preset(PRESET, tokenizer.vocab_size)).to(device)
    print(model.config)
    print(f"{model.num_params():,} parameters")
    T = model.config.block_size
    x, y = val_ids[None, :T].to(device), val_ids[None, 1:T + 1].to(device)
    with torch.no_grad():
        logits, loss = model(x, y)
    print("logits:", tuple(logits.shape), f" loss {loss.item():.3f}  vs  ln(vocab_size) = {math.log(tokenizer.vocab_size):.3f}")
    assert abs(loss.item() - math.log(tokenizer.vocab_size)) < 0.3
    """),

    # --------------------------------------------------------------------------------------------
    section(9, r"""
    Training repeats four steps: take a **batch** of text windows, compute the loss, compute its
    gradient with respect to every parameter (`loss.backward()`), and let the optimizer nudge the
    parameters downhill. The pieces, one by one.

    **Batches.** A batch is `batch_size` windows of `block_size + 1` tokens from random places in the
    training text; the inputs are the first `block_size` tokens and the targets the same window
    shifted by one.
    """),
    Defs("TrainConfig", "TrainingDiverged", "get_batch"),
    code(r"""
    xb, yb = get_batch(train_ids, 4, 24, torch.Generator().manual_seed(0), torch.device("cpu"))
    print("x:", tuple(xb.shape), " y:", tuple(yb.shape))
    for i in range(2):
        print(f"x = {tokenizer.decode(xb[i].tolist())!r}\ny = {tokenizer.decode(yb[i].tolist())!r}")
    assert torch.equal(xb[:, 1:], yb[:, :-1])  # y is x moved one token to the left
    """),
    md(r"""
    **The learning rate schedule.** Early on, gradients are large and erratic and the optimizer's
    running averages (below) have seen only a few of them, so the learning rate rises linearly from
    almost zero during a short **warmup**. Then it follows half a cosine from `lr` down to `min_lr`: big steps while the
    loss falls fast, small ones to settle at the end. Progress is measured in steps, or, for a run
    with a time budget (the `cpu` preset), by the clock.

    $$\eta(p) = \eta_{min} + \tfrac{1}{2}\,(\eta_{max} - \eta_{min})\,\big(1 + \cos(\pi p)\big), \qquad p \in [0, 1]$$
    """),
    Defs("lr_at"),
    code(r"""
    cfg9 = TrainConfig.from_preset("9m")
    steps = range(cfg9.max_steps)
    lrs = [lr_at(s, s / cfg9.max_steps, cfg9) for s in steps]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.plot(steps, lrs)
    ax.axvline(cfg9.warmup_steps, color="gray", ls=":")
    ax.text(cfg9.warmup_steps + 30, cfg9.lr * 0.97, "end of warmup", fontsize=8, va="top")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Warmup, then cosine decay (the 9m preset)")
    plt.show()
    print(f"step 0: {lrs[0]:.1e}   step {cfg9.warmup_steps}: {lrs[cfg9.warmup_steps]:.1e}   last: {lrs[-1]:.1e}")
    """),
    md(r"""
    **AdamW.** Adam keeps, for every parameter, running averages of its gradient ($\beta_1 = 0.9$) and
    of its squared gradient ($\beta_2$), and steps along the first divided by the square root of the
    second: every parameter moves at a sensible pace whatever the scale of its gradient. The "W" is
    **decoupled weight decay**: each step also shrinks the weights a little, directly rather than
    through the gradient. We decay only the matrices: shrinking the RMSNorm gains, or the biases we
    do not have, helps nothing. (The embedding table is a matrix and is decayed too; it is also the
    output head.) Before each step, the **gradient norm is clipped** to 1, so that one unlucky batch
    cannot throw the model far off.
    """),
    Defs("make_optimizer"),
    code(r"""
    opt = make_optimizer(model, TrainConfig())
    for group in opt.param_groups:
        n = sum(p.numel() for p in group["params"])
        print(f"weight_decay {group['weight_decay']}: {len(group['params']):>2} tensors, {n:>9,} parameters")
    del opt
    """),
    md(r"""
    **Mixed precision.** GPUs multiply 16-bit numbers several times faster than 32-bit ones. Under
    `torch.autocast`, matrix multiplies run in 16 bits while sums that need the range (softmax, norms,
    the loss) stay in 32. There are two 16-bit formats: **bf16** has float32's range and is simply
    used where the GPU supports it (NVIDIA Ampere and newer); **fp16** (the T4) has a small range, so
    tiny gradients would round to zero: a **gradient scaler** multiplies the loss by a large factor
    before `backward()` and divides the gradients by it again, skipping any step whose gradients
    overflowed. On a CPU we stay in float32.
    """),
    Defs("choose_precision"),
    code(r"""
    print(f"on {device.type}: autocast dtype = {choose_precision(device)}  (None = plain float32)")
    """),
    md(r"""
    **Evaluation.** The training loss is measured on batches the model is learning from; the
    **validation loss** on text it never trains on tells us whether it generalises. `evaluate` walks
    the validation text in non-overlapping windows, always the same ones, so two evaluations differ
    only because the model did. To compare tokenizers we convert nats per token to **bits per
    character**: divide by $\ln 2$, and by the characters per token.
    """),
    Defs("evaluate", "bits_per_char"),
    code(r"""
    loss0 = evaluate(model, val_ids, model.config.block_size, max_windows=8)
    print(f"untrained model: {loss0:.3f} nats = {bits_per_char(loss0):.3f} bits per character "
          f"(uniform guessing: {math.log2(tokenizer.vocab_size):.3f})")
    """),
    md(r"""
    **The loop.** `train` puts it all together. Read it top to bottom; the core is the `while` loop:
    set the learning rate for this step, run forward and backward under autocast (optionally over
    several **micro-batches** whose gradients add up, `grad_accum`, when a big batch does not fit in
    memory), unscale and clip the gradients, step the optimizer. Around that core:

    - every `eval_interval` steps, and at the end, it evaluates and records a row in `history`, and
      prints a line (with a tqdm progress bar in between);
    - with `out_dir` set, it saves checkpoints there: `last.pt` (to resume) and `best.pt` (the best
      validation loss so far), with the functions of section 13;
    - it stops at `max_steps` or after `max_time` seconds, whichever comes first;
    - a loss that turns into NaN stops the run with `TrainingDiverged` instead of silently wasting
      the rest of the budget; interrupting (the ■ button, or Ctrl-C) stops cleanly after the current
      step and saves;
    - run under `torchrun` on several GPUs, the same function trains with **DistributedDataParallel**
      (`is_main_process` tells the one process that logs and saves); in this notebook that code
      simply does not run.
    """),
    Defs("is_main_process", "train", "remove_stale_temp_files"),

    # --------------------------------------------------------------------------------------------
    section(10, r"""
    Time to train. We start from a freshly seeded model, measure its validation loss once (the
    curve's starting point), and train it with the preset's settings. On a T4 this takes up to nine
    minutes; the CPU run stops after 100 seconds. The printed lines show the training loss, the
    validation loss (also in bits per character), the learning rate and the time.
    """),
    code(r"""
    if FAST:
        overrides = dict(max_steps=60, max_time=None, eval_interval=20, log_interval=10)
    elif PRESET == "cpu":
        overrides = dict(eval_interval=100)  # evaluate more often than the preset does: more points on the curve
    else:
        overrides = {}
    config = TrainConfig.from_preset(PRESET, **overrides, device=str(device))
    budget = f"{config.max_time:.0f} seconds" if config.max_time else f"{config.max_steps} steps"
    print(f"training the {PRESET} preset ({model.num_params():,} parameters) on {device}: "
          f"batch {config.batch_size} x {model.config.block_size} tokens, peak lr {config.lr}, budget {budget}")

    seed_everything(config.seed)
    model = TinyLLM(ModelConfig.from_preset(PRESET, tokenizer.vocab_size)).to(device)
    start_loss = evaluate(model, val_ids, model.config.block_size, max_windows=config.eval_windows)  # step 0
    history = train(model, train_ids, val_ids, config, tokenizer=tokenizer)
    final = history[-1]
    print(f"\nfinal validation loss {final['val_loss']:.4f} nats = {final['val_bpc']:.3f} bits/char "
          f"after {final['step']:,} steps ({final['seconds']:.0f} s)")
    if PRESET == "9m":
        print("target for the 9m preset: 1.55 or lower:", "reached" if final["val_loss"] <= 1.55 else "not reached")
    """),
    md(r"""
    **The learning curves.** Both losses fall steeply at first (the model learns which characters are
    common, then which follow which), then more slowly. While training and validation loss stay
    close, the model is still learning things that generalise; when the validation loss flattens out
    while the training loss keeps falling, it has started memorising its training text.
    """),
    code(r"""
    steps = [r["step"] for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, unit, uniform in [(axes[0], "loss", "nats per character", math.log(tokenizer.vocab_size)),
                                   (axes[1], "bpc", "bits per character", math.log2(tokenizer.vocab_size))]:
        start = start_loss if key == "loss" else bits_per_char(start_loss)
        ax.plot(steps, [r[f"train_{key}"] for r in history], "o-", ms=3, label="train (mean since the last point)")
        ax.plot([0] + steps, [start] + [r[f"val_{key}"] for r in history], "o-", ms=3, label="validation")
        ax.axhline(uniform, color="gray", ls=":", label="uniform guessing")
        ax.set_xlabel("step")
        ax.set_ylabel(unit)
        ax.legend(fontsize=8)
    axes[0].set_title("Loss (cross-entropy)")
    axes[1].set_title("The same in bits per character")
    plt.tight_layout()
    plt.show()
    """),
    md(r"""
    **What did the embeddings learn?** Each character's embedding vector started random. After
    training, characters that play similar roles should have similar vectors. Here are the nearest
    neighbours (by cosine similarity) of a few characters:
    """),
    code(r"""
    E = F.normalize(model.embed.weight.detach().float().cpu(), dim=-1)
    for ch in ["a", "e", "T", "!", "\n"]:
        similarity = E @ E[tokenizer.stoi[ch]]
        nearest = similarity.argsort(descending=True)[1:7].tolist()
        print(f"{plot_label(ch)!r:>5} is closest to:", "  ".join(f"{plot_label(tokenizer.chars[i])}" for i in nearest))
    """),
    md(r"""
    **Looking inside attention.** Now the attention weights of the trained model on a real line of the
    validation text. With `by_hand = True` each layer keeps its weights. The small maps show every
    head of every layer; the big one shows the head that looks furthest back on average. Heads
    specialise: some attend to the previous character or two, some to the start of the word or line,
    some to the last space or the last newline.
    """),
    code(r"""
    limit = min(48, model.config.block_size)  # a speech of the validation text that fits the context
    snippet = next((p for p in val_text.split("\n\n") if 24 <= len(p) <= limit), val_text[:limit])
    labels = [plot_label(ch) for ch in snippet]
    for block in model.blocks:
        block.attn.by_hand = True
    model.eval()
    with torch.no_grad():
        model(torch.tensor([tokenizer.encode(snippet)], device=model.embed.weight.device))
    maps = torch.stack([block.attn.weights[0].float().cpu() for block in model.blocks])  # (layers, heads, T, T)
    for block in model.blocks:
        block.attn.by_hand, block.attn.weights = False, None
    print(f"snippet: {snippet!r}\nattention maps: {tuple(maps.shape)} = (layers, heads, queries, keys)")

    L, H, T = maps.shape[:3]
    back = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp(min=0).float()  # how far back each key is
    distance = (maps * back).sum(-1).mean(-1)  # (layers, heads): average distance looked back
    layer, head = divmod(int(distance.argmax()), H)

    fig, axes = plt.subplots(L, H, figsize=(1.2 * H + 0.5, 1.2 * L + 0.5), squeeze=False, layout="constrained")
    for l in range(L):
        for h in range(H):
            axes[l, h].imshow(maps[l, h], cmap="viridis")
            axes[l, h].set_xticks([])
            axes[l, h].set_yticks([])
            axes[0, h].set_title(f"head {h}", fontsize=8)
        axes[l, 0].set_ylabel(f"layer {l}", fontsize=8)
    fig.suptitle("Every head of every layer (rows: queries, columns: keys)", fontsize=9)
    plt.show()

    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    plot_matrix(ax, maps[layer, head], labels,
                f"layer {layer}, head {head}: looks {distance[layer, head]:.1f} characters back on average")
    ax.tick_params(labelsize=8)
    plt.show()
    """),

    # --------------------------------------------------------------------------------------------
    section(11, r"""
    The model gives a distribution over the next token; **sampling** turns it into text, one token at
    a time. How we pick from the distribution changes the text a lot:

    - **greedy** (temperature 0): always the most likely token. Deterministic, and prone to loops.
    - **temperature** $\tau$: divide the logits by $\tau$ before the softmax,
      $p_i \propto e^{z_i/\tau}$. Below 1 the distribution sharpens (safer, duller text); above 1 it
      flattens (more surprising, more mistakes).
    - **top-k**: keep only the $k$ most likely tokens, renormalise, sample. Cuts off the long tail of
      unlikely tokens, which together are chosen surprisingly often.
    - **top-p** (nucleus sampling): keep the smallest set of most likely tokens whose probabilities
      add up to $p$. Where the model is sure this is one or two tokens, where it is unsure many.

    `generate_tokens` runs the model and yields tokens as they come; `complete` works on text,
    streams it, and can stop at a given string (such as a blank line). Both use a **KV cache** by
    default, a speed-up that section 12 builds; until then we pass `use_cache=False`, which computes
    exactly the same thing the slow way.
    """),
    Defs("check_sampling_args", "sample_token", "generate_tokens", "complete"),
    code(r"""
    prompt = "ROMEO:\nThou art th"
    with torch.no_grad():
        logits, _ = model.eval()(torch.tensor([tokenizer.encode(prompt)], device=model.embed.weight.device))
    model.train()
    temperatures = [0.5, 1.0, 1.5]
    fig = plt.figure(figsize=(12, 4.6))
    for col, t in enumerate(temperatures):
        probs = F.softmax(logits[0, -1].float().cpu() / t, dim=-1)
        top = probs.argsort(descending=True)[:10]
        ax = fig.add_subplot(2, 3, col + 1)
        ax.bar(range(10), probs[top], color="tab:orange")
        ax.set_xticks(range(10), [plot_label(tokenizer.chars[i]) for i in top])
        ax.set_ylim(0, 1)
        ax.set_title(f"temperature {t}: next character after {prompt[-6:]!r}", fontsize=9)
        sample = "ROMEO:\n" + complete(model, tokenizer, "ROMEO:\n", 200, temperature=t, seed=1, use_cache=False)
        lines = [part for line in sample.splitlines() for part in textwrap.wrap(line, 46) or [""]]
        ax = fig.add_subplot(2, 3, col + 4)
        ax.axis("off")
        ax.text(0, 1, "\n".join(lines[:14]), va="top", family="monospace", fontsize=7.5)
    fig.subplots_adjust(wspace=0.3, hspace=0.2)
    plt.show()
    """),
    md(r"""
    Low temperature concentrates the probability on the favourite (top row) and gives safe,
    repetitive text; high temperature spreads it out and the spelling starts to go (bottom row). The
    four strategies side by side, from the same prompt and seed:
    """),
    code(r"""
    strategies = {"greedy": dict(temperature=0), "temperature 0.8": dict(temperature=0.8),
                  "top-k, k = 10": dict(temperature=1.0, top_k=10), "top-p, p = 0.9": dict(temperature=1.0, top_p=0.9)}
    prompt = "KING HENRY VI:\n"
    for name, kwargs in strategies.items():
        print(f"--- {name} ---")
        print(prompt + complete(model, tokenizer, prompt, 200, seed=7, use_cache=False, **kwargs) + "\n")

    greedy = [complete(model, tokenizer, prompt, 40, temperature=0, use_cache=False) for _ in range(2)]
    assert greedy[0] == greedy[1]  # greedy is deterministic
    seeded = [complete(model, tokenizer, prompt, 40, seed=3, use_cache=False) for _ in range(2)]
    assert seeded[0] == seeded[1]  # and so is sampling with a seed
    """),
    md(r"""
    **Streaming.** With `on_text`, `complete` hands out text as soon as it is ready, the way chat
    interfaces show words appearing; `stop` ends the text before a given string, here the blank line
    that ends a speech:
    """),
    code(r"""
    print("LADY CAPULET:", end="")
    reply = complete(model, tokenizer, "LADY CAPULET:", 400, temperature=0.8, seed=5, stop="\n\n", use_cache=False,
                     on_text=lambda piece: print(piece, end="", flush=True))
    print(f"\n[{len(reply)} characters, stopped at the first blank line or after 400]")
    """),

    # --------------------------------------------------------------------------------------------
    section(12, r"""
    Generating $n$ tokens naively runs the model $n$ times over the whole context, recomputing the
    keys and values of every earlier token each time, though they never change: because of the
    causal mask, a token's keys and values, at every layer, depend only on the tokens up to it. A
    **KV cache** keeps each layer's keys and values; each new step feeds only the newest token,
    computes its query, key and value, appends the key and value to the cache, and attends over
    everything stored.

    Once `block_size` tokens are stored, the cache overwrites its oldest slot, a **ring buffer**, and
    the model keeps attending to the last `block_size` tokens. With RoPE this needs no recomputation:
    stored keys keep their absolute rotations, and scores depend only on distances. (The stored
    values still carry the context they were computed in, so past the context length, generation
    with the cache is a slightly different computation from re-running the model on a cropped window:
    a sliding-window model.)
    """),
    Defs("KVCache"),
    code(r"""
    model.eval()
    ids = torch.tensor([tokenizer.encode(val_text[:model.config.block_size])], device=model.embed.weight.device)
    with torch.no_grad():
        full, _ = model(ids)  # all positions at once, no cache
        cache = model.new_cache(1)
        step_by_step = torch.cat([model(ids[:, i:i + 1], cache=cache)[0] for i in range(ids.size(1))], dim=1)
    print(f"{len(cache)} caches (one per layer), keys {tuple(cache[0].k.shape)} = (batch, heads, slots, head_dim)")
    print(f"largest difference between the two ways of computing the logits: {(full - step_by_step).abs().max():.1e}")
    assert torch.allclose(full, step_by_step, atol=1e-3)
    model.train()

    prompt_ids = torch.tensor([tokenizer.encode("ROMEO:\n")], device=model.embed.weight.device)
    n_new = 200
    for use_cache in (False, True):
        t0 = time.perf_counter()
        out = model.generate(prompt_ids, n_new, temperature=0, use_cache=use_cache)
        int(out[0, -1])  # wait for the GPU to finish
        print(f"use_cache={use_cache!s:<5}: {n_new / (time.perf_counter() - t0):7.0f} tokens/s")
    """),
    md(r"""
    The speed-up grows with the context length and the model size; for a model this small, on a CPU,
    Python's own overhead per step takes part of the gain.
    """),

    # --------------------------------------------------------------------------------------------
    section(13, r"""
    A checkpoint is everything needed to use the model again, or to resume training exactly where it
    stopped: the weights, the model's configuration, the tokenizer, and for resuming the optimizer's
    running averages, the step, the history and the random number generators' states.
    `save_checkpoint` takes the model and tokenizer plus any such extras by keyword.

    Loading a PyTorch file with `torch.load` can run arbitrary code hidden in it (it uses Python's
    pickle). So we store only tensors and plain Python data — configurations and tokenizers as
    dictionaries — and load with `weights_only=True`, which refuses anything else. The file is
    written to a temporary name and then renamed, so a crash mid-save never destroys the previous one.
    """),
    Defs("CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"),
    code(r"""
    path = Path("runs/notebook/tinyllm.pt")
    save_checkpoint(path, model, tokenizer, history=history, train_config=config, step=final["step"])
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")

    ckpt = load_checkpoint(path, device)
    print("keys:", sorted(ckpt))
    print("model_config:", ckpt["model_config"])

    restored = ckpt["model"].eval()
    x = val_ids[None, :model.config.block_size].to(device)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x)[0], restored(x)[0], rtol=0, atol=1e-5)  # the same numbers
    model.train()
    print("restored model == trained model: checked\n")
    print("JULIET:\n" + complete(restored, ckpt["tokenizer"], "JULIET:\n", 200, seed=11))
    """),
    md(r"""
    During training you rarely call these yourself: give `TrainConfig` an `out_dir` and `train`
    keeps two checkpoints there: `last.pt`, written at every evaluation and at the end, with the
    optimizer's state and everything else needed to resume, and `best.pt`, the model with the lowest
    validation loss so far. To resume a run exactly where it stopped:

    ```python
    state = load_checkpoint("runs/my-run/last.pt", device)
    train(state["model"], train_ids, val_ids, state["train_config"], tokenizer=state["tokenizer"], state=state)
    ```

    The command line of `tinyllm.py` works that way (`python tinyllm.py train --resume`).
    """),

    # --------------------------------------------------------------------------------------------
    heading("14. What to try next", r"""
    You have every piece of a modern language model. Some directions, roughly from easy to ambitious:

    - **Train longer, or on a GPU.** On a CPU, `TrainConfig.from_preset("cpu", max_time=600)` trains
      for ten minutes; the loss keeps falling for a good while. On a GPU, the `9m` preset aims for a
      validation loss of 1.55 or lower within its nine-minute budget on a T4 (for scale: nanoGPT
      reports 1.47 for its 10.7M-parameter character model, after about 3 minutes on an A100).
    - **Use the BPE tokenizer** for the model: `tokenizer = bpe`, encode the splits again, pass
      `chars_per_token=len(val_text) / len(val_ids)` to `TrainConfig` so the bits per character stay
      comparable, and compare the curves. With a 1024-token vocabulary each step sees twice the text.
    - **Change the shape**: more layers or a wider `d_model`, more or fewer heads, a longer
      `block_size`. Keep an eye on the gap between training and validation loss; with more
      parameters than this corpus supports, set `dropout` in `ModelConfig`.
    - **Your own text**: `load_text("path/to/file.txt")` takes any UTF-8 file. A few megabytes of one
      author, a codebase, or song lyrics all work.
    - **Ablations**: swap RMSNorm for `nn.LayerNorm`, SwiGLU for a GELU MLP, or RoPE for learned
      position embeddings, and measure the validation loss at a fixed budget.
    - **The command line.** The same code is `tinyllm.py`:
      `python tinyllm.py train --max-time 600` trains and saves a run, and
      `python tinyllm.py sample --ckpt runs/<run> --prompt "ROMEO:" --top-p 0.9` samples from it.
    """),

    # --------------------------------------------------------------------------------------------
    heading("15. Exercises", r"""
    Each exercise has a cell for your answer and a **self-check** cell below it. Replace the
    placeholder, run your cell, then run the check: it says *not solved yet*, *not right yet* (and
    why) or *correct*. The checks never stop the notebook, so *Run all* works with the exercises
    unsolved. Solutions are at the end of the notebook; try first!
    """),
    code(r'''
    def check_exercise(number: int, check: Callable[[], None]) -> None:
        "Run one exercise's self-check and report, without ever stopping the notebook."
        try:
            check()
        except NotImplementedError:
            print(f"Exercise {number}: not solved yet. Write your answer in the cell above, run it, then run this cell.")
        except Exception as e:
            print(f"Exercise {number}: not right yet. {type(e).__name__}: {e}")
        else:
            print(f"Exercise {number}: correct!")
    '''),
    md(r"""
    **Exercise 1 — tokens are merge trees (section 3).** Every BPE token is either a byte (ids 0–255)
    or the merge of two earlier tokens: `tok.merges[i - 256]` is the pair that token `i` was made of.
    Write `my_token_bytes(tok, i)` returning the bytes of token `i`, using only `tok.merges`, not
    `tok.vocab`. *Hint: recursion.*
    """),
    code(r'''
    def my_token_bytes(tok: BPETokenizer, i: int) -> bytes:
        raise NotImplementedError  # your code here
    '''),
    code(r'''
    def check_exercise_1():
        for i in range(bpe.vocab_size):
            got = my_token_bytes(bpe, i)
            assert got == bpe.vocab[i], f"token {i}: expected {bpe.vocab[i]!r}, got {got!r}"


    check_exercise(1, check_exercise_1)
    '''),
    md(r"""
    **Exercise 2 — causal softmax (section 5).** Write `my_causal_softmax(scores)`: given a
    `(T, T)` matrix of scores, give weight zero to every key after its query and apply a softmax to
    each row, using only `torch.exp`, `max` and `sum` (not `F.softmax`). It must also work for huge
    scores, where `exp` overflows. *Hint: $\mathrm{softmax}(z) = \mathrm{softmax}(z - c)$ for any
    constant $c$.*
    """),
    code(r'''
    def my_causal_softmax(scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # your code here
    '''),
    code(r'''
    def check_exercise_2():
        torch.manual_seed(0)
        q, k, v = torch.randn(3, 1, 1, 6, 8).unbind(0)
        scores = (q @ k.transpose(-2, -1))[0, 0] / math.sqrt(8)
        expected = attention_by_hand(q, k, v)[1][0, 0]
        assert torch.allclose(my_causal_softmax(scores), expected, atol=1e-6), "weights differ from attention_by_hand's"
        big = my_causal_softmax(scores * 1000)
        assert torch.isfinite(big).all(), "not finite for large scores: subtract each row's maximum first"
        assert torch.allclose(big.sum(-1), torch.ones(6)), "rows must sum to 1"


    check_exercise(2, check_exercise_2)
    '''),
    md(r"""
    **Exercise 3 — counting parameters (section 8).** Write `my_num_params(cfg)`, a *formula* in
    `cfg.vocab_size`, `cfg.d_model`, `cfg.d_ff` and `cfg.n_layer` for the number of parameters of
    `TinyLLM(cfg)` (without building the model). Remember the weight tying and the norms.
    """),
    code(r'''
    def my_num_params(cfg: ModelConfig) -> int:
        raise NotImplementedError  # your code here
    '''),
    code(r'''
    def check_exercise_3():
        for name, vocab in [("tiny", 65), ("cpu", 65), ("9m", 65), ("cpu", 1024)]:
            cfg = ModelConfig.from_preset(name, vocab)
            expected = TinyLLM(cfg).num_params()
            assert my_num_params(cfg) == expected, f"{name} preset, vocab {vocab}: expected {expected:,}, got {my_num_params(cfg)}"


    check_exercise(3, check_exercise_3)
    '''),
    md(r"""
    **Exercise 4 — the schedule by hand (section 9).** Take a run with `lr` = 1e-3, `min_lr` = 1e-4,
    `warmup_steps` = 100 and `max_steps` = 3000. Without running `lr_at`, work out the learning rate
    at step 49 (counting from 0) and at step 1500, halfway through, and write them in `my_lrs`.
    """),
    code(r'''
    my_lrs = (None, None)  # (learning rate at step 49, learning rate at step 1500)
    '''),
    code(r'''
    def check_exercise_4():
        if None in my_lrs:
            raise NotImplementedError
        cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, max_steps=3000)
        for step, mine in zip((49, 1500), my_lrs):
            right = lr_at(step, step / cfg.max_steps, cfg)
            assert math.isclose(mine, right, rel_tol=1e-3), f"step {step}: {mine} is not right"


    check_exercise(4, check_exercise_4)
    '''),
    md(r"""
    **Exercise 5 — min-p sampling (section 11).** A newer alternative to top-p: keep every token whose
    probability is at least `min_p` times the probability of the *most likely* token. When the model
    is sure, that keeps one or two tokens; when it is unsure, many. Write `my_min_p_filter(logits,
    min_p)` for logits of shape `(B, V)`: return the logits with every other token set to `-inf`, so
    that the result can go straight into a softmax.
    """),
    code(r'''
    def my_min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
        raise NotImplementedError  # your code here
    '''),
    code(r'''
    def check_exercise_5():
        probs = torch.tensor([[0.50, 0.30, 0.10, 0.06, 0.04],
                              [0.22, 0.21, 0.20, 0.19, 0.18]])
        logits = probs.log() + 3.0  # logits are probabilities only up to a constant
        out = my_min_p_filter(logits, 0.15)
        assert out.shape == logits.shape, f"shape {tuple(out.shape)}, expected {tuple(logits.shape)}"
        kept = torch.isfinite(out)
        expected = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
        assert torch.equal(kept, expected), f"kept {kept.tolist()}, expected {expected.tolist()}"
        assert torch.equal(out[kept], logits[kept]), "the kept logits must not change"
        assert (out[~kept] == -math.inf).all(), "dropped tokens must be -inf"


    check_exercise(5, check_exercise_5)
    '''),
    md(r"""
    **Exercise 6 — the cost of the KV cache (section 12).** How many bytes does the KV cache of the
    `9m` model take when generating one sequence (batch 1) with all `block_size` slots filled, stored
    in 16-bit floats (2 bytes per number)? Take the sizes from `PRESETS["9m"]["model"]`, and compare
    your answer with the size of the model's weights in 16 bits.
    """),
    code(r'''
    my_kv_cache_bytes = None  # your answer, a whole number
    '''),
    code(r'''
    def check_exercise_6():
        if my_kv_cache_bytes is None:
            raise NotImplementedError
        cfg = ModelConfig.from_preset("9m", 65)
        caches = [KVCache(1, cfg.n_head, cfg.block_size, cfg.d_model // cfg.n_head, torch.device("cpu"), torch.float16)
                  for _ in range(cfg.n_layer)]
        right = sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c in caches)
        assert my_kv_cache_bytes == right, f"{my_kv_cache_bytes:,} bytes is not right"


    check_exercise(6, check_exercise_6)
    '''),

    # --------------------------------------------------------------------------------------------
    heading("16. Summary", r"""
    In one notebook you built and trained a language model from nothing but PyTorch:

    1. **Data**: a text file, downloaded once and checked by its SHA-256, split into training and
       validation text.
    2. **Tokenization**: characters (65 ids), and byte-level BPE, which learns merges of frequent
       neighbouring tokens within pre-split chunks and can encode any text at all.
    3. **Embeddings** turn ids into learned vectors.
    4. **Self-attention** lets each position take a weighted average of earlier positions' values,
       $\mathrm{softmax}(QK^\top/\sqrt{d} + M)V$, with a causal mask $M$; **multiple heads** do this
       in parallel subspaces, and **RoPE** rotates queries and keys so that scores depend on relative
       positions.
    5. A **block** is pre-norm attention plus a SwiGLU feed-forward layer, each around a residual
       connection; the **model** is an embedding, a stack of blocks, a norm and a tied output head.
    6. **Training** minimises next-token cross-entropy with AdamW, warmup and cosine decay, gradient
       clipping and (on GPUs) mixed precision, watching the validation loss in bits per character.
    7. **Sampling** picks tokens greedily or at random, shaped by temperature, top-k or top-p; a
       **KV cache** makes each new token cost one step.
    8. **Checkpoints** hold tensors and plain data only, so loading one never runs code.

    The same code, definition for definition, is `tinyllm.py`, with a command line for training and
    sampling.
    """),

    # --------------------------------------------------------------------------------------------
    heading("Solutions", r"""
    Each cell defines a solution and runs the exercise's self-check again.

    **1.** A byte is its own token; any other token is the concatenation of the two tokens it merged.
    """),
    code(r'''
    def my_token_bytes(tok: BPETokenizer, i: int) -> bytes:
        if i < 256:
            return bytes([i])
        a, b = tok.merges[i - 256]
        return my_token_bytes(tok, a) + my_token_bytes(tok, b)


    check_exercise(1, check_exercise_1)
    '''),
    md(r"""
    **2.** Masked scores become $-\infty$, whose exponential is exactly 0. Subtracting each row's
    maximum makes the largest exponent $e^0 = 1$, so nothing overflows (the diagonal is never masked,
    so every row has a finite maximum).
    """),
    code(r'''
    def my_causal_softmax(scores: torch.Tensor) -> torch.Tensor:
        T = scores.size(0)
        future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
        scores = scores.masked_fill(future, -math.inf)
        e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        return e / e.sum(dim=-1, keepdim=True)


    check_exercise(2, check_exercise_2)
    '''),
    md(r"""
    **3.** The embedding (shared with the head) has $V d$ weights. Each block has $3d^2$ (`qkv`)
    plus $d^2$ (`proj`) for attention, $2 d\, d_{ff}$ (`gate_up`) plus $d_{ff}\, d$ (`down`) for
    SwiGLU, and two RMSNorm gains of $d$ each; the final norm adds $d$:

    $$V d + n_{layer}\,(4d^2 + 3d\,d_{ff} + 2d) + d$$
    """),
    code(r'''
    def my_num_params(cfg: ModelConfig) -> int:
        d, f = cfg.d_model, cfg.d_ff
        return cfg.vocab_size * d + cfg.n_layer * (4 * d * d + 3 * d * f + 2 * d) + d


    check_exercise(3, check_exercise_3)
    '''),
    md(r"""
    **4.** Step 49 is in the warmup: $10^{-3} \cdot (49 + 1)/100 = 5 \times 10^{-4}$. At step 1500 the
    progress is $1500/3000 = 0.5$ and $\cos(\pi/2) = 0$, so the rate is halfway between the two ends:
    $10^{-4} + \tfrac12 (10^{-3} - 10^{-4}) = 5.5 \times 10^{-4}$.
    """),
    code(r'''
    my_lrs = (5e-4, 5.5e-4)

    check_exercise(4, check_exercise_4)
    '''),
    md(r"""
    **5.** Compare probabilities, not logits: compute the softmax, find each row's largest
    probability, and mask what falls below `min_p` times it.
    """),
    code(r'''
    def my_min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=-1)
        threshold = min_p * probs.max(dim=-1, keepdim=True).values
        return logits.masked_fill(probs < threshold, -math.inf)


    check_exercise(5, check_exercise_5)
    '''),
    md(r"""
    **6.** Every layer stores a key and a value (2) for every slot (`block_size`) and channel
    (`d_model`, all heads together), 2 bytes each: $2 \cdot n_{layer} \cdot T \cdot d \cdot 2$ bytes.
    For the `9m` preset that is about 2.4 MB, small next to its weights (about 18 MB in 16 bits).
    For large models with long contexts and many sequences at once it is the other way round, which
    is why recent models share keys and values across heads (grouped-query attention) to shrink the
    cache.
    """),
    code(r'''
    m = PRESETS["9m"]["model"]
    my_kv_cache_bytes = 2 * m["n_layer"] * m["block_size"] * m["d_model"] * 2
    print(f"KV cache: {my_kv_cache_bytes / 1e6:.2f} MB; weights in 16 bits: "
          f"{2 * TinyLLM(ModelConfig.from_preset('9m', 65)).num_params() / 1e6:.1f} MB")

    check_exercise(6, check_exercise_6)
    '''),
]


# ------------------------------------------------------------------------------------------------
# Building the notebook
# ------------------------------------------------------------------------------------------------

def build(module: Module, module_only: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The notebook's cells as (kind, source) pairs, and warnings about what the layout missed."""
    warnings: list[str] = []
    excluded_sections = module.module_only_sections()
    wanted = {name for name, d in module.defs.items() if name not in module_only and d.section not in excluded_sections}
    placed: set[str] = set()
    # First pass: the cells, each tagged with the module section it belongs to.
    cells: list[tuple[str, str, int]] = []
    current = 0
    for item in CHAPTER:
        if isinstance(item, Section):
            if item.number not in module.sections:
                raise SystemExit(f"build_notebook: tinyllm.py has no section {item.number}; update CHAPTER")
            current = item.number
            title = module.sections[item.number][0]
            cells.append(("markdown", f"## {item.number}. {title}\n\n{item.text}", current))
        elif isinstance(item, Heading):
            current = 10**6  # after every module section
            cells.append(("markdown", f"## {item.title}\n\n{item.text}", current))
        elif isinstance(item, Md):
            cells.append(("markdown", item.text, current))
        elif isinstance(item, Code):
            cells.append(("code", item.text, current))
        elif isinstance(item, Imports):
            extra = textwrap.dedent(item.extra).strip("\n")
            cells.append(("code", "\n".join(module.imports) + ("\n\n" + extra if extra else ""), current))
        elif isinstance(item, Defs):
            sources = []
            for name in item.names:
                if name in placed:
                    raise SystemExit(f"build_notebook: {name} is placed twice in CHAPTER")
                placed.add(name)
                sources.append(NOTEBOOK_DATA_DIR if name == "DATA_DIR" else module.source_of(name))
            cells.append(("code", "\n\n\n".join(sources), current))
    # Definitions the layout does not mention: add them at the end of their section.
    missing = sorted(wanted - placed, key=lambda n: module.defs[n].start)
    for name in missing:
        sec = max(module.defs[name].section, 1)
        index = max(i for i, (_, _, s) in enumerate(cells) if s <= sec)
        if cells[index][0] == "code" and cells[index][1].startswith("# (new in tinyllm.py"):
            kind, text, s = cells[index]
            cells[index] = (kind, text + "\n\n\n" + module.source_of(name), s)
        else:
            cells.insert(index + 1, ("code", f"# (new in tinyllm.py; not yet described in this chapter)\n"
                                             f"{module.source_of(name)}", sec))
        warnings.append(f"{name} (section {sec}) is not in CHAPTER: copied to the end of its section; "
                        f"give it prose in .ci/build_notebook.py")
    stale = sorted(placed - set(module.defs) - {"DATA_DIR"})
    if stale:
        raise SystemExit(f"build_notebook: CHAPTER names {stale}, which tinyllm.py no longer defines")
    for n, (title, _) in sorted(module.sections.items()):
        if n not in excluded_sections and not any(isinstance(i, Section) and i.number == n for i in CHAPTER):
            warnings.append(f"section {n} ({title}) of tinyllm.py has no heading in CHAPTER")
    return [(kind, text) for kind, text, _ in cells], warnings


def make_notebook(cells: list[tuple[str, str]]):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    for i, (kind, text) in enumerate(cells):
        cell = new_code_cell(text) if kind == "code" else new_markdown_cell(text)
        cell.id = f"cell-{i:03d}"  # stable ids, so that rebuilding gives the same file
        nb.cells.append(cell)
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",  # Colab opens the notebook with a GPU runtime
        "colab": {"provenance": [], "gpuType": "T4"},
    }
    nbformat.validate(nb)
    return nb


def collapse_carriage_returns(text: str) -> str:
    """What a terminal would show: on each line, only what follows its last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def clean_outputs(nb) -> None:
    """Strip what should not be committed: widget state, progress-bar widgets, timing metadata."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        outputs = []
        for out in cell.outputs:
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                continue  # a tqdm bar: without widget state it would show a frozen 0%
            if out.output_type == "stream":
                out.text = collapse_carriage_returns(out.text)
                if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == out.name:
                    outputs[-1].text += out.text
                    continue
            outputs.append(out)
        cell.outputs = [o for o in outputs if not (o.output_type == "stream" and not o.text.strip())]


def execute(nb, timeout: int = 1800, threads: int | None = None):
    from nbclient import NotebookClient

    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the kernel inherits it: fewer threads on a busy machine
    if not os.environ.get("TINYLLM_DATA_DIR") and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["TINYLLM_DATA_DIR"] = str(ROOT.parent / "shared" / "data")  # the offline copy, as in CI
    mode = "TINYLLM_FAST=1" if os.environ.get("TINYLLM_FAST") == "1" else "full"
    print(f"executing the notebook ({mode} mode, cwd {ROOT}) ...", flush=True)
    t0 = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    print(f"executed in {time.perf_counter() - t0:.0f} s")
    clean_outputs(nb)
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execute", action="store_true", help="run the notebook and keep its outputs")
    parser.add_argument("--check", action="store_true", help="exit 1 if the notebook's cells are out of date")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the kernel (default: PyTorch's choice)")
    parser.add_argument("--out", type=Path, default=NOTEBOOK_PATH, help="where to write (default: tiny_llm.ipynb)")
    args = parser.parse_args()

    import nbformat

    cells, warnings = build(Module(MODULE_PATH), read_module_only())
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.check:
        current = nbformat.read(args.out, as_version=4)
        have = [(c.cell_type, c.source) for c in current.cells]
        if have != cells:
            print(f"{args.out.name} is out of date: run python .ci/build_notebook.py --execute", file=sys.stderr)
            return 1
        print(f"{args.out.name} is up to date")
        return 0
    nb = make_notebook(cells)
    if args.execute:
        execute(nb, threads=args.threads)
    nbformat.write(nb, args.out)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({len(cells)} cells, {size / 1e6:.2f} MB)")
    if size > MAX_BYTES:
        print(f"warning: {args.out.name} is over {MAX_BYTES / 1e6:.0f} MB: lower the figures' dpi", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
