"""Export to Hugging Face: transformers loads the model as LlamaForCausalLM (Qwen3ForCausalLM with QK-norm)
and computes what tinyllm computes.

transformers, safetensors and tokenizers are optional for users, so a developer without them sees these
tests skipped; CI installs them (requirements-dev.txt), and there a missing library is a failure.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinyllm
from conftest import REPO, cli_env, run_without

if os.environ.get("CI"):
    import transformers  # noqa: F401  (CI must run these tests, never skip them)
else:
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

SPECIAL = "<|endoftext|>"

VARIED_TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n",
    "It's 2024, don't they'll we've I'M  YOU'RE -- 3.14159 and 1,000,000 (approx.)!",
    "snake_case __init__ a_b_c  tabs\there\r\nwindows\u000bvt\x0cff   trailing spaces   ",
    "naïve café façade — “quotes” ‘single’ … ½ ² Ⅷ ١٢٣ ۴۵",
    "日本語のテキストです。中文也可以。한국어 텍스트. हिन्दी भाषा ไทยภาษา العربية עברית",
    "emoji 👍🏽 🇫🇷 family 👨\u200d👩\u200d👧 combining e\u0301 a\u0308",
    f"special tokens{SPECIAL}inside and {SPECIAL} around {SPECIAL}",
    "control \x00\x01\x1c\x1d\x1e\x1f\x7f\x85 and\u00a0no-break\u2009thin\u3000ideographic space",
    "   \n\n\t  leading and ending whitespace \n \n",
    "",
]


def random_texts(n: int = 40, seed: int = 0) -> list[str]:
    """Random strings over ASCII, several scripts, astral planes and odd whitespace."""
    rng = random.Random(seed)
    pools = [range(32, 127), range(0x80, 0x800), range(0x900, 0x1000), range(0x3000, 0xA000),
             range(0x10000, 0x1FA00), [9, 10, 13, 32, 0x1C, 0x85, 0xA0, 0x2028, ord("_"), ord("'")]]
    return ["".join(chr(rng.choice(rng.choice(pools))) for _ in range(rng.randrange(1, 120))) for _ in range(n)]


@pytest.fixture(scope="module")
def bpe(corpus_text) -> tinyllm.BPETokenizer:
    """A small BPE learned on English plus some other scripts, so that merges span multi-byte characters."""
    text = corpus_text + "\n".join(VARIED_TEXTS[3:6]) * 20
    return tinyllm.BPETokenizer.train(text, 360, special_tokens=[SPECIAL])


@pytest.fixture(scope="module", params=[False, True], ids=["llama", "qk_norm-qwen3"])
def model(bpe, request) -> tinyllm.TinyLLM:
    """A tiny model whose weights are far from their initial values (norm gains included); with and
    without QK-norm, which transformers loads as a Qwen3 (a Llama with q_norm and k_norm)."""
    torch.manual_seed(0)
    cfg = tinyllm.ModelConfig.from_preset("tiny", bpe.vocab_size, rope_theta=500.0, qk_norm=request.param)
    model = tinyllm.TinyLLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def exported(model, bpe, tmp_path_factory) -> Path:
    return tinyllm.export_hf(model, tmp_path_factory.mktemp("hf") / "tiny-hf", tokenizer=bpe)


@pytest.fixture(scope="module")
def hf_model(exported):
    return AutoModelForCausalLM.from_pretrained(exported, local_files_only=True).eval()


def test_folder_holds_a_standard_llama(exported, hf_model, model):
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "tinyllm_tokenizer.json"} <= {p.name for p in exported.iterdir()}
    assert type(hf_model).__name__ == ("Qwen3ForCausalLM" if model.config.qk_norm else "LlamaForCausalLM")
    c, cfg = hf_model.config, model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.vocab_size, c.max_position_embeddings) == (cfg.d_model, cfg.d_ff, cfg.n_layer, cfg.n_head, cfg.n_head,
                                                         cfg.vocab_size, cfg.block_size)
    assert c.tie_word_embeddings and c.hidden_act == "silu" and c.rms_norm_eps == 1e-5
    assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()  # tied
    assert not any(name.endswith(".bias") for name, _ in hf_model.named_parameters())
    assert hf_model.num_parameters() == model.num_params()


@pytest.mark.parametrize("length", [1, 7, 32])
def test_logits_match(model, hf_model, length):
    x = torch.randint(0, model.config.vocab_size, (3, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf_model(x).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0), (ours - theirs).abs().max()


def test_greedy_generation_matches(model, hf_model, bpe):
    prompt = torch.tensor([bpe.encode("The king speaks")])
    n = model.config.block_size - prompt.size(1)  # stay within the context
    ours = tinyllm.generate(model, prompt, n, temperature=0)
    ours_no_cache = tinyllm.generate(model, prompt, n, temperature=0, use_cache=False)
    theirs = hf_model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               attention_mask=torch.ones_like(prompt), pad_token_id=0)
    assert ours.tolist() == ours_no_cache.tolist() == theirs.tolist()


def test_bpe_tokenizer_gives_our_ids(exported, bpe):
    hf_tok = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    assert len(hf_tok) == bpe.vocab_size
    for text in VARIED_TEXTS + random_texts():
        ids = bpe.encode(text)
        assert hf_tok.encode(text) == ids, text
        assert hf_tok.decode(ids) == bpe.decode(ids) == text, text
    assert hf_tok.convert_tokens_to_ids(SPECIAL) == bpe.special_tokens[SPECIAL]
    assert tinyllm.load_tokenizer(exported / "tinyllm_tokenizer.json").to_dict() == bpe.to_dict()


def test_split_pattern_matches_python_on_every_character():
    """The translated pattern cuts text exactly as Python's re does, whatever the characters."""
    from tokenizers import Regex, pre_tokenizers

    everything = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))
    old_pattern = r"'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+"  # checkpoints before the _ fix
    for pattern, size in ((tinyllm.SPLIT_PATTERN, len(everything)), (old_pattern, 0x3000),
                          (r"[]_\d]+|[^\S\n]+|[a-c&[]", 0x3000)):
        split = pre_tokenizers.Split(Regex(tinyllm.hf_split_pattern(pattern)), behavior="removed", invert=True)
        for start in range(0, size, 50_000):  # in slices, so that a mismatch is easy to find
            text = everything[start:min(start + 50_000, size)] + " it's  _x1 \n\n y"
            assert [piece for piece, _ in split.pre_tokenize_str(text)] == re.findall(pattern, text), (pattern, start)


def test_char_tokenizer_exports_exactly(tmp_path, corpus_text):
    tok = tinyllm.CharTokenizer.from_text(corpus_text + " \t\n'\"xé😀")
    model = tinyllm.TinyLLM(tinyllm.ModelConfig.from_preset("tiny", tok.vocab_size))
    out = tinyllm.export_hf(model, tmp_path / "char-hf", tok)
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    for text in [corpus_text, "  The king\t\n\n é😀 'speaks' \"x\"  ", " "]:
        ids = tok.encode(text)
        assert hf_tok.encode(text) == ids
        assert hf_tok.decode(ids) == text
    assert hf_tok.encode("The ☃☃") == tok.encode("The ")  # unknown characters are dropped, where tinyllm raises


def test_cli_export_end_to_end(tmp_path, model, bpe):
    run = tmp_path / "run"
    tinyllm.save_checkpoint(run / "best.pt", model, bpe, step=10)
    out = tmp_path / "exported"
    result = subprocess.run([sys.executable, str(REPO / "tinyllm.py"), "export", "--ckpt", str(run), "--hf", str(out)],
                            env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"exported {run} to {out}" in result.stdout
    hf_model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = hf_tok("The king speaks of the crown.", return_tensors="pt").input_ids
    assert ids[0].tolist() == bpe.encode("The king speaks of the crown.")
    with torch.no_grad():
        assert torch.allclose(model(ids)[0], hf_model(ids).logits, atol=1e-4, rtol=0)

    missing = subprocess.run([sys.executable, str(REPO / "tinyllm.py"), "export", "--ckpt", str(tmp_path / "nope"),
                              "--hf", str(out)], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no checkpoint at")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_module_works_without_the_hf_libraries(tmp_path):
    """`import tinyllm` needs none of them; export says in one line what to install."""
    result = run_without(["transformers", "safetensors", "tokenizers"], f"tinyllm.export_hf(model, {str(tmp_path / 'x')!r})")
    assert result.returncode == 0, result.stderr
    assert "pip install transformers safetensors" in result.stdout
    assert not (tmp_path / "x").exists()
