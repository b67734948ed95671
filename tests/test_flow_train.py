"""The flow family end to end through the command line, on tiny-sd3 and tiny-flux (offline, CPU): SFT with
checkpoints, RPO chained on a checkpoint with no --model, LoRA DPO whose file loads in FluxPipeline and changes its
transformer, bit-identical resume, `eval generate` and `eval implicit-acc` on the runs, and the runs loading as
StableDiffusion3Pipeline / FluxPipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file

from styleprefs.cli.app import main
from styleprefs.tiny import ensure_tiny
from styleprefs.trainer.checkpoint import LORA_WEIGHTS, list_checkpoints

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
