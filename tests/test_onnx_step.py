"""The web page's step of generation (export_onnx.CachedForward), in plain PyTorch: the same logits and
tokens as the model's own forward with its KV cache (section 12). No onnx needed, so this runs everywhere."""

from __future__ import annotations

import pytest
import torch

import tinyllm
from conftest import run_without, tiny_model
from tinyllm_toolkit.export_onnx import CachedForward, empty_cache_shape

pytestmark = pytest.mark.usefixtures("single_thread")


def shaken(model: tinyllm.TinyLLM) -> tinyllm.TinyLLM:
    """The model with its weights moved far from their initial values, so that every layer matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def compare_steps(model: tinyllm.TinyLLM, prompt: torch.Tensor, steps: int) -> list[int]:
    """Run CachedForward and model(..., cache=new_cache) side by side, greedy; returns the tokens."""
    step, cache = CachedForward(model), tinyllm.new_cache(model, prompt.size(0))
    shape = empty_cache_shape(model.config)  # (n_layer, 1, n_head, 0, head_dim): nothing seen yet
    shape[1] = prompt.size(0)
    k = v = torch.zeros(shape)
    feed, seen, tokens = prompt[:, -model.config.block_size:], 0, []
    with torch.no_grad():
        for _ in range(steps):
            ours, _ = model(feed, cache=cache)
            theirs, k, v = step(feed, torch.tensor(seen), k, v)
            assert theirs.shape == ours.shape
            assert (theirs - ours).abs().max() < 1e-5, (seen, (theirs - ours).abs().max())
            seen += feed.size(1)
            assert k.shape == v.shape and k.size(3) == min(seen, model.config.block_size)  # the window's tokens
            feed = ours[:, -1:].argmax(-1)
            tokens.append(feed[0, 0].item())
    return tokens


@pytest.mark.parametrize("prompt_length", [1, 7, 32])
def test_the_step_computes_the_models_cached_forward_past_the_context(prompt_length):
    torch.manual_seed(prompt_length)
    model = shaken(tiny_model(50, seed=prompt_length))
    prompt = torch.randint(0, 50, (2, prompt_length))  # two rows: the batch axis goes through too
    tokens = compare_steps(model, prompt, 3 * model.config.block_size)  # the window slides twice over
    want = tinyllm.generate(model, prompt[:1], 3 * model.config.block_size, temperature=0)[0, prompt_length:].tolist()
    assert tokens == want


@pytest.mark.parametrize("qk_norm", [False, True])
def test_the_step_holds_for_other_shapes(qk_norm):
    torch.manual_seed(0)
    model = shaken(tiny_model(40, n_layer=3, n_head=4, d_model=32, block_size=16, rope_theta=500.0, qk_norm=qk_norm))
    compare_steps(model, torch.randint(0, 40, (1, 16)), 40)


def test_the_step_leaves_the_model_as_it_was():
    model = tiny_model(30)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = CachedForward(model)
    assert all(b.attn.by_hand for b in step.model.blocks)  # its copy runs attention by hand ...
    assert not any(b.attn.by_hand for b in model.blocks)  # ... the model keeps its fused kernel
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_step_needs_no_onnx():
    code = ("import torch; from tinyllm_toolkit.export_onnx import CachedForward, empty_cache_shape; "
            "k = torch.zeros(empty_cache_shape(model.config)); "
            "logits, k, v = CachedForward(model)(torch.tensor([[1, 2, 3]]), torch.tensor(0), k, k); "
            "print(tuple(logits.shape), tuple(k.shape))")
    result = run_without(["onnx", "onnxruntime"], code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 3, 10) (2, 1, 2, 3, 16)"
