"""The model: shapes of every part, attention by hand = SDPA, RoPE, init loss, presets, tying, no biases."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tinyllm
from tinyllm import (Block, CausalSelfAttention, KVCache, ModelConfig, RMSNorm, SwiGLU, TinyLLM, apply_rope,
                     attention_by_hand, rope_angles)

pytestmark = pytest.mark.usefixtures("single_thread")

V = 65


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[False, True], ids=["", "qk_norm"])
def cfg(request) -> ModelConfig:
    return ModelConfig.from_preset("tiny", V, qk_norm=request.param)


def rope_for(cfg: ModelConfig, T: int, start: int = 0):
    return rope_angles(cfg.d_model // cfg.n_head, torch.arange(start, start + T), cfg.rope_theta)


# --- shapes ---------------------------------------------------------------------------------------

def test_attention_by_hand_shapes_and_weights():
    B, H, T, D = 2, 3, 7, 8
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    y, w = attention_by_hand(q, k, v)
    assert y.shape == (B, H, T, D)
    assert w.shape == (B, H, T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))
    assert (w.triu(diagonal=1) == 0).all(), "a query attended to a later position"
    assert (w[..., torch.ones(T, T, dtype=torch.bool).tril()] > 0).all()  # and every earlier one


def test_rope_angles_shapes():
    cos, sin = rope_angles(16, torch.arange(10))
    assert cos.shape == sin.shape == (10, 8)  # one angle per pair of channels
    torch.testing.assert_close(cos[0], torch.ones(8))  # position 0 is not rotated
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.ones(10, 8))


def test_components_shapes(cfg):
    B, T, C = 2, 5, cfg.d_model
    x = torch.randn(B, T, C)
    cos, sin = rope_for(cfg, T)
    assert CausalSelfAttention(cfg)(x, cos, sin).shape == (B, T, C)
    assert RMSNorm(C)(x).shape == (B, T, C)
    assert SwiGLU(cfg)(x).shape == (B, T, C)
    assert Block(cfg)(x, cos, sin).shape == (B, T, C)
    q = torch.randn(B, cfg.n_head, T, C // cfg.n_head)
    assert apply_rope(q, cos, sin).shape == q.shape


def test_model_logits_shape_and_loss(cfg):
    model = TinyLLM(cfg)
    idx = torch.randint(V, (3, cfg.block_size))
    logits, loss = model(idx)
    assert logits.shape == (3, cfg.block_size, V)
    assert loss is None
    logits2, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)
    torch.testing.assert_close(logits, logits2)


def test_model_rejects_sequence_longer_than_context(cfg):
    model = TinyLLM(cfg)
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))


def test_model_is_causal(cfg):
    """Changing a later token never changes the logits at earlier positions."""
    model = TinyLLM(cfg).eval()
    idx = torch.randint(V, (1, 12))
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % V
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


# --- parts --------------------------------------------------------------------------------------

def test_rmsnorm_unit_rms_and_scale_invariant():
    norm = RMSNorm(16)
    x = torch.randn(4, 16) * 7 + 3
    y = norm(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm(5 * x), y, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        norm.weight.fill_(2.0)
    torch.testing.assert_close(norm(x), 2 * y)


def test_swiglu_is_down_of_silu_gate_times_up(cfg):
    mlp = SwiGLU(cfg)
    x = torch.randn(2, 3, cfg.d_model)
    gate_w, up_w = mlp.gate_up.weight.chunk(2, dim=0)
    expected = (F.silu(x @ gate_w.T) * (x @ up_w.T)) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), expected)


# --- attention by hand = SDPA -----------------------------------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
def test_attention_by_hand_equals_sdpa(causal):
    q, k, v = (torch.randn(2, 4, 9, 16) for _ in range(3))
    y, _ = attention_by_hand(q, k, v, causal=causal)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_attention_module_by_hand_equals_fast_path(cfg):
    attn = CausalSelfAttention(cfg)
    x = torch.randn(2, 10, cfg.d_model)
    cos, sin = rope_for(cfg, 10)
    fast = attn(x, cos, sin)
    attn.by_hand = True
    slow = attn(x, cos, sin)
    torch.testing.assert_close(slow, fast, rtol=1e-5, atol=1e-5)
    assert attn.weights is not None and attn.weights.shape == (2, cfg.n_head, 10, 10)


def test_whole_model_by_hand_equals_fast_path(cfg):
    model = TinyLLM(cfg).eval()
    idx = torch.randint(V, (2, 20))
    fast, _ = model(idx)
    for block in model.blocks:
        block.attn.by_hand = True
    slow, _ = model(idx)
    torch.testing.assert_close(slow, fast, rtol=1e-4, atol=1e-5)


def test_attention_runs_in_float32_under_cpu_autocast(cfg, monkeypatch):
    """Under bf16 autocast on a CPU the matmuls around attention are bf16, attention itself float32
    (PyTorch's CPU attention kernel is slower in bf16); the result is the float32 layer's, to bf16's precision."""
    attn = CausalSelfAttention(cfg)
    x = torch.randn(2, 10, cfg.d_model)
    cos, sin = rope_for(cfg, 10)
    reference = attn(x, cos, sin)
    seen, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v, **kw: seen.append(
        (q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu"))) or sdpa(q, k, v, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, cos, sin)
    assert seen == [(torch.float32, torch.float32, torch.float32, False)]
    assert y.dtype == torch.bfloat16  # the output projection did run in bf16
    torch.testing.assert_close(y.float(), reference, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_runs_on_cpu(cfg, dtype):
    """Weights in bf16 or fp16 (no autocast): attention still computes in float32 on a CPU, and hands
    the projection what its weights are, so the forward pass keeps the model's dtype."""
    model = TinyLLM(cfg).to(dtype).eval()
    logits, _ = model(torch.randint(V, (2, 12)))
    assert logits.dtype == dtype and torch.isfinite(logits.float()).all()


def test_cpu_has_bf16_matches_the_cpu_flags():
    flags = Path("/proc/cpuinfo")
    if not flags.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    words = set(flags.read_text().split())
    assert tinyllm.cpu_has_bf16() == bool({"avx512_bf16", "amx_tile"} & words)


# --- RoPE -----------------------------------------------------------------------------------------

def test_rope_dot_product_depends_only_on_offset():
    D = 16
    q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)

    def score(m: int, n: int) -> float:
        cq, sq = rope_angles(D, torch.tensor([m]))
        ck, sk = rope_angles(D, torch.tensor([n]))
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    for m, n in [(5, 2), (9, 9), (3, 11)]:
        for shift in (1, 17, 400):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), rel=1e-4, abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)  # a different offset gives a different score


def test_rope_preserves_length():
    x = torch.randn(2, 3, 8, 16)
    cos, sin = rope_angles(16, torch.arange(8))
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


# --- init, presets, parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("vocab", [65, 512])
def test_loss_at_init_is_ln_vocab(vocab):
    model = TinyLLM(ModelConfig.from_preset("tiny", vocab))
    idx = torch.randint(vocab, (8, 32))
    targets = torch.randint(vocab, (8, 32))
    _, loss = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(vocab), abs=0.05)


def test_9m_preset_parameter_count():
    model = TinyLLM(ModelConfig.from_preset("9m", 65))
    assert 8.5e6 <= model.num_params() <= 9.5e6
    assert model.config.block_size == 256


@pytest.mark.parametrize("preset", list(tinyllm.PRESETS))
def test_presets_build_and_count_parameters(preset):
    cfg = ModelConfig.from_preset(preset, V)
    assert cfg.d_model % cfg.n_head == 0 and (cfg.d_model // cfg.n_head) % 2 == 0  # RoPE rotates pairs
    model = TinyLLM(cfg)
    d, L = cfg.d_model, cfg.n_layer
    per_block = 3 * d * d + d * d + 2 * d * cfg.d_ff + cfg.d_ff * d + 2 * d  # qkv, proj, gate_up, down, 2 norms
    per_block += 2 * (d // cfg.n_head) if cfg.qk_norm else 0  # QK-norm's gains, one per head channel
    assert model.num_params() == V * d + L * per_block + d  # embedding (= head), blocks, final norm


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        ModelConfig.from_preset("huge", V)


def test_head_is_tied_to_embedding(cfg):
    model = TinyLLM(cfg)
    assert model.head.weight is model.embed.weight
    distinct = {id(p) for p in model.parameters()}
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert len(distinct) == len(list(model.parameters()))  # the tied matrix is one parameter, counted once
    with torch.no_grad():
        model.embed.weight[3].zero_()
    assert (model.head.weight[3] == 0).all()


def test_no_biases(cfg):
    model = TinyLLM(cfg)
    assert not [n for n, _ in model.named_parameters() if "bias" in n]
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_residual_output_layers_start_smaller(cfg):
    model = TinyLLM(ModelConfig.from_preset("tiny", V, n_layer=8, d_model=64, d_ff=256))
    proj_std = torch.cat([b.attn.proj.weight.flatten() for b in model.blocks]).std().item()
    qkv_std = torch.cat([b.attn.qkv.weight.flatten() for b in model.blocks]).std().item()
    assert qkv_std == pytest.approx(0.02, rel=0.1)
    assert proj_std == pytest.approx(0.02 / math.sqrt(16), rel=0.1)


# --- KV cache -------------------------------------------------------------------------------------

def test_cached_forward_equals_full_forward(cfg):
    """Feeding a prompt, then one token at a time through the cache, gives the full forward's logits."""
    model = TinyLLM(cfg).eval()
    idx = torch.randint(V, (2, 20))
    full, _ = model(idx)
    cache = tinyllm.new_cache(model, 2)
    first, _ = model(idx[:, :12], cache=cache)
    steps = [model(idx[:, t:t + 1], cache=cache)[0] for t in range(12, 20)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, rtol=1e-4, atol=1e-5)


def test_kv_cache_is_a_ring_of_block_size():
    cache = KVCache(1, 2, 4, 8, torch.device("cpu"), torch.float32)
    k = torch.randn(1, 2, 3, 8)
    ks, vs = cache.add(k, k)
    assert ks.shape == (1, 2, 3, 8) and cache.seen == 3
    for i in range(5):
        new = torch.full((1, 2, 1, 8), float(i))
        ks, _ = cache.add(new, new)
    assert ks.shape == (1, 2, 4, 8) and cache.seen == 8
    assert sorted(ks[0, 0, :, 0].tolist()) == [1.0, 2.0, 3.0, 4.0]  # the oldest entries were dropped
    with pytest.raises(ValueError):
        cache.add(torch.randn(1, 2, 2, 8), torch.randn(1, 2, 2, 8))  # after the prompt, one token at a time


# --- a config the network cannot take is refused when it is made --------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"n_head": 0}, r"n_head must be a positive integer, got 0"),  # was a ZeroDivisionError
    ({"vocab_size": 0}, r"vocab_size must be a positive integer, got 0"),  # was an index error
    ({"block_size": -1}, r"block_size must be a positive integer, got -1"),
    ({"n_layer": 0}, r"n_layer must be a positive integer, got 0"),
    ({"d_model": 0}, r"d_model must be a positive integer, got 0"),
    ({"d_ff": 64.0}, r"d_ff must be a positive integer, got 64\.0"),
    ({"d_model": 30, "n_head": 4}, r"d_model \(30\) must be divisible by n_head \(4\)"),  # was a bare assert
    ({"d_model": 30, "n_head": 2}, r"head size d_model / n_head = 15 must be even: RoPE"),  # was a shape error in RoPE
    ({"dropout": 1.0}, r"dropout must be at least 0 and below 1, got 1\.0"),
    ({"dropout": -0.1}, r"dropout must be at least 0 and below 1"),
    ({"dropout": math.nan}, r"dropout must be at least 0 and below 1"),
    ({"rope_theta": 0.0}, r"rope_theta must be a positive number, got 0\.0"),
    ({"rope_theta": math.inf}, r"rope_theta must be a positive number"),
])
def test_a_config_the_network_cannot_take_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**tinyllm.PRESETS["tiny"]["model"], "vocab_size": V, **fields})


def test_a_checkpoint_with_an_impossible_config_is_damaged(tmp_path, cfg):
    path = tmp_path / "x.pt"
    tinyllm.save_checkpoint(path, TinyLLM(cfg))
    raw = torch.load(path, weights_only=True)
    raw["model_config"]["n_head"] = 0
    torch.save(raw, path)
    with pytest.raises(ValueError, match=r"x\.pt is damaged.*n_head must be a positive integer"):
        tinyllm.load_checkpoint(path)
