"""Why the cpu preset trains in bf16 on a CPU with bf16 instructions, with attention kept in float32.

    python bench/bench_cpu_bf16.py              # 2 threads, the cpu preset's shapes and the 9m preset's
    python bench/bench_cpu_bf16.py --threads 1

Prints, in float32 and in bf16: one matrix product of the cpu preset's feed-forward layer, and
attention forward + backward (PyTorch's fused kernel, its math backend, and Part I's attention_by_hand)
at the cpu preset's training shape and at two of the 9m preset's. Medians of repeated timings; no
training, so it takes about a minute. On a CPU without bf16 instructions bf16 is emulated: expect it
to be slower everywhere (that is why dtype "auto" picks bf16 only where torch.cpu finds them).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import tinyllm

ATTENTION_SHAPES = ((24, 4, 64, 32), (16, 6, 256, 64), (64, 6, 256, 64))  # (B, H, T, head_dim)


def median_ms(fn: Callable[[], None], repeats: int, rounds: int = 5) -> float:
    """The median over rounds of the mean time of `repeats` calls, after a warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - t) / repeats * 1000)
    return statistics.median(times)


def matmul_ms(dtype: torch.dtype, tokens: int = 24 * 64, d_model: int = 128, hidden: int = 768) -> float:
    """The cpu preset's gate_up product: (batch x context, d_model) @ (d_model, 2 d_ff)."""
    x, w = torch.randn(tokens, d_model, dtype=dtype), torch.randn(hidden, d_model, dtype=dtype)
    return median_ms(lambda: x @ w.T, repeats=100)


def attention_ms(shape: tuple[int, int, int, int], dtype: torch.dtype, how: str) -> float:
    """Causal attention forward + backward at `shape`, by PyTorch's fused kernel, its math backend, or by hand."""
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(*shape, dtype=dtype)

    def run() -> None:
        if how == "by hand":
            y, _ = tinyllm.attention_by_hand(q, k, v, causal=True)
        elif how == "math":
            with sdpa_kernel(SDPBackend.MATH):
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y.backward(grad)

    return median_ms(run, repeats=20 if shape[2] <= 64 else 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), bf16 instructions: {tinyllm.cpu_has_bf16()}")
    fp32, bf16 = matmul_ms(torch.float32), matmul_ms(torch.bfloat16)
    print(f"matmul (1536, 128) @ (128, 768): float32 {fp32:.2f} ms, bf16 {bf16:.2f} ms ({fp32 / bf16:.2f}x)")
    print("attention forward + backward, causal (ms):")
    print(f"  {'(B, H, T, head_dim)':<20} {'kernel':<8} {'float32':>8} {'bf16':>8}")
    for shape in ATTENTION_SHAPES:
        for how in ("fused", "math", "by hand"):
            a, b = attention_ms(shape, torch.float32, how), attention_ms(shape, torch.bfloat16, how)
            print(f"  {str(shape):<20} {how:<8} {a:8.2f} {b:8.2f}", flush=True)


if __name__ == "__main__":
    main()
