"""Tokenizer benchmark: tinyllm's BPE beside a textbook BPE, both trained on TinyShakespeare in one run.

    python bench/bench_tokenizer.py                   # downloads TinyShakespeare into data/ if needed
    python bench/bench_tokenizer.py --skip-textbook   # ours only, a few seconds

It exits with status 1 if a target of issue 2 is missed: >= 20x faster than the textbook at vocab
512, the same token count within 5%, vocab 4096 in seconds, exact round trips.

The textbook BPE below is the loop every tutorial starts with (Sennrich et al., 2016): count every pair
in every word, merge the most frequent pair everywhere, repeat. It already keeps each distinct chunk
once with its count, as the paper does, so it is a fair baseline, not a straw man. It uses the same
pre-split pattern and the same tie-break (most frequent pair, then the smallest pair by ids) as
tinyllm, so both learn the same merges and their times compare like with like. At vocab 4096 the
textbook would take minutes, so it is not run there; the table gives an estimate, labelled as such.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time

import tinyllm  # noqa: E402


# ---- the textbook BPE, written from scratch for this comparison ----------------------------------

def textbook_train(text: str, vocab_size: int, pattern: str = tinyllm.SPLIT_PATTERN,
                   ) -> tuple[list[tuple[int, int]], dict[tuple[int, ...], int], list[float]]:
    """Learn merges the obvious way: the algorithm of Sennrich et al. (2016), on UTF-8 bytes.

    The text is cut into chunks and each distinct chunk is kept once with its frequency (the paper
    works on such a word-frequency dictionary too). Then, for every merge: count every pair in every
    word, take the most frequent pair, merge it in every word. Returns the merges, the final words
    (as tuples of ids, with their frequencies) and the time each merge took.
    """
    freqs: dict[str, int] = {}
    for chunk in re.findall(pattern, text):
        freqs[chunk] = freqs.get(chunk, 0) + 1
    words = [(list(chunk.encode("utf-8")), freq) for chunk, freq in freqs.items()]
    merges: list[tuple[int, int]] = []
    merge_times: list[float] = []
    for new_id in range(256, vocab_size):
        t0 = time.perf_counter()
        counts: dict[tuple[int, int], int] = {}
        for ids, freq in words:  # count every pair of every word, every time
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent; ties go to the smallest pair
        merges.append(best)
        words = [(tinyllm.merge_pair(ids, best, new_id), freq) for ids, freq in words]  # same primitive as ours
        merge_times.append(time.perf_counter() - t0)
    return merges, {tuple(ids): freq for ids, freq in words}, merge_times


# ---- measuring -----------------------------------------------------------------------------------

def best_of(n: int, fn):
    """Run fn() n times; return (the fastest time in seconds, the last result)."""
    best, result = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def encode_time(tok: tinyllm.BPETokenizer, text: str, repeats: int = 3) -> tuple[float, list[int]]:
    """Best-of-n time to encode `text`, with the chunk cache emptied before each run (a cold start)."""
    def run():
        tok.cache.clear()
        return tok.encode(text)
    return best_of(repeats, run)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores; {tinyllm.versions()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours to take the best of")
    parser.add_argument("--skip-textbook", action="store_true", help="time only ours (the textbook takes ~half a minute)")
    args = parser.parse_args()

    text = tinyllm.load_text("shakespeare")
    print(f"machine: {machine()}")
    print(f"corpus: TinyShakespeare, {len(text):,} characters, {len(text.encode('utf-8')):,} bytes\n")

    rows = []  # (what, seconds or text, note)
    problems = []  # the targets that this run missed
    t512, ours512 = best_of(args.repeats, lambda: tinyllm.BPETokenizer.train(text, 512))
    rows.append(("train vocab 512, ours", f"{t512:.2f} s", f"best of {args.repeats}"))
    enc512, ids512 = encode_time(ours512, text)

    if not args.skip_textbook:
        t0 = time.perf_counter()
        tb_merges, tb_words, merge_times = textbook_train(text, 512)
        tb512 = time.perf_counter() - t0
        tb_tokens = sum(len(ids) * freq for ids, freq in tb_words.items())
        rows.append(("train vocab 512, textbook", f"{tb512:.2f} s", "one run"))
        rows.append(("speed-up at vocab 512", f"{tb512 / t512:.1f}x", "must be >= 20x"))
        same = "identical" if tb_merges == ours512.merges else "DIFFERENT"
        diff = abs(len(ids512) - tb_tokens) / tb_tokens
        rows.append(("merges, ours vs textbook", same, ""))
        rows.append(("tokens, ours vs textbook", f"{len(ids512):,} vs {tb_tokens:,}", f"differ by {diff:.2%} (limit 5%)"))
        if tb512 / t512 < 20:
            problems.append(f"speed-up {tb512 / t512:.1f}x is below 20x")
        if diff > 0.05:
            problems.append(f"token counts differ by {diff:.2%}, more than 5%")

    t4096, ours4096 = best_of(args.repeats, lambda: tinyllm.BPETokenizer.train(text, 4096))
    rows.append(("train vocab 4096, ours", f"{t4096:.2f} s", f"best of {args.repeats}"))
    if t4096 > 10:
        problems.append(f"vocab 4096 took {t4096:.1f} s, not a few seconds")
    if not args.skip_textbook:
        # Not run: each textbook merge recounts the whole text. Later merges are a little cheaper than
        # the ones we timed (the text shrinks as tokens merge), so take the mean of the last 64.
        per_merge = sum(merge_times[-64:]) / len(merge_times[-64:])
        estimate = tb512 + per_merge * (4096 - 512)
        rows.append(("train vocab 4096, textbook", f"~{estimate / 60:.0f} min", "ESTIMATE, not run"))
        rows.append(("speed-up at vocab 4096", f"~{estimate / t4096:.0f}x", "from the estimate"))

    enc4096, ids4096 = encode_time(ours4096, text)
    rows.append(("encode corpus, vocab 512", f"{enc512:.2f} s", f"{len(ids512):,} tokens, cold cache, best of 3"))
    rows.append(("encode corpus, vocab 4096", f"{enc4096:.2f} s", f"{len(ids4096):,} tokens, cold cache, best of 3"))
    rows.append(("chars per token, vocab 512", f"{len(text) / len(ids512):.2f}", ""))
    rows.append(("chars per token, vocab 4096", f"{len(text) / len(ids4096):.2f}", ""))
    if ours512.decode(ids512) != text or ours4096.decode(ids4096) != text:
        problems.append("decode(encode(corpus)) is not the corpus")

    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:>{vwidth}}  {note}")
    print("\n" + ("\n".join(f"FAILED: {p}" for p in problems) if problems else "all checks passed"))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
