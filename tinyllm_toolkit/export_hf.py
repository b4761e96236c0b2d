"""Export to Hugging Face transformers (`export --hf`).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

import torch

from tinyllm import BPETokenizer, CharTokenizer, TinyLLM, Tokenizer
from tinyllm_toolkit.files import atomic_write_bytes, export_folder, export_source


# TinyLLM is a Llama in miniature, so Hugging Face transformers can load it as LlamaForCausalLM: the
# same pre-norm blocks, RMSNorm, SwiGLU and RoPE in the same "rotate half" layout (channel i turns
# with channel i + head_dim/2, so no weights need permuting), no biases, and a head tied to the
# embedding. Only the names differ, and our fused qkv and gate_up matrices are cut into q, k, v and
# gate, up. A model with QK-norm (cfg.qk_norm, the cpu preset's) is a Qwen3 instead: a Llama plus an
# RMSNorm on each head's queries and keys before RoPE, which is exactly ours (q_norm, k_norm).
# transformers, safetensors and tokenizers are needed only here, and imported only here.

ARCHITECTURE = {False: "Llama", True: "Qwen3"}  # by cfg.qk_norm


def hf_state_dict(model: TinyLLM) -> dict[str, torch.Tensor]:
    """Our weights under LlamaForCausalLM's (or Qwen3ForCausalLM's) names; lm_head is left out, tied to embed_tokens."""
    weights = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    for i, block in enumerate(model.blocks):
        q, k, v = block.attn.qkv.weight.chunk(3, dim=0)  # forward() splits qkv's output as [q, k, v]
        gate, up = block.mlp.gate_up.weight.chunk(2, dim=0)  # ... and gate_up's as [gate, up]
        layer = {"input_layernorm": block.norm1.weight, "self_attn.q_proj": q, "self_attn.k_proj": k,
                 "self_attn.v_proj": v, "self_attn.o_proj": block.attn.proj.weight,
                 "post_attention_layernorm": block.norm2.weight, "mlp.gate_proj": gate, "mlp.up_proj": up,
                 "mlp.down_proj": block.mlp.down.weight}
        if model.config.qk_norm:
            layer.update({"self_attn.q_norm": block.attn.q_norm.weight, "self_attn.k_norm": block.attn.k_norm.weight})
        weights.update({f"model.layers.{i}.{name}.weight": w for name, w in layer.items()})
    return {name: w.detach().to("cpu", torch.float32).clone() for name, w in weights.items()}


def hf_split_pattern(pattern: str) -> str:
    """Our split pattern for the `tokenizers` library, whose regex engine (Oniguruma) is not Python's.

    Python's \\w, \\d and \\s (and \\W, \\D, \\S) match other characters than Oniguruma's (combining
    marks, for one), so each is written out as the exact list of code-point ranges Python matches.
    """
    everything = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x110000)))  # no surrogates

    def ranges(escape: str) -> str:
        runs = ((ord(m.group()[0]), ord(m.group()[-1])) for m in re.finditer(escape + "+", everything))
        return "".join(f"\\x{{{a:X}}}" + (f"-\\x{{{b:X}}}" if b > a else "") for a, b in runs)

    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            escape = pattern[i:i + 2]
            if escape[1:] in ("d", "s", "w", "D", "S", "W"):
                escape = ranges(escape) if in_class else f"[{ranges(escape)}]"
            out.append(escape)
            i += 2
        elif c == "[" and not in_class:
            in_class = True
            out.append("[^" if pattern[i + 1:i + 2] == "^" else "[")
            i += len(out[-1])
        elif c == "]" and in_class and out[-1] not in ("[", "[^"):  # "[]" and "[^]" begin with a literal ]
            in_class = False
            out.append(c)
            i += 1
        else:
            out.append("\\" + c if in_class and c in "[]&" else c)  # nested sets and && mean more to Oniguruma
            i += 1
    return "".join(out)


def hf_tokenizer(tokenizer: Tokenizer):
    """Our tokenizer as a `tokenizers.Tokenizer` (tokenizer.json) that gives exactly our ids.

    Byte-level BPE: GPT-2's format. Each byte is shown as a printable character (GPT-2's
    byte-to-unicode table, which tokenizers' ByteLevel uses), merges are applied lowest rank first
    within the chunks of our split pattern, and special tokens are cut out first, as ours are.
    Char: a BPE without merges, whose vocabulary is our characters; characters outside it are
    dropped silently (tinyllm raises an error instead). Its special tokens (a chat model's markers)
    become added special tokens with the same ids, which `tokenizers` cuts out of text, as
    BPETokenizer.encode does; tinyllm's CharTokenizer.encode never does.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, CharTokenizer):
        if set(tokenizer.special_tokens) & set(tokenizer.stoi):
            raise ValueError("a special token is spelled as one of the characters, which tokenizer.json cannot express")
        hf = HFTokenizer(models.BPE(vocab={**tokenizer.stoi, **tokenizer.special_tokens}, merges=[]))
        hf.decoder = decoders.Fuse()  # join the characters as they are (the default puts spaces between)
        hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tokenizer.special_tokens])
        return hf
    if not isinstance(tokenizer, BPETokenizer):
        raise ValueError(f"cannot export a {type(tokenizer).__name__} to Hugging Face's format")
    # GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others for chr(256 + n).
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    byte_char = {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}

    def show(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {show(token): i for i, token in enumerate(tokenizer.vocab)}
    if len(vocab) != len(tokenizer.vocab):
        raise ValueError("two of this tokenizer's tokens have the same bytes, which tokenizer.json cannot express")
    vocab.update(tokenizer.special_tokens)
    merges = [(show(tokenizer.vocab[a]), show(tokenizer.vocab[b])) for a, b in tokenizer.merges]
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        # keep what the pattern matches and drop the rest, as re.findall does
        pre_tokenizers.Split(Regex(hf_split_pattern(tokenizer.pattern)), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes -> printable characters
    ])
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tokenizer.special_tokens])
    return hf


def export_hf(checkpoint: str | Path | TinyLLM, out_dir: str | Path, tokenizer: Optional[Tokenizer] = None,
              overwrite: bool = False) -> Path:
    """Write a model (or a checkpoint file or run directory) as a Hugging Face folder; returns its path.

    The folder holds config.json and model.safetensors, which AutoModelForCausalLM.from_pretrained
    loads as LlamaForCausalLM (Qwen3ForCausalLM with QK-norm), and, given a tokenizer (a checkpoint brings its own), tokenizer.json
    and tokenizer_config.json for AutoTokenizer, plus tinyllm_tokenizer.json for load_tokenizer.
    out_dir must be new, empty or an earlier export, unless `overwrite` (see `export_folder`).
    """
    try:
        from safetensors.torch import save_file
        import tokenizers  # noqa: F401  (hf_tokenizer needs it)
    except ImportError:
        raise ImportError("exporting to Hugging Face needs its libraries: pip install transformers safetensors") from None
    model, tokenizer = export_source(checkpoint, tokenizer)
    cfg, out = model.config, Path(out_dir)
    with export_folder(out, "hf", overwrite) as folder:  # written there, then moved into out
        config = {
            "architectures": [f"{ARCHITECTURE[cfg.qk_norm]}ForCausalLM"], "model_type": ARCHITECTURE[cfg.qk_norm].lower(),
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_head, "head_dim": cfg.d_model // cfg.n_head,
            "hidden_act": "silu", "rms_norm_eps": model.norm.eps, "max_position_embeddings": cfg.block_size,
            "rope_theta": cfg.rope_theta,  # transformers 4 reads this, transformers 5 the next line
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": True,
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, "torch_dtype": "float32",
            "use_sliding_window": False, "sliding_window": None,  # Qwen3 reads these; Llama ignores them
        }
        atomic_write_bytes(folder / "config.json", json.dumps(config, indent=2).encode("utf-8"))
        save_file(hf_state_dict(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(folder / "tinyllm_tokenizer.json")
            try:
                hf_tokenizer(tokenizer).save(str(folder / "tokenizer.json"))
            except ValueError as e:
                print(f"warning: no tokenizer.json for AutoTokenizer ({e}); tinyllm_tokenizer.json has it", file=sys.stderr)
                return out
            tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.block_size,
                                "clean_up_tokenization_spaces": False}  # decode() must not touch spaces
            atomic_write_bytes(folder / "tokenizer_config.json", json.dumps(tokenizer_config, indent=2).encode("utf-8"))
    return out
