"""The speedrun's ablation ladder (bench/ladder.py) and its loop (bench/speedrun.py), on the tiny preset.

Fast checks, no timing asserts: every rung builds, gives logits of the right shape and a finite loss,
trains a few steps; squared ReLU has exactly SwiGLU's parameters; the ladder's rewritten forward is
Part I's forward when no change is switched on; Muon drives the weight matrices and AdamW the rest.
"""

from __future__ import annotations

import math

import pytest
import torch

import tinyllm
from bench import early_screen, ladder, speedrun

TINY = speedrun.Track("tiny", "tiny", "cpu", None, 5.0, (3.0,), eval_interval=3, eval_windows=4,
                      early_eval_interval=3)


def tiny_cfg(**overrides) -> tinyllm.ModelConfig:
    return tinyllm.ModelConfig.from_preset("tiny", 40, **overrides)


@pytest.fixture(scope="module")
def tiny_data(corpus_text: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    tok = tinyllm.CharTokenizer.from_text(corpus_text)
    train_ids, val_ids, _ = tinyllm.prepare_data(corpus_text, tok)
    return torch.tensor(train_ids), torch.tensor(val_ids), tok.vocab_size


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: on a machine whose cores are shared, two threads wait on each other at every small op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RUNG_NAMES = [n for n in ladder.VARIANTS if n != "compile"]  # compile: built but not run here (slow to compile)


@pytest.mark.parametrize("name", list(ladder.VARIANTS))
def test_every_rung_builds_and_gives_the_right_shapes(name: str) -> None:
    variant = ladder.get_variant(name)
    torch.manual_seed(0)
    model = ladder.build_model(variant, tiny_cfg())
    idx = torch.randint(0, 40, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 40)
    assert loss is not None and math.isfinite(loss.item())
    optimizer = ladder.build_optimizer(variant, model, tinyllm.TrainConfig.from_preset("tiny"))
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == model.num_params()


@pytest.mark.parametrize("name", RUNG_NAMES)
def test_every_rung_trains_and_its_loss_falls(name: str, tiny_data) -> None:
    torch.manual_seed(0)
    record = speedrun.train_run(ladder.get_variant(name), TINY, tiny_data, seed=0, budget_s=None, steps=30)
    history = record["history"]
    assert record["steps"] == 30 and len(history) == 11  # an evaluation every 3 steps, and the final one
    assert all(math.isfinite(r["val_loss"]) for r in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert record["load_start"] and record["load_end"]


@pytest.mark.parametrize("threshold, rows", [(99.0, [2, 5, 10, 15, 20]), (0.0, list(range(2, 21, 2)))])
def test_evaluations_are_fine_until_the_last_threshold_then_coarse(threshold: float, rows: list[int], tiny_data) -> None:
    """Every 2 steps until val <= the threshold (at once for 99 nats, never for 0), then every 5."""
    track = speedrun.Track("tiny", "tiny", "cpu", None, 5.0, (threshold,), eval_interval=5, eval_windows=4,
                           early_eval_interval=2)
    record = speedrun.train_run(ladder.get_variant("baseline"), track, tiny_data, seed=0, budget_s=None, steps=20)
    assert [r["step"] for r in record["history"]] == rows + [20]  # and the final one, on the whole split
    assert record["history"][-1]["windows"] == "all"


def test_squared_relu_has_exactly_swiglus_parameters() -> None:
    for cfg in (tiny_cfg(), tinyllm.ModelConfig.from_preset("cpu", 65), tinyllm.ModelConfig.from_preset("9m", 65)):
        swiglu = tinyllm.TinyLLM(cfg).num_params()
        relu2 = ladder.build_model(ladder.get_variant("relu2"), cfg)
        assert relu2.num_params() == swiglu
        assert isinstance(relu2.blocks[0].mlp, ladder.ReLU2MLP)


def test_ladder_forward_without_changes_is_part_ones_forward() -> None:
    """LadderLLM rewrites TinyLLM.forward (to pass value embeddings); with no change on, the numbers match."""
    cfg, idx = tiny_cfg(), torch.randint(0, 40, (2, 32))
    torch.manual_seed(1)
    base = tinyllm.TinyLLM(cfg)
    torch.manual_seed(1)
    same = ladder.LadderLLM(cfg, ())
    assert torch.equal(base(idx, idx)[0], same(idx, idx)[0])


def test_changes_keep_part_ones_weights_where_they_do_not_touch() -> None:
    """Same seed, same numbers in the untouched matrices: the comparison with the baseline is paired."""
    cfg = tiny_cfg()
    torch.manual_seed(2)
    base = tinyllm.TinyLLM(cfg)
    torch.manual_seed(2)
    ve = ladder.build_model(ladder.get_variant("value_embed"), cfg)
    assert torch.equal(base.blocks[1].attn.qkv.weight, ve.blocks[1].attn.qkv.weight)
    assert isinstance(ve.blocks[1].attn, ladder.LadderAttention)


def test_previous_is_the_preset_before_the_speedrun_and_baseline_is_todays() -> None:
    """`previous` undoes the two changes the speedrun put into the cpu preset: AdamW everywhere, no QK-norm."""
    track = speedrun.TRACKS["cpu"]
    now = speedrun.Trainer(ladder.get_variant("baseline"), track, 65, seed=0, total_steps=10)
    before = speedrun.Trainer(ladder.get_variant("previous"), track, 65, seed=0, total_steps=10)
    assert now.cfg.qk_norm and now.config.optimizer == "muon"
    assert any(g.get("muon") for g in now.optimizer.param_groups)
    assert not before.cfg.qk_norm and before.config.optimizer == "adamw"
    assert not any(g.get("muon") for g in before.optimizer.param_groups)
    assert before.model.num_params() == now.model.num_params() - 2 * now.cfg.n_layer * (now.cfg.d_model // now.cfg.n_head)


def test_untied_zero_init_and_softcap_do_what_they_say() -> None:
    cfg = tiny_cfg()
    untied = ladder.build_model(ladder.get_variant("untied"), cfg)
    assert untied.head.weight is not untied.embed.weight
    assert untied.num_params() == tinyllm.TinyLLM(cfg).num_params() + cfg.vocab_size * cfg.d_model
    zero = ladder.build_model(ladder.get_variant("zero_init"), cfg)
    assert all(b.attn.proj.weight.abs().sum() == 0 and b.mlp.down.weight.abs().sum() == 0 for b in zero.blocks)
    capped = ladder.build_model(ladder.get_variant("softcap"), cfg)
    with torch.no_grad():
        capped.head.weight.mul_(1e4)  # huge logits: the cap must still hold them below SOFTCAP
        logits, _ = capped(torch.randint(0, 40, (2, 8)))
    assert logits.abs().max() <= ladder.SOFTCAP


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest() -> None:
    model = tinyllm.TinyLLM(tiny_cfg())
    opt = ladder.build_optimizer(ladder.get_variant("muon"), model, tinyllm.TrainConfig.from_preset("tiny"))
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in muon_ids) == (name.startswith("blocks.") and p.ndim == 2), name
    ladder.set_lr(opt, 1e-3)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(1e-3 * ladder.MUON_LR / 3e-3)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_the_ladder_is_made_of_known_rungs() -> None:
    assert set(ladder.LADDER) <= set(ladder.VARIANTS) and ladder.LADDER[0] == "baseline"
    assert len(set(ladder.LADDER)) == len(ladder.LADDER) == 12


def test_combine_and_ramp() -> None:
    both = ladder.get_variant("muon+relu2+lr_warmup+batch_ramp")
    assert both.muon and both.batch_ramp and both.arch == ("relu2",) and both.train["lr"] == 3e-3
    config = tinyllm.TrainConfig.from_preset("cpu")
    assert ladder.batch_size_at(both, config, 0.1) == ladder.RAMP_BATCH
    assert ladder.batch_size_at(both, config, 0.5) == config.batch_size
    with pytest.raises(ValueError, match="unknown variant"):
        ladder.get_variant("muon+nonsense")


def test_first_below_and_summary() -> None:
    history = [{"val_loss": 2.0, "seconds": 1.0, "step": 50}, {"val_loss": 1.8, "seconds": 2.0, "step": 100}]
    assert speedrun.first_below(history, 1.9) == {"seconds": 2.0, "step": 100}
    assert speedrun.first_below(history, 1.5) is None
    runs = [{"variant": v, "seed": s, "val_loss": val, "steps": 10, "train_s": 1.0, "load_start": [0.1],
             "load_end": [0.2], "history": history}
            for v, s, val in [("baseline", 1, 1.60), ("baseline", 2, 1.62), ("x", 1, 1.50), ("x", 2, 1.51)]]
    rows = {r["variant"]: r for r in speedrun.summarise(runs)}
    assert rows["x"]["diff"] == pytest.approx(-0.105)
    assert rows["x"]["beyond_noise"]
    assert rows["x"]["first_below"]["1.9"] == {"seconds": 2.0, "step": 100}


def test_summary_pairs_each_run_with_the_baseline_of_its_own_session() -> None:
    """Seeds 4 and 5 added in a later session, with their own baseline runs: each difference is taken
    against the baseline run of the same session and seed, and the noise bar uses the spread of the
    baseline runs a variant is paired with, not of every baseline run under every load."""
    history = [{"val_loss": 2.0, "seconds": 1.0, "step": 50}]
    runs = [{"variant": v, "seed": s, "session": sess, "mode": "budget", "val_loss": val, "steps": 10,
             "train_s": 1.0, "load_start": [0.1], "load_end": [0.2], "history": history}
            for v, s, sess, val in [("baseline", 1, "a", 1.60), ("x", 1, "a", 1.65),  # +0.05
                                    ("baseline", 4, "a", 1.90),  # an earlier session's seed 4, under another load
                                    ("baseline", 4, "b", 1.61), ("x", 4, "b", 1.66)]]  # today's: +0.05
    rows = {r["variant"]: r for r in speedrun.summarise(runs)}
    assert rows["x"]["diff"] == pytest.approx(0.05)  # against session a's seed 4 it would be (0.05 - 0.24) / 2
    assert rows["baseline"]["n"] == 3
    assert rows["x"]["beyond_noise"]  # 0.05 > 2 x 0.007; with all three baseline runs (std 0.17) it would not be
    # At equal steps a run is deterministic, so a baseline run of another session pairs with it; by the clock it does not.
    other = [{**runs[1], "mode": "steps"}, {**runs[0], "session": "b", "val_loss": 1.61, "mode": "steps"}]  # x: a
    assert {r["variant"]: r for r in speedrun.summarise(other)}["x"].get("diff") == pytest.approx(0.04)
    clock = [{**r, "mode": "budget"} for r in other]
    assert "diff" not in {r["variant"]: r for r in speedrun.summarise(clock)}["x"]


def test_early_screen_finds_the_first_step_at_the_target_and_applies_its_knobs(tiny_data, monkeypatch) -> None:
    """bench/early_screen.py on the tiny preset: an evaluation every 10 steps, the first one at or below the
    target, and the embedding / gain LR multiples in the AdamW groups' lr_scale."""
    args = early_screen.parse_args(["--stop", "30", "--total", "60", "--gain-lr", "5", "--qk-gain", "2"])
    monkeypatch.setattr(early_screen, "TARGET", 99.0)  # any loss is below it: the first evaluation
    record = early_screen.screen(ladder.get_variant("baseline"), 0, args, tiny_data, TINY)
    assert [s for s, _ in record["history"]] == [10, 20, 30]
    assert record["first_1898_step"] == 10
    monkeypatch.setattr(early_screen, "TARGET", 0.0)  # never reached
    assert early_screen.screen(ladder.get_variant("baseline"), 0, args, tiny_data, TINY)["first_1898_step"] is None
    trainer = speedrun.Trainer(ladder.get_variant("qk_norm"), TINY, tiny_data[2], 0, 60)
    early_screen.tune_early(trainer, args)
    scales = {p.dim(): g["lr_scale"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert scales == {2: 1.0, 1: 5.0}  # the tied embedding x1, the RMSNorm gains x5
    assert torch.equal(trainer.model.blocks[0].attn.q_norm.weight, torch.full((16,), 2.0))


@pytest.mark.parametrize("name, batch, warmup, optimizer, ns_steps, qk_norm, dtype", [
    ("previous", 16, 50, "adamw", None, False, "fp32"),  # the cpu preset before issue 19
    ("first_muon", 16, 50, "muon", 5, True, "fp32"),  # the preset of the first Muon record (commit 6871ae5)
    ("fp32", 24, 10, "muon", 3, True, "fp32"),  # the preset of the second (commit 839427e)
    ("baseline", 24, 10, "muon", 3, True, "auto"),  # today's
])
def test_the_record_variants_pin_the_presets_they_name(name, batch, warmup, optimizer, ns_steps, qk_norm,
                                                       dtype) -> None:
    """A records variant must not drift with today's preset: it pins every setting in which they differ."""
    trainer = speedrun.Trainer(ladder.get_variant(name), speedrun.TRACKS["cpu"], 65, 0, 100)
    config = trainer.config
    assert (config.batch_size, config.warmup_steps, config.optimizer, trainer.cfg.qk_norm) == (batch, warmup, optimizer, qk_norm)
    assert config.dtype == dtype
    assert trainer.amp == tinyllm.choose_precision(torch.device("cpu"), dtype)  # what the runs train in
    assert (config.lr, config.muon_lr, trainer.cfg.d_model, trainer.cfg.n_layer) == (2e-3, 0.02, 128, 3)
    muon = [g for g in trainer.optimizer.param_groups if g.get("muon")]
    assert [g["ns_steps"] for g in muon] == ([ns_steps] if ns_steps else [])
