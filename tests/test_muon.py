"""Muon (section 9) and QK-norm (section 6): what the cpu preset trains with.

orthogonalize keeps a matrix's singular vectors and moves its singular values close to 1; MuonAdamW
is torch's AdamW wherever no group is marked "muon", and PyTorch's own Muon (when this torch has it)
where one is; make_optimizer puts exactly the blocks' weight matrices in the Muon group; QK-norm
gives every head's queries and keys unit RMS, and an old checkpoint (no qk_norm in its config)
still loads as the model it was.
"""

from __future__ import annotations

import copy

import pytest
import torch

import tinyllm
from tinyllm import MuonAdamW, ModelConfig, TinyLLM, TrainConfig, make_optimizer, orthogonalize
from tinyllm_toolkit.runs import load_optimizer_state

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
def test_orthogonalize_keeps_singular_vectors_and_moves_values_near_one(shape):
    """g = U S V^T with singular values over two decades (1 down to 0.01): out is close to U V^T."""
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen))
    g = u @ torch.diag(torch.logspace(0, -2, k)) @ v.T
    out = orthogonalize(g)
    assert out.shape == g.shape
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.6 and s.max() < 1.25, s  # g's own span 1 to 0.01
    assert torch.nn.functional.cosine_similarity(out.flatten(), (u @ v.T).flatten(), dim=0) > 0.95
    assert torch.allclose(orthogonalize(g.T), out.T, atol=1e-5)  # tall or wide, the same map
    tiny = orthogonalize(g, steps=1)  # one step multiplies a small singular value by about a = 3.4445
    assert torch.linalg.svdvals(tiny).min() / torch.linalg.svdvals(g / g.norm()).min() == pytest.approx(3.4445, rel=0.01)


def named_groups(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: ("muon" if g.get("muon") else "adamw") for g in opt.param_groups for p in g["params"]}


def test_make_optimizer_gives_muon_exactly_the_blocks_matrices():
    model = TinyLLM(ModelConfig.from_preset("tiny", 40, qk_norm=True))
    config = TrainConfig.from_preset("tiny", optimizer="muon", muon_lr=0.03)
    opt = make_optimizer(model, config)
    kinds = named_groups(model, opt)
    assert set(kinds) == {n for n, _ in model.named_parameters()}  # every parameter, once
    for name, p in model.named_parameters():
        assert (kinds[name] == "muon") == (name.startswith("blocks.") and p.dim() == 2), name
    muon = next(g for g in opt.param_groups if g.get("muon"))
    assert muon["muon_scale"] == pytest.approx(0.03 / config.lr)
    plain = make_optimizer(model, TrainConfig.from_preset("tiny"))
    assert set(named_groups(model, plain).values()) == {"adamw"}


def test_without_muon_groups_it_is_torchs_adamw_exactly(corpus_text):
    torch.manual_seed(0)
    ours = TinyLLM(ModelConfig.from_preset("tiny", 40))
    theirs = copy.deepcopy(ours)
    config = TrainConfig.from_preset("tiny", weight_decay=0.1)
    opt_ours = make_optimizer(ours, config)
    decay = [p for p in theirs.parameters() if p.dim() >= 2]
    opt_theirs = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                    {"params": [p for p in theirs.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                   lr=config.lr, betas=(0.9, config.beta2), eps=1e-8)
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is in torch 2.9 and later")
@pytest.mark.parametrize("ns_steps", [5, 3])  # PyTorch's default, and the cpu preset's
def test_muon_step_is_pytorchs_muon(ns_steps: int):
    """PyTorch's Muon orthogonalizes in bf16, ours in float32: the same step, to bf16's precision.

    Only the blocks' matrices train (the rest is frozen), so that both models see the same gradients."""
    torch.manual_seed(0)
    ours = TinyLLM(ModelConfig.from_preset("tiny", 40))
    for name, p in ours.named_parameters():
        p.requires_grad_("blocks." in name and p.dim() == 2)
    theirs = copy.deepcopy(ours)
    config = TrainConfig.from_preset("tiny", optimizer="muon", muon_lr=0.02, weight_decay=0.0, muon_steps=ns_steps)
    opt_ours = make_optimizer(ours, config)
    assert all(g.get("muon") for g in opt_ours.param_groups)  # frozen parameters get no group
    matrices = [p for n, p in theirs.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    opt_theirs = torch.optim.Muon(matrices, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0,
                                  ns_steps=ns_steps)
    before = [p.detach().clone() for p in matrices]
    x = torch.randint(0, 40, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # the later steps use the momentum
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            model(x, x)[1].backward()
            opt.step()
            opt.zero_grad()
    ours_m = [p for n, p in ours.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    for a, b, start in zip(ours_m, matrices, before):
        da, db = (a.detach() - start).flatten(), (b.detach() - start).flatten()
        assert torch.nn.functional.cosine_similarity(da, db, dim=0) > 0.99
        assert da.norm() / db.norm() == pytest.approx(1.0, abs=0.03)


def test_muon_state_is_saved_and_a_bad_optimizer_name_is_refused():
    model = TinyLLM(ModelConfig.from_preset("tiny", 40))
    opt = make_optimizer(model, TrainConfig.from_preset("tiny", optimizer="muon"))
    x = torch.randint(0, 40, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    again = make_optimizer(model, TrainConfig.from_preset("tiny", optimizer="muon"))
    again.load_state_dict(opt.state_dict())
    qkv = model.blocks[0].attn.qkv.weight
    assert torch.equal(again.state[qkv]["momentum"], opt.state[qkv]["momentum"])
    assert isinstance(again, MuonAdamW)
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'muon'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="muon_lr"):
        TrainConfig(muon_lr=0.0)
    with pytest.raises(ValueError, match="muon_steps must be at least 1"):
        TrainConfig(muon_steps=0)


def test_muon_state_from_before_ns_steps_resumes_with_five():
    """Optimizer states saved before the muon_steps field have no "ns_steps" in their Muon group: resumed by
    the toolkit, they take Newton-Schulz's usual 5 steps, the step they took when they were saved."""
    torch.manual_seed(0)
    model = TinyLLM(ModelConfig.from_preset("tiny", 40))
    x = torch.randint(0, 40, (2, 8))
    old_model, new_model = copy.deepcopy(model), copy.deepcopy(model)
    for m in (old_model, new_model):
        m(x, x)[1].backward()
    saved = make_optimizer(model, TrainConfig.from_preset("tiny", optimizer="muon")).state_dict()
    muon_group = next(g for g in saved["param_groups"] if g.get("muon"))
    assert muon_group.pop("ns_steps") == 5
    old = make_optimizer(old_model, TrainConfig.from_preset("tiny", optimizer="muon", muon_steps=3))
    load_optimizer_state(old, saved)  # the toolkit's resume: the saved groups replace the new ones
    new = make_optimizer(new_model, TrainConfig.from_preset("tiny", optimizer="muon", muon_steps=5))
    old.step()
    new.step()
    assert not torch.equal(new_model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)  # it stepped
    for a, b in zip(old_model.parameters(), new_model.parameters()):
        assert torch.equal(a, b)


def test_qk_norm_gives_queries_and_keys_unit_rms():
    cfg = ModelConfig.from_preset("tiny", 40, qk_norm=True)
    attn = tinyllm.CausalSelfAttention(cfg)
    seen = []
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.append(o))
    attn.k_norm.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 10, cfg.d_model) * 30  # large inputs: without the norm, large queries and keys
    attn(x, *tinyllm.rope_angles(cfg.d_model // cfg.n_head, torch.arange(10)))
    for t in seen:  # (B, H, T, head_dim): every head's vector at unit RMS (the gains start at 1)
        assert t.shape == (2, cfg.n_head, 10, cfg.d_model // cfg.n_head)
        assert torch.allclose(t.pow(2).mean(-1), torch.ones(()), atol=1e-3)
    plain = tinyllm.CausalSelfAttention(ModelConfig.from_preset("tiny", 40))
    assert isinstance(plain.q_norm, torch.nn.Identity) and not list(plain.q_norm.parameters())


def test_a_checkpoint_from_before_qk_norm_loads_as_it_was(tmp_path):
    """Checkpoints written before the field existed have no "qk_norm" in their config: they load without it."""
    model = TinyLLM(ModelConfig.from_preset("tiny", 40))
    data = tinyllm.checkpoint_dict(model)
    del data["model_config"]["qk_norm"]
    loaded = tinyllm.model_from_checkpoint(data)
    assert not loaded.config.qk_norm
    x = torch.randint(0, 40, (1, 8))
    assert torch.equal(loaded(x)[0], model(x)[0])


def test_qk_norm_must_be_a_bool():
    with pytest.raises(ValueError, match="qk_norm"):
        ModelConfig(qk_norm="yes")
