"""`bench/gpu.py --model tiny --device cpu`: the smoke run prints every row of every table; the written-out
estimates (`styleprefs.memory_estimate`, `bench/estimates.py`): their arithmetic by hand, their monotonicity, and
every constant recounted on the real diffusers/transformers architectures on PyTorch's meta device.

The --compile rows run with TORCHDYNAMO_DISABLE=1 (torch.compile then runs the module eagerly): compiling
every variant takes minutes on one core. That --compile reaches torch.compile is tested in test_gpu_settings.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, AutoencoderKLQwenImage, FluxTransformer2DModel, QwenImageTransformer2DModel,
                       SD3Transformer2DModel, UNet2DConditionModel)
from peft import LoraConfig
from torch.utils.flop_counter import FlopCounterMode
from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, T5Config, T5EncoderModel)

from styleprefs import memory_estimate as est

ROOT = Path(__file__).resolve().parents[1]


def _expected_rows() -> list[str]:
    rows = [f"{editor} images/s, batch 1" for editor in ("instruct-pix2pix", "prompt-diffusion")]
    rows.append("cache pairs/s")
    rows += [f"{stage} pairs/s per GPU, {cache}, {compile}" for stage in ("DPO", "RPO", "SFT")
             for cache in ("cached", "re-encoding") for compile in ("eager", "--compile")]
    rows += [f"GPU-hours, 2000-step {stage} run at 2048 pairs/step" for stage in ("DPO", "RPO", "SFT")]
    return rows


def test_smoke_run_prints_every_row() -> None:
    env = os.environ | {"TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--model", "tiny", "--device", "cpu", "--editor-steps", "1",
         "--batches", "1", "--pairs", "4", "--train-batch", "2", "--steps", "1", "--mfu", "0.2"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    estimates = subprocess.run([sys.executable, str(ROOT / "bench" / "estimates.py"), "--mfu", "0.2"],
                               capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    assert result.stdout.endswith(estimates) and "MFU 0.2" in estimates  # the same tables close the bench
    sections = result.stdout.strip().split("\n\n")
    titles = [s.splitlines()[0].split(" at ")[0] for s in sections]
    assert titles[:3] == ["SD1.5 (tiny)", "SDXL (tiny)", "Instruction editors (tiny)"]
    for section in sections[:2]:
        lines = section.splitlines()[2:]
        for row in _expected_rows():
            assert sum(line.startswith(row) for line in lines) == 1, (row, section)
        assert all(line.rstrip().endswith("-") for line in lines)  # no CUDA: no peak memory
    sd15, sdxl, instruction = sections[:3]
    assert sum("GPU-hours, 10000 pairs built with" in line for line in sd15.splitlines()) == 2
    assert "n/a: the editors are SD1.5 models" in sdxl and "10000 pairs built" not in sdxl
    # each editor and offload: measured, or skipped with the reason (the editor not installed; offload needs CUDA)
    lines = instruction.splitlines()[2:]
    for editor in ("kontext", "qwen-image-edit"):
        for offload in ("none", "model"):
            row = next(line for line in lines if line.startswith(f"{editor} images/s, batch 1, offload {offload}"))
            assert "(skipped: " in row or row.split()[-2] != "n/a", row
    assert all("skipped: " in line for line in lines if "offload model" in line)


# --- the written-out estimates (styleprefs.memory_estimate) ---

def _toy(hidden: int = 10, blocks=((2, 50.0, 40.0), (3, 30.0, 20.0))) -> est.Architecture:
    """1B parameters, 128 tokens at 1024 px (100 image + 28 text), no encoders unless added."""
    return est.Architecture("toy", 10**9, {"encoder": 5 * 10**8}, hidden=hidden,
                            blocks=tuple(est.Blocks(*b) for b in blocks), lora_linears=7, image_tokens=100,
                            text_tokens=28)


def test_full_finetune_state_of_one_billion_parameters() -> None:
    toy = _toy(blocks=((1, 0.0, 0.0),))  # no activations: the state alone
    cases = {("adamw", "precomputed"): 16e9, ("adamw", "copy"): 18e9, ("adamw8bit", "precomputed"): 6e9,
             ("adafactor", "precomputed"): 4e9}
    for (optimizer, reference), expected in cases.items():
        recipe = est.Recipe("full", optimizer, checkpointing=False, reference=reference)
        assert est.training_memory(toy, recipe).total == expected, (optimizer, reference)
    fp32 = {"adamw": 16e9, "adamw8bit": 10e9, "adafactor": 8e9}  # fp32 weights and gradients, no master copy
    for optimizer, expected in fp32.items():
        recipe = est.Recipe("full", optimizer, checkpointing=False, reference="precomputed", fp32_weights=True)
        assert est.training_memory(toy, recipe).total == expected, optimizer
    lora_fp32 = est.training_memory(toy, est.Recipe("lora", checkpointing=False, rank=4, fp32_weights=True))
    assert lora_fp32.weights == 4e9 + 560 * 4
    uncached = est.Recipe("full", checkpointing=False, reference="precomputed", cached=False)
    assert est.training_memory(toy, uncached).encoders == 1e9  # 0.5B in bf16
    sharded = est.training_memory(toy, est.Recipe("full", checkpointing=False, reference="copy", cached=False,
                                                  shards=4))
    assert sharded.total == 18e9 / 4 + 1e9  # the state is split over the GPUs, the encoders are not


def test_lora_and_activation_arithmetic_by_hand() -> None:
    toy = _toy()
    assert est.lora_parameters(toy, 4) == 4 * 2 * 10 * 7
    lora = est.training_memory(toy, est.Recipe("lora", checkpointing=False, rank=4))
    assert (lora.weights, lora.gradients, lora.optimizer, lora.reference) == (2e9 + 560 * 4, 560 * 4, 560 * 8, 0)
    # 2 images x 128 tokens x 10 hidden = 2560 token-hidden units
    assert est.activation_bytes(toy, "full", False, images=2) == 2560 * (2 * 50 + 3 * 30)
    assert est.activation_bytes(toy, "full", True, images=2) == 2560 * (2 * 5 + 50)  # inputs + one block recomputed
    assert est.activation_bytes(toy, "lora", True, images=2) == 2560 * (2 * 5 + 40)
    assert est.activation_bytes(toy, "lora", False, images=1, resolution=512) == (25 + 28) * 10 * (2 * 40 + 3 * 20)
    assert est.activation_bytes(toy, "lora", False, images=1, text_tokens=3) == (100 + 3) * 10 * (2 * 40 + 3 * 20)


def test_bad_reference_for_the_method_is_refused() -> None:
    with pytest.raises(ValueError, match="adapters off"):
        est.training_memory(_toy(), est.Recipe("lora", reference="copy"))
    with pytest.raises(ValueError, match="reference copy or precomputed"):
        est.training_memory(_toy(), est.Recipe("full"))


@pytest.mark.parametrize("arch", [*est.TRAINED, est.KONTEXT, est.QWEN_IMAGE_EDIT], ids=lambda a: a.name)
def test_estimates_are_monotone(arch: est.Architecture) -> None:
    def total(**kw) -> float:
        return est.training_memory(arch, est.Recipe(**kw)).total

    for method, reference in (("lora", "adapters-off"), ("full", "copy")):
        with_ckpt = est.training_memory(arch, est.Recipe(method, reference=reference))
        without = est.training_memory(arch, est.Recipe(method, reference=reference, checkpointing=False))
        assert with_ckpt.activations < without.activations
        assert total(method=method, reference=reference) < total(method=method, reference=reference, cached=False)
    for ckpt in (True, False):
        for optimizer in est.MOMENT_BYTES:
            lora = total(method="lora", optimizer=optimizer, checkpointing=ckpt)
            assert lora < total(method="full", optimizer=optimizer, checkpointing=ckpt, reference="precomputed")
    adamw, adam8, adafactor = (total(method="full", optimizer=o, reference="precomputed")
                               for o in ("adamw", "adamw8bit", "adafactor"))
    assert adafactor < adam8 < adamw < total(method="full", reference="copy")
    assert est.inference_memory(arch, offload=True) < est.inference_memory(arch, offload=False)


def test_fit_is_judged_against_the_card_in_gib() -> None:
    card = 80 * 2**30
    assert est.fit(0.9 * card, 80) == "yes"
    assert est.fit(0.9 * card + 1, 80) == "tight"
    assert est.fit(card, 80) == "tight"
    assert est.fit(card + 1, 80) == "no"


def test_gpu_hours_formula() -> None:
    assert est.gpu_hours(312 * 0.5 * 3600, mfu=0.5) == pytest.approx(1.0)
    assert est.implied_mfu(est.pairs_per_second(2.0, mfu=0.3), 2.0) == pytest.approx(0.3)
    it = est.Iteration(policy_tflops=1.0, improve_tflops=10.0, images=100, sample_steps=5, dpo_steps=3,
                       global_batch=4)
    assert it.tflops() == {"generate": 100 * 5 * 2, "improve": 1000, "train": 3 * 4 * 8}
    for _, hours in est.iteration_rows():
        assert hours["total"] == pytest.approx(hours["generate"] + hours["improve"] + hours["train"])


def test_step_time_counts_forward_passes() -> None:
    assert est.pair_forwards(est.Recipe("full", checkpointing=False, reference="copy")) == est.PAIR_FORWARDS == 8
    assert est.pair_forwards(est.Recipe("full", reference="copy")) == 10  # + the recomputed policy forwards
    assert est.pair_forwards(est.Recipe("full", reference="precomputed")) == 8
    assert est.pair_forwards(est.Recipe("lora", checkpointing=False)) == 6  # no weight gradients
    flux = est.FORWARD_TFLOPS["FLUX.1-dev", 1024]
    lora = est.Recipe("lora")
    assert est.step_seconds(est.FLUX_DEV, lora, mfu=0.5) == pytest.approx(8 * flux / 156)
    uncached = est.Recipe("lora", cached=False)
    extra = est.step_seconds(est.FLUX_DEV, uncached, 0.5) - est.step_seconds(est.FLUX_DEV, lora, 0.5)
    assert extra == pytest.approx((2 * est.VAE_ENCODE_1024_TFLOPS + 4.84 + 0.013) / 156)


def test_cross_checks_agree_with_the_reports() -> None:
    assert all(check.agrees() for check in est.CROSS_CHECKS)


def test_estimates_print_every_row_with_fit() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "estimates.py")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    rows = [line for line in out.splitlines() if line.split("  ")[0].strip() in {a.name for a in est.TRAINED}]
    assert len(rows) == len(est.TRAINED) * len(est.RECIPES)
    assert all(line.split()[-2] in {"yes", "tight", "no"} and float(line.split()[-1]) > 0 for line in rows)

    def verdict(model: str, recipe: str) -> str:
        return next(line for line in rows if line.startswith(model) and recipe in line).split()[-2]

    assert verdict("FLUX.1-dev", "full, AdamW fp32, ckpt, ref copy") == "no"
    assert verdict("SD3.5 Medium", "LoRA r32, AdamW fp32, ckpt, cached") == "yes"
    for name in est.EDITORS:  # all on GPU and with offload, each judged against 24 and 80 GB cards
        editing = [line.split() for line in out.splitlines() if line.startswith(name)]
        assert len(editing) == 2 and all({row[-1], row[-2]} <= {"yes", "tight", "no"} for row in editing)
    checks = next(s for s in out.split("\n\n") if s.startswith("Estimate against reported figures")).splitlines()[2:]
    assert len(checks) == len(est.CROSS_CHECKS) and all(line.endswith("  yes") for line in checks)
    assert "A100-hours per iteration" in out and "Training the improver once" in out


# --- the estimate's constants, recounted on the real architectures (meta device: no weights, no compute) ---


def _sd3(layers: int, heads: int = 24, dual: tuple[int, ...] = (), pos: int = 384):
    return SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=layers,
                                 attention_head_dim=64, num_attention_heads=heads, joint_attention_dim=4096,
                                 caption_projection_dim=64 * heads, pooled_projection_dim=2048, out_channels=16,
                                 pos_embed_max_size=pos, dual_attention_layers=dual, qk_norm="rms_norm")


def _flux(double: int = 19, single: int = 38):
    return FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=double, num_single_layers=single,
                                  attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                  pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))


def _qwen(layers: int = 60):
    return QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=layers,
                                       attention_head_dim=128, num_attention_heads=24, joint_attention_dim=3584,
                                       guidance_embeds=False, axes_dims_rope=(16, 56, 56))


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_published_configs() -> None:
    vl = Qwen2_5_VLConfig(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                          num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                          vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                             out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31]))
    with torch.device("meta"):
        counts = {
            est.SD35_MEDIUM.denoiser: _sd3(24, dual=tuple(range(13))),
            est.SD35_LARGE.denoiser: _sd3(38, heads=38, pos=192),
            est.FLUX_DEV.denoiser: _flux(),
            est.QWEN_IMAGE_EDIT.denoiser: _qwen(),
            est.T5_XXL: T5EncoderModel(T5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64,
                                                vocab_size=32128, feed_forward_proj="gated-gelu")),
            est.CLIP_L: CLIPTextModelWithProjection(CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                projection_dim=768)),
            est.CLIP_G: CLIPTextModelWithProjection(CLIPTextConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                projection_dim=1280, hidden_act="gelu")),
            est.VAE_16: AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4,
                                      up_block_types=["UpDecoderBlock2D"] * 4,
                                      block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16),
            est.VAE_QWEN: AutoencoderKLQwenImage(),
            est.QWEN_VL_7B: Qwen2_5_VLForConditionalGeneration(vl),
        }
        for expected, model in counts.items():
            assert _count(model) == expected, type(model).__name__


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


def _with_lora(model, rank: int = 32):
    model.requires_grad_(False)
    model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS))
    return model


def test_lora_parameter_counts_match_peft() -> None:
    with torch.device("meta"):
        for arch, model in ((est.SD35_MEDIUM, _sd3(24, dual=tuple(range(13)))), (est.FLUX_DEV, _flux()),
                            (est.QWEN_IMAGE_EDIT, _qwen())):
            trainable = sum(p.numel() for p in _with_lora(model).parameters() if p.requires_grad)
            assert trainable == est.lora_parameters(arch, 32), arch.name


class _Flash(torch.autograd.Function):
    """What flash attention saves for backward: q, k, v, the output and the fp32 log-sum-exp (no token x token
    matrix); the forward only makes the output's shape (the meta device computes nothing)."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        ctx.save_for_backward(q, k, v, out, torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device))
        return out


@contextlib.contextmanager
def _flash_attention():
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda query, key, value, *args, **kwargs: _Flash.apply(query, key, value)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


N_IMAGE, N_TEXT = 256, 64


def _saved_bytes(model, inputs: dict, lora: bool) -> int:
    """Bytes autograd saves for backward in one bf16 forward, parameters (and views of them) excluded."""
    model = _with_lora(model.to(torch.bfloat16)) if lora else model.to(torch.bfloat16).requires_grad_(True)
    params = {id(p) for p in model.parameters()}
    seen, total = set(), [0]

    def pack(t):
        base = t if t._base is None else t._base
        if id(t) not in params and id(base) not in params and id(base) not in seen:
            seen.add(id(base))
            total[0] += base.numel() * base.element_size()
        return t

    with _flash_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return total[0]


def _inputs(family: str) -> dict:
    bf = dict(dtype=torch.bfloat16)
    text = torch.randn(1, N_TEXT, 3584 if family == "qwen" else 4096, **bf)
    if family == "sd3":  # 32 x 32 latents in 2 x 2 patches: N_IMAGE tokens
        return dict(hidden_states=torch.randn(1, 16, 32, 32, **bf), encoder_hidden_states=text,
                    pooled_projections=torch.randn(1, 2048, **bf), timestep=torch.ones(1))
    image = torch.randn(1, N_IMAGE, 64, **bf)
    if family == "flux":
        return dict(hidden_states=image, encoder_hidden_states=text, pooled_projections=torch.randn(1, 768, **bf),
                    timestep=torch.ones(1), guidance=torch.ones(1), img_ids=torch.zeros(N_IMAGE, 3),
                    txt_ids=torch.zeros(N_TEXT, 3))
    return dict(hidden_states=image, encoder_hidden_states=text, timestep=torch.ones(1), img_shapes=[(1, 16, 16)],
                encoder_hidden_states_mask=torch.ones(1, N_TEXT, dtype=torch.long))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_activation_constants_match_autograd_saved_tensors(lora: bool) -> None:
    """Each block's constant = saved bytes of a model with one more such block, per token per hidden unit."""
    def per_block(family: str, hidden: int, larger, smaller) -> float:
        with torch.device("meta"):
            grown, base = (_saved_bytes(make(), _inputs(family), lora) for make in (larger, smaller))
        return (grown - base) / ((N_IMAGE + N_TEXT) * hidden)

    def sd3(layers: int, dual: tuple[int, ...] = ()):
        return lambda: _sd3(layers, dual=dual, pos=96)

    double, single = est.FLUX_DEV.blocks
    measured = [
        (est.SD3_BLOCK, per_block("sd3", 1536, sd3(3), sd3(2))),
        (est.SD3_DUAL_BLOCK, per_block("sd3", 1536, sd3(3, (0,)), sd3(2))),
        ((double.full, double.lora), per_block("flux", 3072, lambda: _flux(2, 0), lambda: _flux(1, 0))),
        ((single.full, single.lora), per_block("flux", 3072, lambda: _flux(0, 2), lambda: _flux(0, 1))),
        ((est.QWEN_IMAGE_EDIT.blocks[0].full, est.QWEN_IMAGE_EDIT.blocks[0].lora),
         per_block("qwen", 3072, lambda: _qwen(2), lambda: _qwen(1))),
    ]
    for constants, value in measured:
        assert value == pytest.approx(constants[1 if lora else 0], abs=0.05), constants  # written to 1 decimal


def test_forward_flop_constants() -> None:
    def tflops(model, **inputs) -> float:
        with FlopCounterMode(display=False) as counter:
            model(**inputs)
        return counter.get_total_flops() / 1e12

    n, t = 2048, 512  # Kontext at 512 px: 1024 target + 1024 condition tokens, 512 text tokens
    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16)
        vae_encode = tflops(vae.encoder, sample=torch.randn(1, 3, 1024, 1024))
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        assert _count(unet) == 859_520_964  # SD1.5's UNet
        sd15 = tflops(unet, sample=torch.randn(1, 4, 64, 64), timestep=torch.ones(1),
                      encoder_hidden_states=torch.randn(1, 77, 768))
        kontext = tflops(_flux(), hidden_states=torch.randn(1, n, 64), encoder_hidden_states=torch.randn(1, t, 4096),
                         pooled_projections=torch.randn(1, 768), timestep=torch.ones(1), guidance=torch.ones(1),
                         img_ids=torch.zeros(n, 3), txt_ids=torch.zeros(t, 3))
    assert sd15 == pytest.approx(est.FORWARD_TFLOPS["SD1.5", 512], rel=1e-3)
    assert vae_encode == pytest.approx(est.VAE_ENCODE_1024_TFLOPS, rel=1e-3)
    assert kontext == pytest.approx(est.FORWARD_TFLOPS["kontext", 512], rel=1e-3)



def test_estimates_refuse_a_bad_mfu() -> None:
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "estimates.py"), "--mfu", "1.5"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "must be in (0, 1]" in bad.stderr
