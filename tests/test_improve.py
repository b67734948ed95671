"""Online improvement on tiny models: the improvement model, double classifier-free guidance, the improve
editor, and the iterative and spin stages (trainer/improve.py, editors/improve.py, trainer/iterative.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from styleprefs.cli.app import main
from styleprefs.editors import load_editor
from styleprefs.editors.improve import double_guidance
from styleprefs.errors import StyleprefsError
from styleprefs.inspect import BUILD_STATE
from styleprefs.style import load_style
from styleprefs.trainer import loop
from styleprefs.trainer.config import TrainConfig
from styleprefs.trainer.improve import (IMPROVE, RECONSTRUCT, UNCONDITIONAL, add_image_channels, draw_tasks,
                                        improve_inputs)
from styleprefs.trainer.families.unet import StableDiffusion
from styleprefs.trainer.models import load_components, load_denoiser

TINY = {"model": "tiny", "resolution": 64, "batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 2,
        "warmup_steps": 0, "learning_rate": 1e-3, "report_to": "none", "checkpoint_every": 0}
ONLINE = {"online_pairs": 4, "iterations": 2, "sample_steps": 2, "checkpoint_every": 1, "learning_rate": 1e-4}
KILL_TIMEOUT = 300


def config(stage: str, data: Path, out: Path, **options) -> TrainConfig:
    return TrainConfig(stage=stage, data=str(data), out=str(out), **(TINY | options))


def unet_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("improve") / "data"
    main(["build", "--source", "sample", "--num-pairs", "6", "--shard-size", "6", "--out", str(data)])
    return data


@pytest.fixture(scope="module")
def improver(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("improver") / "run"
    loop.train(config("improve", dataset, out), show_progress=False)
    return out


def unet_inputs(in_channels: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(2, in_channels, 8, 8, generator=gen), "timestep": torch.tensor([10, 900]),
            "encoder_hidden_states": torch.randn(2, 77, 32, generator=gen)}


def test_zero_initialised_channels_make_the_improver_equal_the_base() -> None:
    base = load_denoiser("tiny", StableDiffusion()).eval()
    improver = add_image_channels(load_denoiser("tiny", StableDiffusion())).eval()
    assert improver.config.in_channels == 8 and improver.conv_in.weight[:, 4:].abs().max() == 0
    inputs = unet_inputs(4)
    with torch.no_grad():
        expected = base(**inputs).sample
        for seed, image in ((0, torch.zeros(2, 4, 8, 8)), (1, torch.randn(2, 4, 8, 8) * 5)):
            got = improver(**(inputs | {"sample": torch.cat([inputs["sample"], image], 1)})).sample
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert add_image_channels(improver) is improver  # already an improver: unchanged
    odd = load_denoiser("tiny", StableDiffusion())
    odd.register_to_config(in_channels=6)
    with pytest.raises(StyleprefsError, match="6 input channels"):
        add_image_channels(odd)


def test_tasks_are_drawn_at_the_configured_rates() -> None:
    tasks, losers = draw_tasks(7, 3, list(range(20000)), 0.2, 0.3)
    shares = [(tasks == t).float().mean().item() for t in (IMPROVE, RECONSTRUCT, UNCONDITIONAL)]
    assert shares == pytest.approx([0.5, 0.2, 0.3], abs=0.015)  # 4.5 standard errors at n = 20000
    assert losers.float().mean().item() == pytest.approx(0.5, abs=0.015)
    again, _ = draw_tasks(7, 3, [5, 6], 0.2, 0.3)
    assert torch.equal(again, tasks[5:7])  # a pair's task depends on (seed, step, slot) only


def test_each_task_gets_its_conditioning() -> None:
    components = load_components("tiny", include_denoiser=False)
    gen = torch.Generator().manual_seed(0)
    mean_w, mean_l = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen) + 10
    batch = {"latent_mean": torch.cat([mean_w, mean_l]), "latent_std": torch.zeros(6, 4, 8, 8),
             "prompt_embeds": torch.ones(3, 77, 32), "empty_prompt_embeds": torch.zeros(77, 32)}
    tasks, use_loser = torch.tensor([IMPROVE, RECONSTRUCT, UNCONDITIONAL]), torch.tensor([False, True, True])
    zeros = torch.zeros(3, 4, 8, 8)
    inputs, target = improve_inputs(batch, torch.zeros(3, dtype=torch.long), zeros, (zeros, zeros), tasks, use_loser,
                                    components)
    image = inputs["sample"][:, 4:]
    assert torch.equal(image[0], mean_l[0]) and torch.equal(image[1], mean_l[1]) and not image[2].any()
    scale = components.vae.config.scaling_factor
    x = inputs["sample"][:, :4] / components.noise_scheduler.alphas_cumprod[0].sqrt()
    torch.testing.assert_close(x, torch.stack([mean_w[0], mean_l[1], mean_l[2]]) * scale)  # improve targets w
    assert inputs["encoder_hidden_states"][0].eq(1).all() and not inputs["encoder_hidden_states"][1:].any()


def test_double_guidance_reduces_to_the_conditional_prediction_and_matches_float64() -> None:
    gen = torch.Generator().manual_seed(0)
    uncond, image, full = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    torch.testing.assert_close(double_guidance(uncond, image, full, 1.0, 1.0), full, rtol=0, atol=1e-6)
    for s_image, s_text in ((3.0, 3.5), (1.5, 7.5), (0.0, 0.0), (2.0, 0.5)):
        u, i, f = (t.double() for t in (uncond, image, full))
        expected = (1 - s_image) * u + (s_image - s_text) * i + s_text * f  # the same sum, regrouped
        got = double_guidance(uncond, image, full, s_image, s_text)
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-5)


def test_the_improver_loads_in_diffusers_and_edits(improver: Path) -> None:
    rows = [json.loads(line) for line in (improver / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(improver)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 8
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    out = pipe("a red square", image=image, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    editor = load_editor("improve", load_style("winter"), model=str(improver), device="cpu", steps=2)
    edits = editor.edit([image, image.resize((48, 64))], ["a red square"] * 2, [1, 1])
    assert [e.size for e in edits] == [(64, 64), (48, 64)]
    assert editor.params()["text_guidance"] == 3.5 and editor.params()["image_guidance"] == 3.0


@pytest.fixture(scope="module")
def whole(dataset: Path, improver: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-iteration run."""
    out = tmp_path_factory.mktemp("iterative") / "whole"
    loop.train(config("iterative", dataset, out, improver=str(improver), **ONLINE), show_progress=False)
    return out


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = unet_weights(a), unet_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[name], wb[name]) for name in wa)


def test_iterative_writes_two_datasets_and_models_and_resumes_after_a_crash(dataset: Path, improver: Path,
                                                                            whole: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    for k in (1, 2):
        manifest = json.loads((whole / f"iter-{k}" / "data" / "manifest.json").read_text())
        assert manifest["counts"]["kept"] == 4 and manifest["config"]["editor"]["name"] == "improve"
        pipe = StableDiffusionPipeline.from_pretrained(whole / f"iter-{k}" / "train")
        assert pipe.unet.config.in_channels == 4
    summary = json.loads((whole / "iterations.json").read_text())["iterations"]
    assert [s["iteration"] for s in summary] == [1, 2]
    assert summary[1]["init"] == str(whole / "iter-1" / "train") and summary[1]["reference"] == "tiny"

    killed = tmp_path / "killed"
    real_step, calls = loop._train_step, []

    def dies_in_iteration_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # iteration 2's second step, after its step-1 checkpoint
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", dies_in_iteration_2)
    cfg = config("iterative", dataset, killed, improver=str(improver), **ONLINE)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, show_progress=False)
    assert (killed / "iter-2" / "train" / "checkpoints" / "step-000001").is_dir()
    generated = (killed / "iter-2" / "generated" / "index.jsonl").read_text()
    monkeypatch.setattr(loop, "_train_step", real_step)
    loop.train(cfg, show_progress=False)
    assert (killed / "iter-2" / "generated" / "index.jsonl").read_text() == generated  # nothing regenerated
    steps = [json.loads(line)["step"] for line in (killed / "iter-2" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1]
    assert all(same_weights(whole / f"iter-{k}" / "train", killed / f"iter-{k}" / "train") for k in (1, 2))
    with pytest.raises(StyleprefsError, match="other options"):
        loop.train(config("iterative", dataset, killed, improver=str(improver), **(ONLINE | {"beta": 2000})))


def test_kill_9_at_each_phase_then_the_same_command_equals_an_uninterrupted_run(dataset: Path, improver: Path,
                                                                               whole: Path, tmp_path: Path) -> None:
    """Real SIGKILLs of `styleprefs train --stage iterative` (its whole process group): while iteration 1 generates,
    once its pairs are written for the improver, and after iteration 2's first checkpoint; then the same command
    in this process finishes the run, with every iteration's weights equal to the uninterrupted run's."""
    out = tmp_path / "killed"
    options = TINY | ONLINE | {"improver": improver}
    args = ["train", "--stage", "iterative", "--data", str(dataset), "--out", str(out)]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    kill_points = (out / "iter-1" / "generated" / "index.jsonl", out / "iter-1" / "pairs",
                   out / "iter-2" / "train" / "checkpoints" / "step-000001")
    for point in kill_points:
        with open(tmp_path / "killed.log", "a") as log:
            proc = subprocess.Popen([Path(sys.executable).parent / "styleprefs", *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + KILL_TIMEOUT
        while not point.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
        assert not (out / "iter-2" / "train" / "model_index.json").exists()
    main(args)
    summary = json.loads((out / "iterations.json").read_text())["iterations"]
    assert [s["iteration"] for s in summary] == [1, 2]
    assert all(same_weights(whole / f"iter-{k}" / "train", out / f"iter-{k}" / "train") for k in (1, 2))
    assert not [p for pattern in ("*.partial", "*.tmp", BUILD_STATE) for p in out.rglob(pattern)]


def test_spin_runs_two_iterations_against_the_previous_model(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "spin"
    last = loop.train(config("spin", dataset, out, **ONLINE), show_progress=False)
    assert last == out / "iter-2" / "train"
    summary = json.loads((out / "iterations.json").read_text())["iterations"]
    assert [s["reference"] for s in summary] == ["tiny", str(out / "iter-1" / "train")]
    for k in (1, 2):
        manifest = json.loads((out / f"iter-{k}" / "data" / "manifest.json").read_text())
        assert manifest["counts"]["kept"] == 4
        StableDiffusionPipeline.from_pretrained(out / f"iter-{k}" / "train")
