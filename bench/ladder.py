"""The ablation ladder: each change the large speedruns use, as an option on top of tinyllm's own modules.

Every variant is built from Part I's pieces (`TinyLLM`, `CausalSelfAttention`, `RMSNorm`, `apply_rope`,
`make_optimizer`): a subclass or a swapped submodule, never a copy of the chapter's code, so that the
ladder measures exactly one change against today's `cpu` preset and the chapter stays untouched.
(The 100 s ladder in bench/README.md ran at commit e3cd7f5, on the preset of the time: AdamW, no
QK-norm, which is the `previous` variant here. Its two winners are now the preset's, in Part I.)

A `Variant` names its changes; `combine` merges several into one (the candidate preset). `build_model`
and `build_optimizer` turn a variant into a model and an optimizer; the training loop that runs them
is `bench/speedrun.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import tinyllm

ARCH_OPTIONS = ("relu2", "untied", "value_embed", "zero_init", "softcap")
SOFTCAP = 15.0  # logits are squashed into (-15, 15): modded-nanogpt's later value
MUON_LR = 0.02  # Muon's peak LR for the weight matrices (PyTorch's documented example); AdamW keeps its own
RAMP_BATCH, RAMP_UNTIL = 8, 0.25  # batch ramp: batch 8 for the first quarter of the budget, then the preset's


@dataclass(frozen=True)
class Variant:
    """One rung of the ladder: which changes are switched on, and why anyone expects them to help."""

    name: str
    why: str
    arch: tuple[str, ...] = ()  # model changes, from ARCH_OPTIONS
    train: dict = field(default_factory=dict)  # TrainConfig overrides (lr, min_lr, warmup_steps, optimizer)
    model: dict = field(default_factory=dict)  # ModelConfig overrides (qk_norm)
    muon: bool = False
    muon_lr: Optional[float] = None  # Muon's peak LR when not MUON_LR
    ns_steps: int = 5  # Muon's Newton-Schulz iterations
    batch_ramp: bool = False
    compile: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        """Refuse an unknown model change here, not as a silent no-op inside the model."""
        unknown = set(self.arch) - set(ARCH_OPTIONS)
        if unknown:
            raise ValueError(f"unknown model change(s) {sorted(unknown)}: choose from {ARCH_OPTIONS}")


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("baseline", "today's cpu preset, unchanged"),
    Variant("previous", "the cpu preset before the speedrun: AdamW for every parameter, no QK-norm, batch 16, "
            "warmup 50, float32", train=dict(optimizer="adamw", batch_size=16, warmup_steps=50, dtype="fp32"),
            model=dict(qk_norm=False)),
    Variant("muon", f"torch.optim.Muon (lr {MUON_LR}, momentum 0.95, Nesterov, 5 Newton-Schulz steps, bf16) for "
            "the blocks' weight matrices, AdamW for embedding and gains", muon=True),
    Variant("muon_lr", "Muon at lr 0.04 (2x PyTorch's example) for the same matrices", muon=True, muon_lr=0.04),
    Variant("ns3", "Muon with 3 Newton-Schulz iterations instead of 5 (a cheaper step)", muon=True, ns_steps=3),
    Variant("batch32", "batch 32 instead of 16 (half the steps, each on twice the tokens)", train=dict(batch_size=32)),
    Variant("first_muon", "the cpu preset of the first Muon record (commit 6871ae5): batch 16, 5 Newton-Schulz "
            "steps, warmup 50, float32", train=dict(batch_size=16, muon_steps=5, warmup_steps=50, dtype="fp32")),
    Variant("fp32", "today's preset in float32 (its dtype auto picks bf16 on a CPU with bf16 instructions): the "
            "preset of the second record (commit 839427e)", train=dict(dtype="fp32")),
    Variant("muon3", "Part I's Muon with 3 Newton-Schulz steps (first_muon: 5)", train=dict(muon_steps=3)),
    Variant("warmup10", "warmup of 10 steps (first_muon: 50)", train=dict(warmup_steps=10)),
    Variant("batch24", "batch 24 (first_muon: 16): Muon's fixed cost per step over more tokens",
            train=dict(batch_size=24)),
    Variant("relu2", "squared ReLU MLP, hidden 1.5 x d_ff, so its parameters equal SwiGLU's", arch=("relu2",)),
    Variant("qk_norm", "RMSNorm on each head's queries and keys before RoPE", model=dict(qk_norm=True)),
    Variant("untied", "a separate output head instead of the tied embedding", arch=("untied",)),
    Variant("value_embed", "a per-layer token embedding added to the attention values", arch=("value_embed",)),
    Variant("zero_init", "attention and MLP output projections start at zero", arch=("zero_init",)),
    Variant("softcap", f"logits soft-capped: {SOFTCAP:g} * tanh(logits / {SOFTCAP:g})", arch=("softcap",)),
    Variant("lr_warmup", "lr 3e-3 -> 3e-4 (1.5x) with warmup 250 steps (5x)",
            train=dict(lr=3e-3, min_lr=3e-4, warmup_steps=250)),
    Variant("batch_ramp", f"batch {RAMP_BATCH} for the first {RAMP_UNTIL:.0%} of the budget, then 16",
            batch_ramp=True),
    Variant("compile", "torch.compile of the training model, compile time inside the budget", compile=True),
    Variant("bf16", "bf16 autocast (the CPU has avx512_bf16)", bf16=True),
]}


# What --ladder runs: the baseline and each change of issue 19 alone. The other variants are the preset
# before the speedrun (previous), the preset of the first Muon record (first_muon), and follow-ups on Muon's
# settings and the batch (muon_lr, ns3, batch32, and for the time to nanoGPT's loss muon3, warmup10, batch24,
# which the preset took: on first_muon, muon3+warmup10+batch24 is today's preset).
LADDER = ("baseline", "muon", "relu2", "qk_norm", "untied", "value_embed", "zero_init", "softcap", "lr_warmup",
          "batch_ramp", "compile", "bf16")


def combine(names: list[str]) -> Variant:
    """The variant with all the named changes switched on ("muon+relu2" on the command line)."""
    parts = [get_variant(n) for n in names]
    arch = tuple(dict.fromkeys(a for p in parts for a in p.arch))
    train = {k: v for p in parts for k, v in p.train.items()}
    model = {k: v for p in parts for k, v in p.model.items()}
    return Variant("+".join(names), "combination: " + "; ".join(p.why for p in parts), arch=arch, train=train,
                   model=model,
                   muon=any(p.muon for p in parts),
                   muon_lr=max((p.muon_lr for p in parts if p.muon_lr), default=None),
                   ns_steps=min(p.ns_steps for p in parts), batch_ramp=any(p.batch_ramp for p in parts),
                   compile=any(p.compile for p in parts), bf16=any(p.bf16 for p in parts))


def get_variant(name: str) -> Variant:
    """A named rung, or a '+'-joined combination of rungs."""
    if "+" in name:
        return combine(name.split("+"))
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)} (or join them with '+')")
    return VARIANTS[name]


# ----------------------------------------------------------------------------------------------
# Model changes
# ----------------------------------------------------------------------------------------------

def relu2_hidden(cfg: tinyllm.ModelConfig) -> int:
    """SwiGLU has 3 * d_model * d_ff weights (gate, up, down); a ReLU^2 MLP has 2 * d_model * hidden,
    so hidden = 1.5 * d_ff gives it exactly the same parameters."""
    return 3 * cfg.d_ff // 2


class ReLU2MLP(nn.Module):
    """down(relu(up(x))^2): the feed-forward layer of modded-nanogpt and nanochat, which found it better
    than SwiGLU at their sizes; one matmul in, one out, and no gate."""

    def __init__(self, cfg: tinyllm.ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, relu2_hidden(cfg), bias=False)
        self.down = nn.Linear(relu2_hidden(cfg), cfg.d_model, bias=False)
        nn.init.normal_(self.up.weight, std=0.02)  # the same init as TinyLLM gives SwiGLU's matrices
        nn.init.normal_(self.down.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square())


class LadderAttention(tinyllm.CausalSelfAttention):
    """Part I's attention (QK-norm included, as its config says) plus value embeddings: a token embedding
    added to the values, which gives every layer direct access to the token ids.

    Training and evaluation only: no KV cache (sample from a TinyLLM if you want text).
    """

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None,
                ve: Optional[torch.Tensor] = None) -> torch.Tensor:
        if cache is not None:
            raise NotImplementedError("the ladder's attention has no KV cache")
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        if ve is not None:
            v = v + ve
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = tinyllm.apply_rope(self.q_norm(q), cos, sin), tinyllm.apply_rope(self.k_norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class LadderLLM(tinyllm.TinyLLM):
    """TinyLLM with the ladder's model changes swapped in after Part I has built (and initialised) it.

    The unchanged parts keep Part I's weights for the same seed, so a variant and the baseline start
    from the same numbers wherever the change does not touch them (a paired comparison).
    """

    def __init__(self, cfg: tinyllm.ModelConfig, arch: tuple[str, ...] = ()):
        super().__init__(cfg)
        self.arch = frozenset(arch)
        for block in self.blocks:
            self._swap_block(block, cfg)
        self.value_embeds: Optional[nn.ModuleList] = None
        if "value_embed" in self.arch:
            self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.d_model) for _ in self.blocks)
            for emb in self.value_embeds:
                nn.init.normal_(emb.weight, std=0.02)
        if "untied" in self.arch:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # its own matrix, no longer the embedding
            nn.init.normal_(self.head.weight, std=0.02)
        self.softcap = SOFTCAP if "softcap" in self.arch else None

    def _swap_block(self, block: tinyllm.Block, cfg: tinyllm.ModelConfig) -> None:
        """Replace one block's submodules as the options ask; keep Part I's qkv/proj weights."""
        if "value_embed" in self.arch:
            attn = LadderAttention(cfg)
            for name in ("qkv", "proj", "q_norm", "k_norm"):  # Part I's weights, as initialised
                setattr(attn, name, getattr(block.attn, name))
            block.attn = attn
        if "relu2" in self.arch:
            block.mlp = ReLU2MLP(cfg)
        if "zero_init" in self.arch:  # each block starts as the identity; the gradient wakes it up
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.down.weight)

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                cache: Optional[list] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits (B, T, vocab) and the loss; Part I's Block.forward wherever no value embedding is added."""
        if cache is not None:
            raise NotImplementedError("the ladder's models have no KV cache")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.block_size})")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            if self.value_embeds is None:
                x = block(x, cos, sin)
            else:
                x = x + block.dropout(block.attn(block.norm1(x), cos, sin, None, self.value_embeds[i](idx)))
                x = x + block.dropout(block.mlp(block.norm2(x)))
        logits = self.head(self.norm(x))
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def build_model(variant: Variant, cfg: tinyllm.ModelConfig) -> tinyllm.TinyLLM:
    """Part I's TinyLLM itself for a variant without model changes (the baseline is the preset exactly)."""
    return LadderLLM(cfg, variant.arch) if variant.arch else tinyllm.TinyLLM(cfg)


# ----------------------------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------------------------

class MuonWithAdamW:
    """Muon for the blocks' 2-D weight matrices, Part I's AdamW for everything else (embedding, head, gains).

    Muon orthogonalises each matrix's momentum (Newton-Schulz), so every direction of the update gets the
    same size; it is meant for hidden matrices only. Its groups carry `lr_scale` = MUON_LR / lr, which
    `set_lr` applies, so one schedule drives both optimizers.
    """

    def __init__(self, model: nn.Module, config: tinyllm.TrainConfig, muon_lr: float = MUON_LR, ns_steps: int = 5):
        # Part I's make_optimizer decides which parameters are Muon's (the blocks' matrices) and groups the
        # rest for AdamW; here PyTorch's Muon takes those matrices instead of Part I's Muon step.
        part_one = tinyllm.make_optimizer(model, dataclasses.replace(config, optimizer="muon"))
        matrices = [p for g in part_one.param_groups if g.get("muon") for p in g["params"]]
        self.muon = torch.optim.Muon(matrices, lr=muon_lr, weight_decay=config.weight_decay, momentum=0.95,
                                     nesterov=True, ns_steps=ns_steps)
        for group in self.muon.param_groups:
            group["lr_scale"] = muon_lr / config.lr
        rest = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in part_one.param_groups
                if not g.get("muon")]
        self.adamw = tinyllm.MuonAdamW(rest, lr=config.lr, betas=(0.9, config.beta2))  # no Muon group: AdamW
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)


def build_optimizer(variant: Variant, model: nn.Module, config: tinyllm.TrainConfig):
    """Part I's make_optimizer (the preset's optimizer), or torch.optim.Muon + Part I's AdamW for the muon rungs."""
    if variant.muon:
        return MuonWithAdamW(model, config, variant.muon_lr or MUON_LR, variant.ns_steps)
    return tinyllm.make_optimizer(model, config)


def set_lr(optimizer, lr: float) -> None:
    """The schedule's LR for every group, times the group's lr_scale (Muon's groups run at their own LR)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def batch_size_at(variant: Variant, config: tinyllm.TrainConfig, progress: float) -> int:
    """The batch ramp: a small batch (more, cheaper steps) while the model learns the easy statistics."""
    if variant.batch_ramp and progress < RAMP_UNTIL:
        return min(RAMP_BATCH, config.batch_size)
    return config.batch_size
