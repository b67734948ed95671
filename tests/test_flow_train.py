"""The flow family end to end through the command line, on tiny-sd3 and tiny-flux (offline, CPU): SFT with
checkpoints, RPO chained on a checkpoint with no --model, LoRA DPO whose file loads in FluxPipeline and changes its
transformer, bit-identical resume, `eval generate` and `eval implicit-acc` on the runs, the runs loading as
StableDiffusion3Pipeline / FluxPipeline, and FSDP2 against DDP on two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file

from styleprefs.cli.app import main
from styleprefs.errors import StyleprefsError
from styleprefs.tiny import ensure_tiny
from styleprefs.trainer.checkpoint import LORA_WEIGHTS, list_checkpoints
from styleprefs.trainer.config import TrainConfig
from styleprefs.trainer.families.flow import Flux, StableDiffusion3
from styleprefs.trainer.sharding import fsdp_plugin

SMALL = ["--resolution", "64", "--batch-size", "2", "--gradient-accumulation-steps", "1", "--max-steps", "2",
         "--warmup-steps", "0", "--learning-rate", "1e-4", "--clip-model", "tiny", "--report-to", "none"]


def styleprefs(*args) -> None:
    main([str(a) for a in args])


def transformer_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("flow") / "data"
    styleprefs("build", "--source", "sample", "--num-pairs", "8", "--shard-size", "8", "--out", data)
    return data


def test_sd3_sft_then_rpo_on_its_checkpoint_then_generate_and_implicit_acc(dataset: Path, tmp_path: Path,
                                                                            capsys) -> None:
    sft, rpo = tmp_path / "sft", tmp_path / "rpo"
    styleprefs("train", "--stage", "sft", "--data", dataset, "--out", sft, "--model", "tiny-sd3", *SMALL,
               "--checkpoint-every", "1")
    assert "distinct captions" in capsys.readouterr().err  # the cache's disk estimate
    checkpoint = list_checkpoints(sft)[0]
    styleprefs("train", "--stage", "rpo", "--data", dataset, "--out", rpo, "--init", checkpoint, *SMALL)
    err = capsys.readouterr().err
    assert "base tiny-sd3" in err and "model family sd3" in err and "beta 500 " in err

    rows = metrics(rpo)
    assert rows[0]["mse_w"] == rows[0]["ref_mse_w"] and not any(r["skipped"] for r in rows)  # --init is the reference
    base = transformer_weights(ensure_tiny("tiny-sd3"))
    assert any(not torch.equal(v, base[k]) for k, v in transformer_weights(sft).items())
    assert any(not torch.equal(v, transformer_weights(checkpoint)[k]) for k, v in transformer_weights(rpo).items())

    pipe = StableDiffusion3Pipeline.from_pretrained(rpo)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder_3 is not None and all(torch.equal(v, transformer_weights(rpo)[k])
                                                   for k, v in pipe.transformer.state_dict().items())
    styleprefs("eval", "generate", "--model", rpo, "--prompts", dataset, "--out", tmp_path / "gen",
               "--images-per-prompt", "1", "--steps", "2", "--limit", "2", "--device", "cpu")
    settings = json.loads((tmp_path / "gen" / "generate.json").read_text())
    assert settings["kind"] == "sd3" and settings["guidance"] == 7.0 and settings["height"] == 64
    assert len(list((tmp_path / "gen").rglob("*.png"))) == 2
    styleprefs("eval", "implicit-acc", "--model", rpo, "--ref", checkpoint, "--data", dataset, "--draws", "2",
               "--limit", "4", "--device", "cpu", "--out", tmp_path / "acc.json")
    acc = json.loads((tmp_path / "acc.json").read_text())
    assert acc["n_pairs"] == 4 and 0 <= acc["implicit_acc"] <= 1 and acc["logit_std"] > 0
    styleprefs("eval", "implicit-acc", "--model", checkpoint, "--ref", checkpoint, "--data", dataset, "--draws", "2",
               "--limit", "4", "--device", "cpu", "--out", tmp_path / "same.json")
    same = json.loads((tmp_path / "same.json").read_text())
    assert same["ties"] == 8 and same["implicit_acc"] == 0  # a model against itself: every logit exactly 0


def test_flux_lora_dpo_loads_in_flux_pipeline_and_changes_its_transformer(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "lora"
    styleprefs("train", "--stage", "dpo", "--data", dataset, "--out", out, "--model", "tiny-flux", "--lora-rank", "4",
               *SMALL)
    assert [r["step"] for r in metrics(out)] == [0, 1] and not any(r["skipped"] for r in metrics(out))
    pipe = FluxPipeline.from_pretrained(ensure_tiny("tiny-flux"))
    before = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    pipe.load_lora_weights(out, weight_name=LORA_WEIGHTS)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    after = pipe.transformer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"transformer_blocks.0.attn.add_q_proj.weight", "transformer_blocks.0.attn.to_add_out.weight",
            "single_transformer_blocks.0.attn.to_q.weight"} <= changed
    saved = transformer_weights(out)  # the run's merged transformer equals the base with its LoRA fused
    assert all(torch.allclose(after[k], saved[k], atol=1e-6) for k in saved)

    loaded = FluxPipeline.from_pretrained(out)
    loaded.set_progress_bar_config(disable=True)
    images = loaded("a red house", height=64, width=64, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_flow_resume_from_a_checkpoint_equals_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    options = [*SMALL, "--checkpoint-every", "1", "--caption-dropout", "0.5"]
    options[options.index("--max-steps") + 1] = "3"
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    styleprefs("train", "--stage", "dpo", "--data", dataset, "--out", straight, "--model", "tiny-flux", *options)
    short = list(options)
    short[short.index("--max-steps") + 1] = "1"
    styleprefs("train", "--stage", "dpo", "--data", dataset, "--out", stopped, "--model", "tiny-flux", *short)
    styleprefs("train", "--stage", "dpo", "--data", dataset, "--out", stopped, "--model", "tiny-flux", *options,
               "--resume")
    a, b = transformer_weights(straight), transformer_weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in metrics(straight)] == [r["loss"] for r in metrics(stopped)]


# --- FSDP2 against DDP on CPU processes --------------------------------------------------------------

BIN = Path(sys.executable).parent  # the venv's bin: styleprefs and torchrun
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def torchrun(out: Path, dataset: Path, *options: str) -> str:
    """``torchrun --nproc_per_node 2 styleprefs train`` (DPO on tiny-flux, full fine-tuning); its stderr."""
    command = [BIN / "torchrun", "--standalone", "--nproc_per_node", "2", "--no-python", BIN / "styleprefs", "train",
               "--stage", "dpo", "--data", dataset, "--out", out, "--model", "tiny-flux", *SMALL, "--checkpoint-every",
               "2", *options]
    done = subprocess.run([str(c) for c in command], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_fsdp_equals_ddp_on_two_cpu_processes_across_a_resume(dataset: Path, tmp_path: Path) -> None:
    """FSDP2 (reduce-scatter of gradients, AdamW on shards, clipping over sharded norms, sharded checkpoints,
    full-state save) computes what DDP does, up to float32 summation order: a sharded run stopped after its
    checkpoint at step 2 and resumed with --fsdp ends within 1e-6 of the DDP run's weights, its losses within 1e-4.
    (A resume that lost the optimizer's state would move the weights by about the learning rate, 4e-4.)"""
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    three = ("--max-steps", "3")
    assert "weights identical on all 2 processes" in torchrun(ddp, dataset, *three)
    torchrun(fsdp, dataset, "--fsdp")
    checkpoint = list_checkpoints(fsdp)[0]
    assert sorted(p.name for p in checkpoint.glob("pytorch_model_fsdp_*")) == ["pytorch_model_fsdp_0"]  # no reference
    torchrun(fsdp, dataset, *three, "--fsdp", "--resume")
    a, b = transformer_weights(ddp), transformer_weights(fsdp)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert [r["step"] for r in metrics(fsdp)] == [0, 1, 2]
    for x, y in zip(metrics(ddp), metrics(fsdp)):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4) and y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    FluxPipeline.from_pretrained(checkpoint)  # the checkpoint's diffusers folder holds the full weights


def test_fsdp_plan_and_refusals(dataset: Path, tmp_path: Path) -> None:
    plugin = fsdp_plugin(Flux())
    assert (plugin.fsdp_version, plugin.reshard_after_forward) == (2, True)
    assert plugin.transformer_cls_names_to_wrap == ["FluxTransformerBlock", "FluxSingleTransformerBlock"]
    assert fsdp_plugin(StableDiffusion3()).transformer_cls_names_to_wrap == ["JointTransformerBlock"]
    with pytest.raises(StyleprefsError, match="--fsdp shards full fine-tuning"):
        TrainConfig(stage="dpo", data="d", out="o", fsdp=True, lora_rank=4)
    with pytest.raises(SystemExit) as exit_info:
        styleprefs("train", "--stage", "dpo", "--data", dataset, "--out", tmp_path / "one", "--model", "tiny-flux",
                   *SMALL, "--fsdp")
    assert exit_info.value.code == 2
