"""The chapter's stepping stones (tinyllm.py sections 4, 5 and 9): each step equals the one before.

The baselines (cross-entropy by hand, the counted and the learned bigram) and attention built up
from one head to the fused multi-head layer.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tinyllm import (AttentionHead, BigramLM, CausalSelfAttention, MultiHeadAttention, attention_by_hand,
                     bigram_probs, cross_entropy_by_hand, rope_angles)


def test_cross_entropy_by_hand_equals_pytorch():
    torch.manual_seed(0)
    logits, targets = torch.randn(50, 11), torch.randint(0, 11, (50,))
    assert torch.allclose(cross_entropy_by_hand(logits, targets), F.cross_entropy(logits, targets), atol=1e-6)
    uniform = torch.zeros(3, 65)
    assert math.isclose(cross_entropy_by_hand(uniform, torch.tensor([0, 5, 64])).item(), math.log(65), rel_tol=1e-6)


def test_bigram_probs_are_distributions_of_the_counts():
    ids = torch.tensor([0, 1, 0, 1, 0, 2])
    p = bigram_probs(ids, 3, smoothing=0.0)
    assert p.shape == (3, 3)
    assert torch.allclose(p[0], torch.tensor([0.0, 2 / 3, 1 / 3]))  # 0 is followed by 1 twice and by 2 once
    assert torch.allclose(p[1], torch.tensor([1.0, 0.0, 0.0]))
    smoothed = bigram_probs(ids, 3)
    assert torch.allclose(smoothed.sum(1), torch.ones(3)) and (smoothed > 0).all()


def test_bigram_model_shapes_loss_and_start():
    cfg = SimpleNamespace(vocab_size=17, block_size=8)
    model = BigramLM(cfg)
    idx = torch.randint(0, 17, (3, 8))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 8, 17)
    assert math.isclose(loss.item(), math.log(17), rel_tol=1e-6)  # starts as the uniform model
    assert model(idx)[1] is None


def test_bigram_model_learns_the_counted_table():
    torch.manual_seed(0)
    ids = torch.randint(0, 5, (2000,))
    ids[1::2] = (ids[0::2] + 1) % 5  # every even token is followed by its successor
    model = BigramLM(SimpleNamespace(vocab_size=5, block_size=16))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.0)
    x, y = ids[:-1].view(1, -1), ids[1:].view(1, -1)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    counted = -bigram_probs(ids, 5, smoothing=0.0)[ids[:-1], ids[1:]].log().mean()
    assert loss.item() == pytest.approx(counted.item(), abs=0.01)  # the counted table is the optimum


def test_one_head_is_attention_by_hand_of_its_projections():
    torch.manual_seed(0)
    head = AttentionHead(16, 8)
    x = torch.randn(2, 9, 16)
    q, k, v = (x @ w.weight.T for w in (head.query, head.key, head.value))
    expected, weights = attention_by_hand(q[:, None], k[:, None], v[:, None])
    assert torch.allclose(head(x), expected[:, 0], atol=1e-6)
    assert torch.allclose(head.weights, weights[:, 0])


def test_multi_head_by_hand_equals_the_fused_layer_without_rotation():
    torch.manual_seed(0)
    cfg = SimpleNamespace(d_model=32, n_head=4, d_ff=64, dropout=0.0, qk_norm=False)
    slow = MultiHeadAttention(cfg.d_model, cfg.n_head)
    fused = CausalSelfAttention(cfg)
    with torch.no_grad():  # the heads' projections stacked: all queries, then all keys, then all values
        fused.qkv.weight.copy_(torch.cat([torch.cat([getattr(h, name).weight for h in slow.heads])
                                          for name in ("query", "key", "value")]))
        fused.proj.weight.copy_(slow.proj.weight)
    x = torch.randn(2, 10, cfg.d_model)
    cos, sin = rope_angles(cfg.d_model // cfg.n_head, torch.zeros(10))  # angle 0 everywhere: no rotation
    assert torch.allclose(fused(x, cos, sin), slow(x), atol=1e-5)
