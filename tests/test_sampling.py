"""Sampling: greedy, temperature, top-k, top-p, seeds, stops, streaming, long prompts, the KV cache."""

import math

import pytest
import torch

import tinyllm
import torch.nn.functional as F

from tinyllm import (CharTokenizer, ModelConfig, TinyLLM, TrainConfig, complete, generate_tokens, sample_token,
                     split_train_val, train)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(corpus_text):
    """A tiny model trained briefly on the corpus, so that its predictions are not all near-ties."""
    torch.set_num_threads(1)
    tok = CharTokenizer.from_text(corpus_text)
    train_ids, val_ids = split_train_val(tok.encode(corpus_text))
    torch.manual_seed(0)
    model = TinyLLM(ModelConfig.from_preset("tiny", tok.vocab_size))
    train(model, train_ids, val_ids, TrainConfig.from_preset("tiny", max_steps=150, device="cpu", progress=False))
    return model.eval(), tok, val_ids


def ids_of(tok, text: str) -> torch.Tensor:
    return torch.tensor([tok.encode(text)])


# --- sample_token on crafted logits -------------------------------------------------------------

PROBS = torch.tensor([[0.6, 0.3, 0.1]])


def draws(n: int = 3000, **kwargs) -> set[int]:
    logits = PROBS.log().expand(n, 3)
    return set(sample_token(logits, generator=torch.Generator().manual_seed(0), **kwargs).flatten().tolist())


def test_temperature_zero_is_argmax():
    logits = torch.randn(16, 50)
    assert torch.equal(sample_token(logits, temperature=0), logits.argmax(-1, keepdim=True))


def test_sample_token_shape():
    assert sample_token(torch.randn(4, 10)).shape == (4, 1)


@pytest.mark.parametrize("top_p, allowed", [(0.5, {0}), (0.6 - 1e-3, {0}), (0.8, {0, 1}), (0.95, {0, 1, 2}),
                                            (1.0, {0, 1, 2})])
def test_top_p_keeps_the_nucleus(top_p, allowed):
    assert draws(top_p=top_p) == allowed


@pytest.mark.parametrize("top_k, allowed", [(1, {0}), (2, {0, 1}), (3, {0, 1, 2}), (10, {0, 1, 2})])
def test_top_k_keeps_the_k_most_likely(top_k, allowed):
    assert draws(top_k=top_k) == allowed


def test_sampling_follows_the_probabilities():
    logits = PROBS.log().expand(20000, 3)
    picks = sample_token(logits, generator=torch.Generator().manual_seed(1)).flatten()
    freq = torch.bincount(picks, minlength=3).float() / len(picks)
    torch.testing.assert_close(freq, PROBS[0], atol=0.02, rtol=0)
    cold = sample_token(logits, temperature=0.25, generator=torch.Generator().manual_seed(1)).flatten()
    assert (cold == 0).float().mean() > 0.9  # a low temperature sharpens towards the most likely token


def test_top_k_and_top_p_renormalise():
    logits = PROBS.log().expand(20000, 3)
    picks = sample_token(logits, top_k=2, generator=torch.Generator().manual_seed(2)).flatten()
    assert (picks == 0).float().mean().item() == pytest.approx(0.6 / 0.9, abs=0.02)


# --- generate ---------------------------------------------------------------------------------------

def test_cached_and_uncached_greedy_agree_within_context(trained):
    model, tok, _ = trained
    prompt = torch.stack([ids_of(tok, "The king ")[0], ids_of(tok, "A fool wee")[0][:9]])  # a batch of two
    n = model.config.block_size - prompt.size(1)  # fill the context exactly
    cached = tinyllm.generate(model, prompt, n, temperature=0, use_cache=True)
    uncached = tinyllm.generate(model, prompt, n, temperature=0, use_cache=False)
    assert cached.shape == (2, model.config.block_size)
    assert torch.equal(cached, uncached)


def test_cached_and_uncached_sampling_agree_for_a_seed(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "My lord ")
    kwargs = dict(temperature=1.0, top_k=10, seed=3)
    assert torch.equal(tinyllm.generate(model, prompt, 20, use_cache=True, **kwargs),
                       tinyllm.generate(model, prompt, 20, use_cache=False, **kwargs))


def test_top_k_1_equals_greedy(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "The queen ")
    greedy = tinyllm.generate(model, prompt, 20, temperature=0)
    assert torch.equal(tinyllm.generate(model, prompt, 20, temperature=1.3, top_k=1, seed=9), greedy)
    assert torch.equal(tinyllm.generate(model, prompt, 20, temperature=1.0, top_p=1e-6, seed=9), greedy)


def test_seed_makes_sampling_reproducible(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "Good sir ")
    a = tinyllm.generate(model, prompt, 40, temperature=1.5, seed=123)
    b = tinyllm.generate(model, prompt, 40, temperature=1.5, seed=123)
    c = tinyllm.generate(model, prompt, 40, temperature=1.5, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_stop_token_ends_generation(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "The old man ")
    full = tinyllm.generate(model, prompt, 25, temperature=0)[0, prompt.size(1):].tolist()
    stop = full[5]
    first = full.index(stop)
    out = tinyllm.generate(model, prompt, 25, temperature=0, stop_token=stop)[0, prompt.size(1):].tolist()
    assert out == full[:first + 1]


def test_on_token_streams_each_new_token(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "Her brother ")
    streamed = []
    out = tinyllm.generate(model, prompt, 15, temperature=1.0, seed=1, on_token=streamed.append)
    assert streamed == out[0, prompt.size(1):].tolist()


def test_generate_tokens_is_a_generator(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "The king ")
    tokens = generate_tokens(model, prompt, 10, temperature=0)
    first = next(tokens)
    assert first.shape == (1, 1)
    rest = list(tokens)
    assert torch.cat([first, *rest], 1).tolist() == tinyllm.generate(model, prompt, 10, temperature=0)[:, prompt.size(1):].tolist()


def test_long_prompt_is_cropped_to_the_context(trained):
    model, tok, _ = trained
    T = model.config.block_size
    prompt = ids_of(tok, "The king speaks of the crown.\nA fool laughs at the sea.\nMy lord waits for ")
    assert prompt.size(1) > T
    for use_cache in (True, False):
        out = tinyllm.generate(model, prompt, 5, temperature=0, use_cache=use_cache)
        assert out.shape == (1, prompt.size(1) + 5)
        assert torch.equal(out[:, :prompt.size(1)], prompt)  # the whole prompt is returned
        cropped = tinyllm.generate(model, prompt[:, -T:], 5, temperature=0, use_cache=use_cache)
        assert torch.equal(out[:, -5:], cropped[:, -5:])  # but only its last block_size tokens were read


def test_generation_past_the_context_with_the_cache(trained):
    model, tok, _ = trained
    T = model.config.block_size
    prompt = ids_of(tok, "The king ")
    for use_cache in (True, False):
        out = tinyllm.generate(model, prompt, 3 * T, temperature=0.8, seed=0, use_cache=use_cache)
        assert out.shape == (1, prompt.size(1) + 3 * T)
        assert int(out.max()) < tok.vocab_size


@torch.no_grad()
def test_sliding_cache_predicts_as_well_as_recomputing_the_window(trained):
    """Past the context the cache slides instead of recomputing; on real text it predicts as well."""
    model, tok, val_ids = trained
    T = model.config.block_size
    ids = torch.tensor([val_ids[:4 * T]])
    cache = tinyllm.new_cache(model, 1)
    cached = torch.cat([model(ids[:, i:i + 1], cache=cache)[0] for i in range(ids.size(1))], dim=1)[0]
    window = torch.stack([model(ids[:, max(0, i - T + 1):i + 1])[0][0, -1] for i in range(ids.size(1))])
    nll_cached = F.cross_entropy(cached[:-1], ids[0, 1:], reduction="none")
    nll_window = F.cross_entropy(window[:-1], ids[0, 1:], reduction="none")
    torch.testing.assert_close(nll_cached[:T - 1], nll_window[:T - 1], rtol=1e-4, atol=1e-4)  # identical inside
    past_cached, past_window = nll_cached[T:].mean().item(), nll_window[T:].mean().item()
    assert past_cached == pytest.approx(past_window, abs=0.1)  # and as good past the context
    assert past_cached < math.log(tok.vocab_size) - 1.0  # (the model did learn something)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"), (dict(max_new_tokens=-1), "max_new_tokens")])
def test_invalid_settings_raise(trained, kwargs, match):
    model, tok, _ = trained
    kwargs = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        tinyllm.generate(model, ids_of(tok, "The"), **kwargs)
    with pytest.raises(ValueError, match=match):
        complete(model, tok, "The", **kwargs)


def test_max_new_tokens_zero_returns_the_prompt(trained):
    model, tok, _ = trained
    prompt = ids_of(tok, "The")
    assert torch.equal(tinyllm.generate(model, prompt, 0), prompt)
    assert complete(model, tok, "The", 0) == ""


# --- complete: text in, text out ------------------------------------------------------------------

def test_complete_returns_the_continuation(trained):
    model, tok, _ = trained
    text = complete(model, tok, "The king ", 20, temperature=0)
    expected = tinyllm.generate(model, ids_of(tok, "The king "), 20, temperature=0)[0, 9:].tolist()
    assert text == tok.decode(expected)


def test_stop_string_cuts_the_text(trained):
    model, tok, _ = trained
    full = complete(model, tok, "The king ", 60, temperature=0)
    for stop in (full[7], full[10:12], full[20:24]):  # stop strings of 1, 2 and 4 characters
        text = complete(model, tok, "The king ", 60, temperature=0, stop=stop)
        assert text == full[:full.index(stop)]
    assert complete(model, tok, "The king ", 60, temperature=0, stop="@@") == full  # a stop that never comes


@pytest.mark.parametrize("stop", [None, "\n", "the", "zzz"])
def test_streamed_text_equals_returned_text(trained, stop):
    model, tok, _ = trained
    pieces = []
    text = complete(model, tok, "A fool ", 80, temperature=1.0, seed=4, stop=stop, on_text=pieces.append)
    assert "".join(pieces) == text
    assert all(pieces)  # no empty calls
    if stop:
        assert stop not in text


def test_complete_rejects_unknown_characters_and_empty_prompts(trained):
    model, tok, _ = trained
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        complete(model, tok, "Zebra ☃", 5)
    with pytest.raises(ValueError, match="empty"):
        complete(model, tok, "", 5)
