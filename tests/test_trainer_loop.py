"""The training loop on tiny models: every stage, reference defaults, exact resume, NaN guard, LoRA, SDXL, processes."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from conftest import write_pickapic_parquet
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.errors import StyleprefsError
from styleprefs.trainer import loop
from styleprefs.trainer.checkpoint import list_checkpoints
from styleprefs.trainer.config import TrainConfig, config_options
from styleprefs.trainer.families.unet import StableDiffusion
from styleprefs.trainer.models import load_components, load_denoiser, resolve_model
from styleprefs.trainer.plots import plot_curves

LOG2 = math.log(2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 pairs built from the Pick-a-Pic fixture rows (the `pickapic_dir` data), shared by the module."""
    root = tmp_path_factory.mktemp("trainer")
    source = write_pickapic_parquet(root / "pickapic")
    return build_dataset(BuildConfig(source=str(source), num_pairs=8, shard_size=8), root / "data",
                         show_progress=False).out


@pytest.fixture(scope="module")
def other_unets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two UNet-only folders holding the tiny UNet with every weight shifted by +0.01 and +0.02."""
    root = tmp_path_factory.mktemp("unets")
    folders = []
    for shift in (0.01, 0.02):
        unet = load_denoiser("tiny", StableDiffusion())
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(shift)
        unet.save_pretrained(root / str(shift))
        folders.append(root / str(shift))
    return folders[0], folders[1]


# draw_pairs(seed 0, micro-step 5, slots 0-2, (4, 2, 2), the UNet family's timesteps, dropout 0.5) as drawn before the
# model-family seam (commit 2142b91).
GOLDEN_TIMESTEPS, GOLDEN_DROPPED = [357, 378, 488], [False, True, True]
GOLDEN_NOISE = [0.8011599183082581, 0.2554866373538971]


def _cfg(dataset: Path, out: Path, **kw) -> TrainConfig:
    opts = {"stage": "dpo", "data": str(dataset), "out": str(out), "model": "tiny", "clip_model": "tiny",
            "resolution": 64, "batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2,
            "learning_rate": 1e-4, "scale_lr": False, "warmup_steps": 0, "checkpoint_every": 0, "report_to": "none"}
    return TrainConfig(**(opts | kw))


def _run(dataset: Path, out: Path, **kw) -> list[dict]:
    loop.train(_cfg(dataset, out, **kw), show_progress=False)
    return _metrics(out)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def _same(a: torch.nn.Module | dict, b: torch.nn.Module | dict) -> bool:
    a = a if isinstance(a, dict) else a.state_dict()
    b = b if isinstance(b, dict) else b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.mark.parametrize("stage", ["sft", "dpo", "rpo", "orpo", "orrpo"])
def test_every_stage_trains_and_writes_a_loadable_pipeline(dataset: Path, tmp_path: Path, stage: str) -> None:
    validation = {"validation_prompts": ["a red fox", "a cabin"], "validation_every": 1} if stage == "sft" else {}
    rows = _run(dataset, tmp_path / "run", stage=stage, **validation)

    assert [r["step"] for r in rows] == [0, 1]
    keys = ("loss", "mse_w", "lr", "grad_norm", "skipped") + (("implicit_acc", "reward_margin", "mse_l")
                                                              if stage != "sft" else ())
    for key in keys:
        assert all(key in r for r in rows), key
    assert all(math.isfinite(r["loss"]) and not r["skipped"] for r in rows)
    if stage in ("dpo", "rpo"):  # policy == reference at step 0: every logit is 0
        assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
        assert rows[0]["mse_w"] == rows[0]["ref_mse_w"] and rows[1]["mse_w"] != rows[1]["ref_mse_w"]
    saved = yaml.safe_load((tmp_path / "run" / "train_config.yaml").read_text())
    assert TrainConfig(**saved) == _cfg(dataset, tmp_path / "run", stage=stage, **validation).resolved()
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "run")
    assert not _same(pipe.unet, load_denoiser("tiny", StableDiffusion()))  # it trained
    if stage == "sft":
        assert sorted(p.name for p in (tmp_path / "run" / "validation").iterdir()) == ["step-000001.png",
                                                                                        "step-000002.png"]


def test_reference_is_ref_else_init_else_base(other_unets: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = other_unets
    base = load_denoiser("tiny", StableDiffusion())
    components = load_components("tiny")

    def models(**kw):
        return loop.load_models(_cfg(tmp_path, tmp_path / "out", **kw), components, torch.float32)

    policy, reference = models()
    assert _same(policy, base) and _same(reference, base)
    policy, reference = models(init=str(a))
    assert _same(policy, load_denoiser(str(a), StableDiffusion())) and _same(reference, load_denoiser(str(a), StableDiffusion()))
    policy, reference = models(init=str(a), ref=str(b))
    assert _same(policy, load_denoiser(str(a), StableDiffusion())) and _same(reference, load_denoiser(str(b), StableDiffusion()))
    assert not any(p.requires_grad for p in reference.parameters()) and not reference.training
    assert models(stage="sft", ref=str(b))[1] is None  # reference-free stages load none
    assert models(lora_rank=2)[1] is None  # the policy with adapters disabled serves
    assert _same(models(lora_rank=2, ref=str(b))[1], load_denoiser(str(b), StableDiffusion()))


def test_two_stage_sft_then_rpo_uses_the_sft_model_as_reference(dataset: Path, tmp_path: Path) -> None:
    _run(dataset, tmp_path / "sft", stage="sft", learning_rate=1e-3)
    rows = _run(dataset, tmp_path / "rpo", stage="rpo", init=str(tmp_path / "sft"))
    # Policy and reference both start as the SFT model (the base would give other reference errors).
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    assert rows[0]["ref_mse_w"] == rows[0]["mse_w"] and rows[0]["ref_mse_l"] == rows[0]["mse_l"]
    base_rows = _run(dataset, tmp_path / "rpo-base", stage="rpo", init=str(tmp_path / "sft"), ref="tiny",
                     max_steps=1)
    assert base_rows[0]["ref_mse_w"] != rows[0]["ref_mse_w"]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    # 2 micro-batches of 2 pairs per step: an epoch of 8 pairs is 2 steps, so 6 steps cross epochs.
    opts = {"max_steps": 6, "gradient_accumulation_steps": 2, "warmup_steps": 4, "learning_rate": 1e-3}
    straight = _run(dataset, tmp_path / "straight", **opts)

    out = tmp_path / "resumed"
    _run(dataset, out, **(opts | {"max_steps": 3, "checkpoint_every": 1, "checkpoints_total_limit": 2}))
    assert [p.name for p in list_checkpoints(out)] == ["step-000002", "step-000003"]
    shutil.rmtree(list_checkpoints(out)[-1])  # as if killed after logging step 2, before its checkpoint
    with pytest.raises(StyleprefsError, match="--resume"):
        _run(dataset, out, **opts)
    with pytest.raises(StyleprefsError, match=r"cannot resume .*beta"):
        _run(dataset, out, **opts, resume=True, beta=2000.0)
    resumed = _run(dataset, out, **opts, resume=True, checkpoint_every=2)

    assert _same(_unet_weights(out), _unet_weights(tmp_path / "straight"))
    assert resumed == straight  # metrics of the redone step replaced, not duplicated
    assert [p.name for p in list_checkpoints(out)][-1] == "step-000006"


def test_non_finite_loss_skips_steps_then_stops(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    real = loop.dpo_loss
    monkeypatch.setattr(loop, "dpo_loss", lambda *args: real(*args) * float("nan"))
    with pytest.raises(StyleprefsError, match="2 steps had a non-finite loss"):
        _run(dataset, tmp_path / "run", max_steps=5, max_nan_steps=2)
    rows = _metrics(tmp_path / "run")
    assert [(r["step"], r["skipped"], r["loss"]) for r in rows] == [(0, True, None), (1, True, None)]


def test_lora_trains_only_adapters_against_the_disabled_adapter_reference_and_resumes(dataset: Path, tmp_path: Path) -> None:
    rows = _run(dataset, tmp_path / "run", lora_rank=4, learning_rate=1e-2)
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6)  # LoRA B starts at 0
    assert rows[1]["mse_w"] != rows[1]["ref_mse_w"] and rows[1]["loss"] != pytest.approx(LOG2)

    trained, base = _unet_weights(tmp_path / "run"), load_denoiser("tiny", StableDiffusion()).state_dict()
    assert trained.keys() == base.keys()  # merged: no adapter weights left
    targets = (".to_q.", ".to_k.", ".to_v.", ".to_out.0.")
    changed = {k for k in base if not torch.equal(trained[k], base[k])}
    assert changed and all(any(t in k for t in targets) for k in changed)
    StableDiffusionPipeline.from_pretrained(tmp_path / "run")

    # LoRA runs resume exactly too (the adapter weights are in the checkpoint).
    _run(dataset, tmp_path / "resumed", lora_rank=4, learning_rate=1e-2, max_steps=1, checkpoint_every=1)
    _run(dataset, tmp_path / "resumed", lora_rank=4, learning_rate=1e-2, resume=True)
    assert _same(_unet_weights(tmp_path / "resumed"), trained)


def test_rpo_with_tiny_tau_equals_dpo(dataset: Path, other_unets: tuple[Path, Path], tmp_path: Path) -> None:
    # A reference different from the policy makes the logits non-zero; "text" embeddings of distinct
    # captions put each winner's whole weight on its own loser as tau -> 0.
    opts = {"ref": str(other_unets[0]), "batch_size": 4, "max_steps": 1, "embedding": "text"}
    dpo = _run(dataset, tmp_path / "dpo", stage="dpo", **opts)[0]
    rpo = _run(dataset, tmp_path / "rpo", stage="rpo", tau=1e-6, **opts)[0]
    spread = _run(dataset, tmp_path / "spread", stage="rpo", tau=100.0, **opts)[0]
    assert dpo["loss"] != pytest.approx(LOG2)
    assert rpo["loss"] == pytest.approx(dpo["loss"], rel=1e-6)
    assert spread["loss"] != pytest.approx(dpo["loss"], rel=1e-3)


def test_model_inputs_share_noise_and_timestep_within_a_pair() -> None:
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    family = StableDiffusion()
    components = SimpleNamespace(noise_scheduler=scheduler, vae=SimpleNamespace(config={"scaling_factor": 0.5}),
                                 family=family)
    b, shape = 3, (4, 2, 2)
    batch = {"latent_mean": torch.randn(2 * b, *shape), "latent_std": torch.zeros(2 * b, *shape),
             "prompt_embeds": torch.randn(b, 77, 8), "empty_prompt_embeds": torch.zeros(77, 8)}
    draw_time = lambda gen: family.draw_time(gen, components)  # noqa: E731
    draws = loop.draw_pairs(0, 5, [0, 1, 2], shape, draw_time, caption_dropout=0.5)
    assert torch.equal(loop.draw_pairs(0, 5, [1], shape, draw_time, 0.5).noise[0], draws.noise[1])  # per pair
    # Golden values: the UNet family's draw stream must not change (a resumed run promises the same weights).
    assert draws.timesteps.tolist() == GOLDEN_TIMESTEPS and draws.dropped.tolist() == GOLDEN_DROPPED
    assert draws.noise[0, 0, 0].tolist() == pytest.approx(GOLDEN_NOISE, abs=1e-6)
    inputs, target = family.model_inputs(batch, draws, components)

    t, hidden = inputs["timestep"], inputs["encoder_hidden_states"]
    assert torch.equal(t[:b], t[b:]) and torch.equal(hidden[:b], hidden[b:])
    latents = batch["latent_mean"] * 0.5
    noise = torch.cat([draws.noise, draws.noise])
    assert torch.equal(inputs["sample"], scheduler.add_noise(latents, noise, t))
    assert torch.equal(target, scheduler.get_velocity(latents, noise, t))
    for i, dropped in enumerate(draws.dropped.tolist()):
        assert torch.equal(hidden[i], batch["empty_prompt_embeds"] if dropped else batch["prompt_embeds"][i])


def test_curves_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [{"step": i, "loss": 0.7 - 0.1 * i, "implicit_acc": 0.5, "reward_margin": 0.1 * i, "skipped": False}
            for i in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_sft_curves_show_only_the_loss_with_its_running_mean(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    from styleprefs.trainer.plots import SMOOTHING, running_mean

    ramp = [float(i) for i in range(50)]  # the mean of steps i .. i + SMOOTHING - 1 of a ramp is its midpoint
    assert np.allclose(running_mean(ramp, SMOOTHING), [i + (SMOOTHING - 1) / 2 for i in range(51 - SMOOTHING)])
    values = [float(v) for v in np.random.default_rng(0).random(50)]
    rows = [{"step": i, "loss": v, "implicit_acc": None, "reward_margin": None} for i, v in enumerate(values)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as img:
        assert img.width == 400  # one 4-inch panel at 100 dpi, not three with two of them empty


def test_snr_gamma_weights_the_sft_loss(dataset: Path, tmp_path: Path) -> None:
    """A gamma far below every timestep's SNR scales each pair's error by about gamma / SNR: the logged loss falls."""
    plain = _run(dataset, tmp_path / "plain", stage="sft", max_steps=1)[0]["loss"]
    weighted = _run(dataset, tmp_path / "weighted", stage="sft", max_steps=1, snr_gamma=1e-6)[0]["loss"]
    assert 0 < weighted < plain * 1e-3


def test_sdxl_tiny_trains_one_step(dataset: Path, tmp_path: Path) -> None:
    rows = _run(dataset, tmp_path / "run", model="tiny-sdxl", max_steps=1)
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-6)
    StableDiffusionXLPipeline.from_pretrained(tmp_path / "run")


def test_config_yaml_overrides_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("stage: rpo\ndata: d\nout: o\nbeta: 5e3\nlearning-rate: 1e-7\ntau: 0.5\n")
    cfg = TrainConfig.from_yaml_and_overrides(path, {"tau": 2.0, "ref": None, "batch_size": "8"})
    assert (cfg.stage, cfg.beta, cfg.learning_rate, cfg.tau, cfg.ref, cfg.batch_size) == \
           ("rpo", 5000.0, 1e-7, 2.0, None, 8)
    assert TrainConfig.from_yaml_and_overrides(None, yaml.safe_load(cfg.to_yaml())) == cfg
    with pytest.raises(StyleprefsError, match="unknown training option.*betta"):
        TrainConfig.from_yaml_and_overrides(path, {"betta": 1.0})
    with pytest.raises(StyleprefsError, match="--stage must be one of"):
        TrainConfig.from_yaml_and_overrides(path, {"stage": "ppo"})
    with pytest.raises(StyleprefsError, match="--batch-size must be at least 1"):
        TrainConfig.from_yaml_and_overrides(path, {"batch_size": 0})
    with pytest.raises(StyleprefsError, match="--snr-gamma must be positive and is for --stage sft only"):
        TrainConfig.from_yaml_and_overrides(path, {"stage": "dpo", "snr_gamma": 5.0})
    with pytest.raises(StyleprefsError, match="missing required.*--data"):
        TrainConfig.from_yaml_and_overrides(None, {"stage": "dpo", "out": "o"})
    # Learning-rate defaults: 1e-8 per pair, scaled, for full fine-tuning; 1e-5 as given with LoRA.
    for stage in ("sft", "dpo", "rpo", "orpo"):
        resolved = TrainConfig(stage=stage, data="d", out="o").resolved()
        assert (resolved.learning_rate, resolved.scale_lr) == (1e-8, True)
    lora = TrainConfig(stage="dpo", data="d", out="o", lora_rank=8)
    assert (lora.resolved().learning_rate, lora.resolved().scale_lr) == (1e-5, False)
    assert lora.optimizer_learning_rate(8) == 1e-5
    options = config_options()
    assert [o.name for o in options][:3] == ["stage", "data", "out"] and all(o.help for o in options)


def _worker(rank: int, port: int, cfg: dict) -> None:
    """One training process, with the environment torchrun gives it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    AcceleratorState._reset_state(reset_partial_state=True)  # forget this test process's single-process state
    loop.train(TrainConfig(**cfg), show_progress=False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the two training processes")
def test_two_processes_match_one_process_with_the_doubled_batch(dataset: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo) as torchrun starts them, RPO with the losers gathered across processes:
    2 processes x 1 pair equal 1 process x 2 pairs. Forked (not torchrun) to skip ~20 s of imports per process."""
    opts = {"stage": "rpo", "gather_rpo": True}
    single = _run(dataset, tmp_path / "one", batch_size=2, **opts)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(dataset, tmp_path / "two", batch_size=1, **opts).__dict__
    workers = [multiprocessing.get_context("fork").Process(target=_worker, args=(r, port, cfg)) for r in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    double = _metrics(tmp_path / "two")
    assert [r["step"] for r in double] == [0, 1]  # only the main process writes metrics
    for key in ("loss", "mse_w", "mse_l", "ref_mse_w", "grad_norm"):  # same pairs, draws and gradient
        assert double[0][key] == pytest.approx(single[0][key], rel=1e-5), key
    assert double[1]["loss"] == pytest.approx(single[1]["loss"], rel=1e-2)


def test_default_learning_rate_at_the_papers_batch_is_the_papers_effective_rate() -> None:
    # Diffusion-DPO's launchers: 1e-8 x (1 pair x 128 accumulation x 16 GPUs) = 2.048e-5.
    paper = TrainConfig(stage="dpo", data="d", out="o", batch_size=1, gradient_accumulation_steps=128).resolved()
    assert paper.optimizer_learning_rate(16) == pytest.approx(2.048e-5, rel=1e-12)
    cfg = dataclasses.replace(paper, batch_size=8)
    assert loop.learning_rate_lines(cfg, 2) == [
        "lr 2.048e-05 = 1e-08 x 8 batch x 128 accum x 2 processes (--scale-lr); constant_with_warmup, 500 warm-up steps"]
    unscaled = dataclasses.replace(paper, scale_lr=False)
    lines = loop.learning_rate_lines(unscaled, 16)
    assert lines[0].startswith("lr 1e-08 = as given (--no-scale-lr)")
    assert len(lines) == 2 and "below 1e-07" in lines[1] and "--scale-lr" in lines[1]
    short = loop.learning_rate_lines(dataclasses.replace(paper, max_steps=100), 16)
    assert len(short) == 2 and "shorter than the warm-up (500 steps)" in short[1] and "4.096e-06" in short[1]
    assert len(loop.learning_rate_lines(dataclasses.replace(paper, max_steps=100, lr_scheduler="constant"), 16)) == 1


def test_scaled_learning_rate_reaches_the_optimizer_and_the_banner(dataset: Path, tmp_path: Path, capsys) -> None:
    rows = _run(dataset, tmp_path / "run", scale_lr=True, gradient_accumulation_steps=2, learning_rate=1e-4)
    assert [r["lr"] for r in rows] == [pytest.approx(4e-4)] * 2  # 1e-4 x 2 pairs x 2 micro-batches x 1 process
    assert "lr 0.0004 = 0.0001 x 2 batch x 2 accum x 1 processes (--scale-lr)" in capsys.readouterr().err


def test_a_saturated_preference_loss_is_warned_about_once(dataset: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A DPO loss of about 0 for SATURATION_STEPS steps in a row (pairs ranked far apart: no gradient) is warned
    about once; a loss that is not saturated, or an SFT run, is not."""
    real_step, losses = loop._train_step, iter([0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0])
    monkeypatch.setattr(loop, "SATURATION_STEPS", 3)
    monkeypatch.setattr(loop, "_train_step", lambda *args: real_step(*args) | {"loss": next(losses)})
    _run(dataset, tmp_path / "saturated", max_steps=7, beta=5000)
    err = capsys.readouterr().err
    assert err.count("loss has been below 1e-06 for 3 steps") == 1 and "step 6:" in err and "--beta (now 5000)" in err
    losses = iter([0.0] * 4)
    _run(dataset, tmp_path / "sft", stage="sft", max_steps=4)
    assert "loss has been below" not in capsys.readouterr().err


class _Recording(torch.amp.GradScaler):
    """The CPU GradScaler, recording its calls: the fp16 call sequence without a GPU."""

    def __init__(self) -> None:
        super().__init__("cpu", init_scale=2.0**8)
        self.calls: list[str] = []

    def unscale_(self, optimizer) -> None:
        self.calls.append("unscale_")
        super().unscale_(optimizer)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None) -> None:
        self.calls.append("update")
        super().update(new_scale)


def test_fp16_grad_scaler_skips_through_the_scaler_and_the_schedule_waits(dataset: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """Step 0: NaN loss (the trainer skips). Step 1: finite loss, NaN gradients (the scaler skips). Then normal
    steps. No "unscale_() has already been called", and the warm-up advances only on real updates."""
    scaler = _Recording()
    make = loop._accelerator

    def with_scaler(cfg, out):
        accelerator = make(cfg, out)
        accelerator.scaler, accelerator.native_amp = scaler, True
        return accelerator

    monkeypatch.setattr(loop, "_accelerator", with_scaler)
    monkeypatch.setattr(type(loop._accelerator(_cfg(dataset, tmp_path / "x"), tmp_path / "x")), "mixed_precision",
                        property(lambda self: "fp16"))  # accelerate unscales only under fp16
    real, calls = loop.sft_loss, iter(range(100))

    def loss(err_w, weights=None):
        n = next(calls)
        if n == 0:
            return real(err_w, weights) * float("nan")
        if n == 1:  # finite value, NaN gradient: d sqrt(x)/dx at 0
            return real(err_w, weights) + torch.sqrt(err_w.sum() * 0)
        return real(err_w, weights)

    monkeypatch.setattr(loop, "sft_loss", loss)
    rows = _run(dataset, tmp_path / "run", stage="sft", max_steps=4, warmup_steps=10, learning_rate=1e-3)
    assert [(r["skipped"], r["overflow"]) for r in rows] == [(True, False), (False, True), (False, False),
                                                            (False, False)]
    assert [r["lr"] for r in rows] == [0.0, 0.0, 0.0, pytest.approx(1e-4)]  # one warm-up step, after step 2
    assert scaler.calls == ["unscale_", "update"] + ["unscale_", "step", "update"] * 3
    assert scaler.get_scale() == 2.0**6  # halved by both skipped steps


def test_sft_runs_the_policy_on_the_winners_only(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    sizes = []
    forward = UNet2DConditionModel.forward
    monkeypatch.setattr(UNet2DConditionModel, "forward",
                        lambda self, sample, *a, **kw: sizes.append(sample.shape[0]) or forward(self, sample, *a, **kw))
    _run(dataset, tmp_path / "sft", stage="sft", batch_size=2, gradient_accumulation_steps=2, max_steps=1)
    assert sizes == [2, 2]  # B winners per micro-batch, no reference pass
    sizes.clear()
    _run(dataset, tmp_path / "dpo", stage="dpo", batch_size=2, max_steps=1)
    assert sizes == [4, 4]  # 2B for the policy and the reference


@pytest.mark.parametrize("kind", [DistributedType.DEEPSPEED, DistributedType.FSDP])
def test_deepspeed_and_fsdp_are_refused_in_one_line(dataset: Path, tmp_path: Path, monkeypatch, kind) -> None:
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: kind))
    with pytest.raises(StyleprefsError, match=f"^{kind.value} is not supported: train on one process or with DDP") as exc:
        _run(dataset, tmp_path / "run")
    assert "\n" not in str(exc.value) and not (tmp_path / "run" / "train_config.yaml").exists()


def test_micro_batches_run_inside_accelerate_accumulate(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """accelerate's gradient-accumulation bookkeeping (what DeepSpeed's engine would follow) marks only the
    last micro-batch of each step as the one that syncs gradients and updates."""
    syncs = []
    backward = Accelerator.backward
    monkeypatch.setattr(Accelerator, "backward",
                        lambda self, loss, **kw: syncs.append(self.sync_gradients) or backward(self, loss, **kw))
    _run(dataset, tmp_path / "run", gradient_accumulation_steps=3, max_steps=2)
    assert syncs == [False, False, True] * 2


def test_init_without_model_takes_the_base_recorded_in_the_run_or_checkpoint(dataset: Path, tmp_path: Path) -> None:
    _run(dataset, tmp_path / "sft", stage="sft", learning_rate=1e-3, checkpoint_every=1)
    checkpoint = list_checkpoints(tmp_path / "sft")[0]
    for init in (tmp_path / "sft", checkpoint):
        assert TrainConfig(stage="rpo", data="d", out="o", init=str(init)).resolved().model == "tiny"
    pipeline_folder = tmp_path / "pipeline"
    shutil.copytree(tmp_path / "sft", pipeline_folder, ignore=shutil.ignore_patterns("train_config.yaml"))
    assert TrainConfig(stage="rpo", data="d", out="o", init=str(pipeline_folder)).resolved().model == \
           str(pipeline_folder)  # a pipeline folder without a record is its own base
    assert TrainConfig(stage="rpo", data="d", out="o", init=str(tmp_path)).resolved().model == \
           "stable-diffusion-v1-5/stable-diffusion-v1-5"
    rows = _run(dataset, tmp_path / "rpo", stage="rpo", model=None, init=str(checkpoint), max_steps=1)
    assert rows[0]["ref_mse_w"] == rows[0]["mse_w"]  # reference = --init (the checkpoint), as the policy
    assert yaml.safe_load((tmp_path / "rpo" / "train_config.yaml").read_text())["model"] == "tiny"


def test_checkpoints_are_pipelines_with_the_trained_unet(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(dataset, out, checkpoint_every=1)
    first, last = list_checkpoints(out)
    assert _same(_unet_weights(last), _unet_weights(out))  # the final pipeline holds the last step's UNet
    assert not _same(_unet_weights(first), _unet_weights(last))
    pipe = StableDiffusionPipeline.from_pretrained(first)
    assert _same(pipe.unet, _unet_weights(first)) and _same(pipe.vae, load_components("tiny").vae)


def _base_with_safety_checker(folder: Path) -> Path:
    """The tiny pipeline plus a tiny safety checker and a feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    shutil.copytree(resolve_model("tiny"), folder)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    config = CLIPConfig(text_config=small, vision_config=small | {"image_size": 32, "patch_size": 8},
                        projection_dim=32)
    StableDiffusionSafetyChecker(config).save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(folder / "feature_extractor")
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": True}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_saved_pipelines_keep_the_bases_safety_checker_and_feature_extractor(dataset: Path, tmp_path: Path) -> None:
    base = _base_with_safety_checker(tmp_path / "base")
    out = tmp_path / "run"
    _run(dataset, out, stage="sft", model=str(base), max_steps=1, checkpoint_every=1)
    for folder in (out, list_checkpoints(out)[0]):
        pipe = StableDiffusionPipeline.from_pretrained(folder)
        assert pipe.safety_checker is not None and pipe.feature_extractor is not None
        assert _same(pipe.safety_checker, StableDiffusionPipeline.from_pretrained(base).safety_checker)


def test_lora_checkpoint_loads_with_diffusers_load_lora_weights(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(dataset, out, lora_rank=4, learning_rate=1e-2, max_steps=1, checkpoint_every=1)
    checkpoint = list_checkpoints(out)[0]
    assert (checkpoint / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(resolve_model("tiny"))
    pipe.load_lora_weights(checkpoint)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    fused, merged = pipe.unet.state_dict(), _unet_weights(checkpoint)
    assert fused.keys() == merged.keys() and not _same(merged, load_denoiser("tiny", StableDiffusion()).state_dict())
    assert all(torch.allclose(fused[k], merged[k], atol=1e-6) for k in fused)
    assert _same(merged, _unet_weights(out))  # final pipeline: the same merged UNet
