"""Written-out GPU memory and compute estimates for the large flow models (printed by ``python bench/estimates.py``
and ``python bench/gpu.py``).

Everything here is arithmetic on stated numbers; no model is loaded. GB means 10^9 bytes.

**Parameter counts** (exact: each class instantiated on the ``meta`` device with the published config, counted with
``sum(p.numel())``; ``tests/test_bench_gpu.py`` recounts them), beside the model cards' rounded figures:

- SD3.5 Medium MMDiT-X, ``SD3Transformer2DModel`` (24 layers, 24 heads x 64, dual attention in layers 0-12,
  RMS QK-norm, pos_embed_max_size 384): 2,243,171,520. Stability AI's release says "2.5 billion parameters".
- SD3.5 Large MMDiT (38 layers, 38 heads x 64, pos_embed_max_size 192): 8,056,627,520; card and announcement 8.1B.
- FLUX.1 [dev] and FLUX.1 Kontext [dev], ``FluxTransformer2DModel`` (19 double + 38 single blocks, 24 heads x 128,
  guidance embedding): 11,901,408,320; both cards: "a 12 billion parameter rectified flow transformer"
  (flux1-kontext-dev.safetensors is 23.8 GB = 11.9B x 2 bytes).
- Qwen-Image / Qwen-Image-Edit-2509, ``QwenImageTransformer2DModel`` (60 blocks, 24 heads x 128, joint dim 3584):
  20,430,401,088; card: "a 20B MMDiT".
- T5 v1.1 XXL encoder (d_model 4096, d_ff 10240, 24 layers, 64 heads): 4,762,310,656 (~4.7B).
- CLIP ViT-L/14 text encoder with projection: 123,650,304; OpenCLIP ViT-bigG/14 text encoder with projection:
  694,659,840.
- Qwen2.5-VL-7B-Instruct (the edit pipelines load ``Qwen2_5_VLForConditionalGeneration``, LM head included):
  8,292,166,656 (card: 7B; the untied 152,064 x 3,584 LM head is 545M of it).
- VAEs: the 16-channel ``AutoencoderKL`` of SD3/FLUX 83,821,011; ``AutoencoderKLQwenImage`` 126,892,531.

**Tokens at 1024 px.** SD3: 128x128 latents in 2x2 patches = 4096 image tokens + 333 text tokens (77 CLIP + 256 T5).
FLUX: 64x64 packed latents = 4096 + 512 T5 tokens. Kontext adds the condition image's 4096 tokens; Qwen-Image-Edit
adds its 4096 and about 300 text tokens (prompt plus the VL encoder's tokens of the condition image at ~384 px).
Tokens scale with the pixel area; text tokens do not.

**Activations** (bf16, batch 1 image), in bytes per token per hidden unit of one transformer block: what autograd
saves for backward, counted with saved-tensor hooks over one forward of the diffusers block on the ``meta`` device,
scaled-dot-product attention replaced by a flash-attention stand-in that saves q, k, v, the output and the fp32
log-sum-exp (flash and memory-efficient SDPA keep no token x token matrix). Weights trainable ("full") or frozen
with rank-32 LoRA on the attention projections ("LoRA": the frozen linears no longer save their inputs):

- SD3 joint block (Medium and Large alike): 58.3 full, 48.6 LoRA;
- SD3.5-M joint block with dual attention (layers 0-12): 80.9 full, 77.9 LoRA;
- FLUX double-stream block: 56.2 full, 44.4 LoRA; FLUX single-stream block: 50.1 full, 38.2 LoRA;
- Qwen-Image block: 56.2 full, 48.4 LoRA.

(The textbook transformer figure, Korthikanti et al. 2022, is 34 per hidden unit; these blocks store more: adaLN
modulation, fp32 RMS QK-norm and fp32 RoPE.) With gradient checkpointing (one checkpoint per block, as diffusers'
``enable_gradient_checkpointing``) a block keeps only its input, 2 bytes per token per hidden unit, and one block at
a time is recomputed in full during backward. Not counted: the patch and time embedders, the output layer, the
fp32 loss, and the CUDA context and allocator slack; so a configuration "fits" a card when the estimate is at most
90% of it ("tight" up to 100%), a card sold as "80 GB" holding 80 GiB (85.9 GB).

**Training state per parameter.** Full fine-tuning: bf16 weights (2 B) and bf16 gradients (2 B), plus optimizer
state: AdamW with fp32 states = fp32 master weights + first and second moments (12 B; the usual mixed-precision
16 B in all, so 1B parameters = 16 GB); 8-bit AdamW (bitsandbytes) = two 1-byte moments (2 B), with no fp32 master
copy (pure-bf16 weights, as full-bf16 trainers run it; add 4 B with one); Adafactor = factored second moment only,
one fp32 value per row and per column (< 0.1% of the weights, counted as 0). With fp32 weights (how
``styleprefs train`` keeps the policy under mixed precision) weights and gradients take 4 B each and AdamW needs no
master copy: 16 B with AdamW, 10 B with 8-bit AdamW, 8 B with Adafactor. LoRA: the frozen base in bf16 (2 B; fp32: 4 B),
the adapters (rank r on every listed hidden x hidden attention projection: r x 2 x hidden each) in fp32 with fp32
gradients and the optimizer's state. The DPO reference: for LoRA the policy with adapters off (no memory); for full
fine-tuning either a second frozen bf16 copy (forward only, no saved activations) or precomputed reference errors
(one extra pass over the data beforehand; each pair then keeps the noise and sigma it was scored with). Uncached
runs also hold the text encoders and the VAE in bf16 (their forward passes run without gradients).

**Compute**: forward TFLOPs per image (``FORWARD_TFLOPS``; the editors' include the condition image's tokens)
counted with ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device. A full fine-tuning DPO pair
costs 8 forward passes (policy forward and backward on both images = 6, reference forward on both = 2): the
GPU-hours of the iterative recipes use that and leave out the text encoders, the VL encoder and the VAE. The
training table's seconds per step count a LoRA pair as 6 (no weight gradients), add 2 for checkpointing's
recomputed forwards, drop the reference's 2 when its errors are precomputed, and add the encoders
(``ENCODE_PAIR_TFLOPS``) when uncached. Time = FLOPs / (312 TFLOP/s, the A100's dense bf16 peak, x the model
FLOP utilisation, MFU). The default MFU, 0.35, sits between diffusers' measured SD1.5 A100 figures (fp16,
batch 16 with CFG: 3.04 steps/s = 97 UNet passes/s x 0.803 TFLOP = 25% of peak; 4.68 steps/s compiled = 38%;
diffusers' docs, ``optimization/torch2.0``). Diffusion-DPO's own SD1.5 run (launchers/sd15.sh: "~24 hours /
2000 steps", 2048 pairs a step on 16 GPUs, batch 1 per GPU, no caching) implies about 6%: the bench prints that
check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GB = 1e9
BF16, FP32 = 2, 4
CHECKPOINT_BYTES = 2.0  # a checkpointed block keeps its bf16 input: 2 bytes per token per hidden unit
FIT_SHARE = 0.9  # the share of a card's memory an estimate may use and still "fit"
A100_BF16_TFLOPS = 312.0
DEFAULT_MFU = 0.35
PAIR_FORWARDS = 8  # policy forward + backward on 2 images (3 forwards each) + reference forward on 2
MOMENT_BYTES = {"adamw": 8, "adamw8bit": 2, "adafactor": 0}  # optimizer state per trainable parameter

Method = Literal["lora", "full"]
Optimizer = Literal["adamw", "adamw8bit", "adafactor"]
Reference = Literal["adapters-off", "copy", "precomputed"]


@dataclass(frozen=True)
class Blocks:
    """``count`` transformer blocks of one kind and their saved activations in bytes per token per hidden unit."""

    count: int
    full: float
    lora: float

    def per_token(self, method: Method) -> float:
        return self.full if method == "full" else self.lora


@dataclass(frozen=True)
class Architecture:
    """A denoiser with its frozen companions, at 1024 px (``image_tokens`` scale with the pixel area)."""

    name: str
    denoiser: int  # parameters
    encoders: dict[str, int]  # text encoders and VAE, parameters each
    hidden: int
    blocks: tuple[Blocks, ...]
    lora_linears: int  # hidden x hidden attention projections that take a LoRA
    image_tokens: int
    text_tokens: int

    @property
    def layers(self) -> int:
        return sum(b.count for b in self.blocks)

    def tokens(self, resolution: int = 1024, text_tokens: int | None = None) -> int:
        """Image tokens at ``resolution`` px plus ``text_tokens`` (default: the model's)."""
        text = self.text_tokens if text_tokens is None else text_tokens
        return round(self.image_tokens * (resolution / 1024) ** 2) + text


CLIP_L, CLIP_G, T5_XXL = 123_650_304, 694_659_840, 4_762_310_656
VAE_16, VAE_QWEN, QWEN_VL_7B = 83_821_011, 126_892_531, 8_292_166_656
SD3_BLOCK = (58.3, 48.6)
SD3_DUAL_BLOCK = (80.9, 77.9)  # SD3.5-M layers 0-12: a joint block with a second image self-attention
FLUX_ENCODERS = {"T5-XXL": T5_XXL, "CLIP-L": CLIP_L, "VAE": VAE_16}

SD35_MEDIUM = Architecture(
    "SD3.5 Medium", 2_243_171_520, {"T5-XXL": T5_XXL, "CLIP-L": CLIP_L, "OpenCLIP bigG": CLIP_G, "VAE": VAE_16},
    hidden=1536, blocks=(Blocks(11, *SD3_BLOCK), Blocks(13, *SD3_DUAL_BLOCK)), lora_linears=24 * 8 - 1 + 13 * 4,
    image_tokens=4096, text_tokens=333)
SD35_LARGE = Architecture(
    "SD3.5 Large", 8_056_627_520, SD35_MEDIUM.encoders, hidden=2432, blocks=(Blocks(38, *SD3_BLOCK),),
    lora_linears=38 * 8 - 1, image_tokens=4096, text_tokens=333)
FLUX_DEV = Architecture(
    "FLUX.1-dev", 11_901_408_320, FLUX_ENCODERS, hidden=3072,
    blocks=(Blocks(19, 56.2, 44.4), Blocks(38, 50.1, 38.2)), lora_linears=19 * 8 + 38 * 3,
    image_tokens=4096, text_tokens=512)
KONTEXT = Architecture(
    "FLUX.1 Kontext [dev]", FLUX_DEV.denoiser, FLUX_ENCODERS, hidden=3072, blocks=FLUX_DEV.blocks,
    lora_linears=FLUX_DEV.lora_linears, image_tokens=8192, text_tokens=512)
QWEN_IMAGE_EDIT = Architecture(
    "Qwen-Image-Edit-2509", 20_430_401_088, {"Qwen2.5-VL-7B": QWEN_VL_7B, "VAE": VAE_QWEN}, hidden=3072,
    blocks=(Blocks(60, 56.2, 48.4),), lora_linears=60 * 8, image_tokens=8192, text_tokens=300)
# One forward pass, batch 1, by (model, px): FlopCounterMode on the meta device. The SD1.5 UNet (77 tokens) is also
# the InstructPix2Pix-format improver's (4 more input channels: +0.01%); the editors' figures include the
# condition image's tokens.
FORWARD_TFLOPS = {("SD1.5", 512): 0.803, ("SD3.5 Medium", 1024): 11.25, ("SD3.5 Large", 1024): 31.12,
                  ("FLUX.1-dev", 1024): 74.38, ("kontext", 1024): 165.46, ("kontext", 512): 37.66,
                  ("qwen-image-edit", 1024): 168.60, ("qwen-image-edit", 512): 35.99}
# Encoding one pair when uncached: the VAE encoder on 2 images at 1024 px (4.88 TFLOPs each) and the caption's
# text encoders once (T5-XXL at 256 tokens 2.40, at 512 tokens 4.84; CLIP-L 0.013; OpenCLIP bigG 0.098).
VAE_ENCODE_1024_TFLOPS = 4.88
ENCODE_PAIR_TFLOPS = {"SD3.5 Medium": 2 * VAE_ENCODE_1024_TFLOPS + 2.40 + 0.013 + 0.098,
                      "SD3.5 Large": 2 * VAE_ENCODE_1024_TFLOPS + 2.40 + 0.013 + 0.098,
                      "FLUX.1-dev": 2 * VAE_ENCODE_1024_TFLOPS + 4.84 + 0.013}

TRAINED = (SD35_MEDIUM, SD35_LARGE, FLUX_DEV)


@dataclass(frozen=True)
class Recipe:
    """One training configuration: a preference pair (``images`` = 2) per step unless said otherwise."""

    method: Method
    optimizer: Optimizer = "adamw"
    checkpointing: bool = True
    reference: Reference = "adapters-off"
    cached: bool = True
    images: int = 2
    rank: int = 32
    resolution: int = 1024
    text_tokens: int | None = None  # None: the model's
    shards: int = 1  # GPUs that FSDP / ZeRO-3 shards the weights, gradients, optimizer state and reference over
    fp32_weights: bool = False  # the denoiser (and a full run's gradients) in fp32, as ``styleprefs train`` keeps it

    @property
    def weight_bytes(self) -> int:
        return FP32 if self.fp32_weights else BF16

    def label(self) -> str:
        parts = [f"LoRA r{self.rank}" if self.method == "lora" else "full",
                 {"adamw": "AdamW fp32", "adamw8bit": "AdamW 8-bit", "adafactor": "Adafactor"}[self.optimizer],
                 "ckpt" if self.checkpointing else "no ckpt"]
        if self.method == "full":
            parts.append({"copy": "ref copy", "precomputed": "ref precomputed"}[self.reference])
        parts.append("cached" if self.cached else "uncached")
        if self.shards > 1:
            parts.append(f"sharded over {self.shards} GPUs")
        if self.fp32_weights:
            parts.append("fp32 weights")
        return ", ".join(parts)


PARTS = ("weights", "gradients", "optimizer", "reference", "encoders", "activations")


@dataclass(frozen=True)
class Breakdown:
    """Bytes of each part (``PARTS``) of a training step's peak memory."""

    weights: float
    gradients: float
    optimizer: float
    reference: float
    encoders: float
    activations: float

    @property
    def total(self) -> float:
        return sum(getattr(self, part) for part in PARTS)


def lora_parameters(arch: Architecture, rank: int) -> int:
    """Adapter parameters: rank x (in + out) on every hidden x hidden attention projection."""
    return rank * 2 * arch.hidden * arch.lora_linears


def activation_bytes(arch: Architecture, method: Method, checkpointing: bool, images: int,
                     resolution: int = 1024, text_tokens: int | None = None) -> float:
    """Saved activations of ``images`` images through the trainable denoiser (see the module's table)."""
    per_token_hidden = arch.tokens(resolution, text_tokens) * arch.hidden * images
    if not checkpointing:
        return per_token_hidden * sum(b.count * b.per_token(method) for b in arch.blocks)
    largest = max(b.per_token(method) for b in arch.blocks )
    return per_token_hidden * (CHECKPOINT_BYTES * arch.layers + largest)


def training_memory(arch: Architecture, recipe: Recipe) -> Breakdown:
    """The estimate of one training step's peak memory on one GPU; with ``recipe.shards`` > 1 the parameter-sized
    parts are split evenly over the GPUs (FSDP full sharding; the layer being computed, gathered whole, is not
    counted), while each GPU keeps its own activations and encoders."""
    if recipe.method == "lora":
        if recipe.reference != "adapters-off":
            raise ValueError("a LoRA run's reference is the policy with its adapters off")
        adapters = lora_parameters(arch, recipe.rank)
        weights = arch.denoiser * recipe.weight_bytes + adapters * FP32
        gradients = adapters * FP32
        optimizer = adapters * MOMENT_BYTES[recipe.optimizer]
        reference = 0.0
    else:
        if recipe.reference == "adapters-off":
            raise ValueError("full fine-tuning needs a reference copy or precomputed reference errors")
        weights = gradients = arch.denoiser * recipe.weight_bytes
        # AdamW on bf16 weights keeps an fp32 master copy; 8-bit AdamW and Adafactor here do not
        master = FP32 if recipe.optimizer == "adamw" and recipe.weight_bytes == BF16 else 0
        optimizer = arch.denoiser * (MOMENT_BYTES[recipe.optimizer] + master)
        reference = arch.denoiser * BF16 if recipe.reference == "copy" else 0.0
    encoders = 0.0 if recipe.cached else sum(arch.encoders.values()) * BF16
    activations = activation_bytes(arch, recipe.method, recipe.checkpointing, recipe.images, recipe.resolution,
                                   recipe.text_tokens)
    n = recipe.shards
    return Breakdown(weights / n, gradients / n, optimizer / n, reference / n, encoders, activations)


def pair_forwards(recipe: Recipe) -> int:
    """Forward-pass equivalents of one training step on one pair: the policy's forward and backward per image (3
    when the weights train; 2 for LoRA, whose frozen weights need no weight gradients), the reference's forward per
    image (none when precomputed) and, with checkpointing, one more policy forward per image."""
    policy = (3 if recipe.method == "full" else 2) + (1 if recipe.checkpointing else 0)
    reference = 0 if recipe.reference == "precomputed" else 1
    return recipe.images * (policy + reference)


def step_seconds(arch: Architecture, recipe: Recipe, mfu: float = DEFAULT_MFU) -> float:
    """Seconds per training step on one pair on an A100 at ``mfu`` (1024 px; uncached adds the encoders)."""
    tflops = pair_forwards(recipe) * FORWARD_TFLOPS[arch.name, 1024]
    if not recipe.cached:
        tflops += ENCODE_PAIR_TFLOPS[arch.name]
    return tflops / (A100_BF16_TFLOPS * mfu)


def fit(total_bytes: float, card_gb: float) -> str:
    """``yes`` up to 90% of a card sold as ``card_gb`` GB (GiB in fact: an 80 GB A100 holds 80 x 2^30 bytes),
    ``tight`` up to 100%, else ``no``."""
    capacity = card_gb * 2**30
    if total_bytes <= FIT_SHARE * capacity:
        return "yes"
    return "tight" if total_bytes <= capacity else "no"


RECIPES = (
    Recipe("lora", checkpointing=False),
    Recipe("lora"),
    Recipe("lora", cached=False),
    Recipe("full", checkpointing=False, reference="copy"),
    Recipe("full", reference="copy"),
    Recipe("full", reference="precomputed"),
    Recipe("full", "adamw8bit", reference="copy"),
    Recipe("full", "adamw8bit", reference="precomputed"),
    Recipe("full", "adafactor", reference="precomputed"),
    Recipe("full", "adafactor", reference="precomputed", cached=False),
    Recipe("full", reference="copy", shards=4),
    Recipe("full", reference="copy", shards=8),
    # what ``styleprefs train`` does today: an fp32 policy, and the encoders loaded even when the cache is used
    Recipe("lora", cached=False, fp32_weights=True),
    Recipe("full", "adafactor", reference="copy", cached=False, fp32_weights=True),
)


def training_rows(archs: tuple[Architecture, ...] = TRAINED,
                  recipes: tuple[Recipe, ...] = RECIPES) -> list[tuple[Architecture, Recipe, Breakdown]]:
    """(model, recipe, breakdown) for every model and recipe."""
    return [(arch, recipe, training_memory(arch, recipe)) for arch in archs for recipe in recipes]


def inference_memory(arch: Architecture, offload: bool) -> float:
    """Peak bytes of one bf16 edit at 1024 px: every component resident, or with model CPU offload (one component
    on the GPU at a time, diffusers' ``enable_model_cpu_offload``), plus one block's saved-activation figure as a
    bound on a block's working memory (the Qwen pipelines run true CFG's two branches as separate calls)."""
    weights = [arch.denoiser, *arch.encoders.values()]
    resident = (max(weights) if offload else sum(weights)) * BF16
    largest = max(b.full for b in arch.blocks)
    return resident + largest * arch.tokens() * arch.hidden


@dataclass(frozen=True)
class Editor:
    """An off-the-shelf instruction editor with its model card's sampling: steps and denoiser passes per step
    (1: guidance-distilled; 2: true CFG)."""

    arch: Architecture
    steps: int
    passes: int


EDITORS = {"kontext": Editor(KONTEXT, steps=28, passes=1),
           "qwen-image-edit": Editor(QWEN_IMAGE_EDIT, steps=40, passes=2)}


def editing_rows() -> list[tuple[str, str, float]]:
    """(editor, setting, bytes) for bf16 inference with and without model CPU offload."""
    return [(name, "model CPU offload" if offload else "all on GPU", inference_memory(editor.arch, offload))
            for name, editor in EDITORS.items() for offload in (False, True)]


def gpu_hours(tflops: float, mfu: float = DEFAULT_MFU) -> float:
    """A100-hours for ``tflops`` TFLOPs at model FLOP utilisation ``mfu``."""
    return tflops / (A100_BF16_TFLOPS * mfu) / 3600


def pairs_per_second(policy_tflops: float, mfu: float = DEFAULT_MFU) -> float:
    """DPO pairs per second per A100 that the formula implies (PAIR_FORWARDS passes a pair)."""
    return A100_BF16_TFLOPS * mfu / (PAIR_FORWARDS * policy_tflops)


def implied_mfu(pairs_per_s: float, policy_tflops: float) -> float:
    """The MFU at which the formula gives ``pairs_per_s`` DPO pairs per second per A100."""
    return pairs_per_s * PAIR_FORWARDS * policy_tflops / A100_BF16_TFLOPS


@dataclass(frozen=True)
class Iteration:
    """One iteration of iterative DPO, the README's real-scale recipe: generate ``images`` with the policy (CFG),
    improve each, DPO-train ``dpo_steps`` x ``global_batch`` pairs."""

    policy_tflops: float  # one policy forward at its resolution
    improve_tflops: float  # one improvement: steps x passes x forward
    images: int = 38_400
    sample_steps: int = 50
    dpo_steps: int = 5000
    global_batch: int = 2048

    def tflops(self) -> dict[str, float]:
        """TFLOPs of generation, improvement and DPO training."""
        return {"generate": self.images * self.sample_steps * 2 * self.policy_tflops,
                "improve": self.images * self.improve_tflops,
                "train": self.dpo_steps * self.global_batch * PAIR_FORWARDS * self.policy_tflops}


TRAINED_IMPROVER = ("trained improver (SD1.5 InstructPix2Pix format), 512 px, 50 steps x 3 passes",
                    50 * 3 * FORWARD_TFLOPS["SD1.5", 512])
IMPROVER_TRAINING = {"steps": 200_000, "global_batch": 2048, "forwards": 3}  # the README's recipe: one image a pair
# Diffusion-DPO's SD1.5 launcher (launchers/sd15.sh): "~24 hours / 2000 steps" at 2048 pairs a step, batch 1 per GPU
# x 128 accumulation steps = 16 GPUs, no caching
OFFICIAL_SD15_DPO_PAIRS_PER_S = 2000 * 2048 / (16 * 24 * 3600)


def improver_options(resolution: int) -> list[tuple[str, float]]:
    """(label, TFLOPs of one improvement) for each off-the-shelf editor at ``resolution`` px."""
    return [(f"{name}, {resolution} px, {e.steps} steps x {e.passes} pass{'es' if e.passes > 1 else ''}",
             e.steps * e.passes * FORWARD_TFLOPS[name, resolution]) for name, e in EDITORS.items()]


def iteration_rows(mfu: float = DEFAULT_MFU) -> list[tuple[str, dict[str, float]]]:
    """(policy and improver, A100-hours per part and in total) for one iteration of each real-scale recipe."""
    policies = [("SD1.5 512 px", FORWARD_TFLOPS["SD1.5", 512],
                 [TRAINED_IMPROVER, *improver_options(512), *improver_options(1024)]),
                ("SD3.5-M 1024 px", FORWARD_TFLOPS["SD3.5 Medium", 1024], improver_options(1024))]
    rows = []
    for policy, policy_tflops, options in policies:
        for improver, improve_tflops in options:
            hours = {k: gpu_hours(v, mfu) for k, v in Iteration(policy_tflops, improve_tflops).tflops().items()}
            rows.append((f"{policy}; {improver}", hours | {"total": sum(hours.values())}))
    return rows


def improver_training_hours(mfu: float = DEFAULT_MFU) -> float:
    """A100-hours to train the improver once (the README's 200k steps x 2048 pairs, forward + backward on one image)."""
    t = IMPROVER_TRAINING
    return gpu_hours(t["steps"] * t["global_batch"] * t["forwards"] * FORWARD_TFLOPS["SD1.5", 512], mfu)


@dataclass(frozen=True)
class CrossCheck:
    """A reported memory figure and the estimate of the same configuration; a setting the report leaves open is
    taken on the side that makes agreement harder (e.g. encoders not loaded for an out-of-memory report)."""

    what: str
    source: str
    arch: Architecture
    recipe: Recipe
    above: bool  # the report says the run needs more (True) or less (False) than ``reported_gb``
    reported_gb: float

    def estimate(self) -> float:
        return training_memory(self.arch, self.recipe).total

    def agrees(self) -> bool:
        return (self.estimate() > self.reported_gb * GB) == self.above


DREAMBOOTH_TEXT_TOKENS = 77  # diffusers' DreamBooth scripts: --max_sequence_length defaults to 77
CROSS_CHECKS = (
    CrossCheck("FLUX.1-dev LoRA r16, 512 px, 77 text tokens, 1 image, no ckpt, text encoders and VAE loaded: "
               "over 40 GB", "diffusers examples/dreambooth/README_flux.md", FLUX_DEV,
               Recipe("lora", checkpointing=False, cached=False, images=1, rank=16, resolution=512,
                      text_tokens=DREAMBOOTH_TEXT_TOKENS), True, 40),
    CrossCheck("FLUX.1-dev full fine-tune, 1024 px, 77 text tokens, 1 image, no ckpt, Prodigy (>= AdamW's "
               "states), one 80 GB GPU: OOM", "diffusers issue #10196", FLUX_DEV,
               Recipe("full", checkpointing=False, reference="precomputed", images=1,
                      text_tokens=DREAMBOOTH_TEXT_TOKENS), True, 80),
    CrossCheck("FLUX.1-dev full fine-tune, 1024 px, 77 text tokens, 1 image, ckpt, Adafactor (estimated with "
               "AdamW's 16 B a parameter, an upper bound), ZeRO-3 over 4 80 GB GPUs: runs", "diffusers issue #9484",
               FLUX_DEV,
               Recipe("full", reference="precomputed", cached=False, images=1, text_tokens=DREAMBOOTH_TEXT_TOKENS,
                      shards=4), False, 80),
    CrossCheck("FLUX.1 Kontext [dev] full fine-tune, 1024 px, 1 image + its condition, one 80 GB GPU: OOM",
               "flow_grpo issue #144", KONTEXT, Recipe("full", reference="precomputed", images=1), True, 80),
    CrossCheck("SD3 Medium (2.0B; estimated as SD3.5-M, 2.24B) LoRA, 1024 px, 1 image, 8-bit Adam, ckpt, "
               "embeddings precomputed: under 16 GB", "diffusers examples/research_projects/sd3_lora_colab",
               SD35_MEDIUM, Recipe("lora", "adamw8bit", rank=4, images=1), False, 16),
)
