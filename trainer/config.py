"""`TrainConfig`: the one source of the trainer's option names, types, defaults and help strings.

The CLI builds ``styleprefs train`` from :func:`config_options`; a YAML file (``--config``) may set any
field, and flags override it (:meth:`TrainConfig.from_yaml_and_overrides`). Every field's help says
where its default comes from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from styleprefs.errors import StyleprefsError
from styleprefs.io import read_json, read_yaml

Stage = Literal["sft", "dpo", "rpo", "orpo", "orrpo", "improve", "iterative", "spin"]
REFERENCE_STAGES = ("dpo", "rpo")  # stages with a frozen reference model
ITERATIVE_STAGES = ("iterative", "spin")  # stages that alternate generating pairs and DPO training (trainer/iterative.py)
RPO_STAGES = ("rpo", "orrpo")  # stages with the B x B CLIP-weighted matrix
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CONFIG_FILE = "train_config.yaml"  # in a run folder: the resolved TrainConfig
STATE_FILE = "trainer_state.json"  # in a checkpoint folder: step, weights hash, resolved config
LrScheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]

# Fields that do not change the trained weights: a resumed run may change them (and max_steps).
RESUMABLE_CHANGES = frozenset({
    "resume", "max_steps", "checkpoint_every", "checkpoints_total_limit", "validation_prompts",
    "validation_every", "report_to", "max_nan_steps", "allow_tf32", "channels_last", "compile",
})


def _opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _required(help: str) -> Any:
    return field(metadata={"help": help, "required": True})


@dataclass
class TrainConfig:
    """Everything that determines a training run (see DESIGN.md, "Trainer" and "Losses")."""

    stage: Stage = _required("Training objective: sft, dpo (Diffusion-DPO), rpo (Diffusion-RPO), orpo or orrpo "
                             "(reference-free ORPO, plain or over the RPO matrix); improve (the improvement model of "
                             "'Iterative DPO with an improvement model': an InstructPix2Pix-shaped UNet); iterative "
                             "(online DPO on pairs the --improver makes from the current model's images) or spin "
                             "(SPIN-Diffusion: the dataset's winners against the current model's images).")
    data: str = _required("Dataset folder written by `styleprefs build` (Pick-a-Pic-format Parquet).")
    out: str = _required("Run folder: final diffusers pipeline, train_config.yaml, metrics.jsonl, checkpoints/, "
                         "validation/, curves.png.")
    model: str | None = _opt(None, "Base pipeline (Hub id, local folder, or tiny / tiny-sdxl): VAE, text encoders, "
                                   "scheduler, and the UNet unless --init is given. Default: the base recorded in "
                                   "--init's run or checkpoint, else --init itself if it is a pipeline folder, else "
                                   f"{DEFAULT_MODEL}.")
    init: str | None = _opt(None, "Initialise the trained UNet from this pipeline or UNet folder (e.g. an SFT run's "
                                  "output); it is also the reference unless --ref is given.")
    ref: str | None = _opt(None, "Reference UNet for dpo/rpo (pipeline or UNet folder). Default: --init, else the "
                                 "base model; with LoRA and neither, the base is the same UNet with adapters off.")
    beta: float | None = _opt(None, "DPO/RPO beta on Diffusion-DPO's official scale: logit = -(beta/2) * "
                                    "(d(w) - d(l)), errors are per-element means (the diffusers SD1.5 port's 2500 "
                                    "without the 1/2 is the same). Default: the model family's, 5000 for SD1.5 and "
                                    "SDXL (epsilon errors; the paper's range is 2000-5000); 500 for SD3 and 1500 for "
                                    "FLUX.1, the same scale on velocity errors (5000 x E[(1 - sigma)^2]; flow_grpo "
                                    "uses 100).")
    orpo_beta: float = _opt(20.0, "ORPO/ORRPO beta: logit = orpo_beta * (e(l) - e(w)) on raw errors, which differ "
                                  "by ~0.01-0.05, so it is far smaller than --beta. With --lam 0.1 the preference "
                                  "term's initial gradient (lam*orpo_beta/2 = 1) equals the SFT term's.")
    lam: float = _opt(0.1, "ORPO/ORRPO weight of the preference term (0.1 as in the ORPO paper and TRL, and the "
                           "diffusers diffusion_orpo example).")
    tau: float = _opt(1.0, "RPO/ORRPO similarity temperature: W = row-softmax(-(1 - cos)/tau). 1.0 for style data, "
                           "0.01 for human preference (Diffusion-RPO ablation).")
    embedding: Literal["mean", "image", "text", "concat"] = _opt(
        "mean", "RPO similarity embedding u(x): mean = normalize(n(CLIP image) + n(CLIP text)); image; text; concat.")
    clip_model: str | None = _opt("openai/clip-vit-large-patch14",
                                  "CLIP for the RPO weights (Hub id, folder or tiny); the paper does not name one. "
                                  "none: use the CLIP embeddings already in the dataset's cache (`styleprefs "
                                  "cache --clip-model ...`).")
    gather_rpo: bool = _opt(False, "RPO/ORRPO: compare each winner with the losers of all processes (all-gather), "
                                   "not only its own device's batch.")
    learning_rate: float | None = _opt(None, "Learning rate; with --scale-lr a per-pair rate, multiplied by the "
                                             "pairs per optimizer step (batch size x accumulation x processes). "
                                             "Default: 1e-8 per pair for full fine-tuning (Diffusion-DPO's launchers: "
                                             "1e-8 x 2048 pairs = 2.048e-5; sft/orpo/orrpo alike, since 1e-7 would "
                                             "give 2e-4 at that batch, 10x a usual full SD fine-tuning rate); 1e-5 "
                                             "as given with LoRA (diffusers diffusion_dpo).")
    scale_lr: bool | None = _opt(None, "Multiply --learning-rate by batch size x accumulation x processes (the "
                                       "official Diffusion-DPO --scale_lr). Default: on for full fine-tuning, off "
                                       "with LoRA.")
    lr_scheduler: LrScheduler = _opt("constant_with_warmup", "diffusers learning-rate schedule (Diffusion-DPO: "
                                                               "constant_with_warmup).")
    warmup_steps: int = _opt(500, "Warm-up optimizer steps (Diffusion-DPO SD1.5 launcher: 500 of 2000, the "
                                  "paper's 25%). Not scaled by the process count.")
    batch_size: int = _opt(4, "Pairs per process per micro-batch (each pair is two images).")
    gradient_accumulation_steps: int = _opt(16, "Micro-batches per optimizer step. Pairs per step = batch_size x "
                                                "processes x this (Diffusion-RPO: 16 x 8 GPUs x 4 = 512).")
    max_steps: int = _opt(2000, "Optimizer steps to train (Diffusion-DPO launchers: 2000).")
    resolution: int = _opt(512, "Training image size in pixels (multiple of 8; SDXL: 1024).")
    mixed_precision: Literal["no", "fp16", "bf16"] = _opt(
        "no", "Autocast precision; trainable weights stay float32, the frozen reference and encoders use it. "
              "bf16 recommended on GPUs that have it.")
    gradient_checkpointing: bool = _opt(False, "Recompute UNet activations in the backward pass to save memory.")
    optimizer: Literal["adamw", "adafactor", "adamw8bit"] = _opt(
        "adamw", "adamw (Diffusion-DPO SD1.5), adafactor (its SDXL runs; relative_step and scale_parameter off) "
                 "or adamw8bit (needs bitsandbytes).")
    weight_decay: float = _opt(1e-2, "Weight decay (Diffusion-DPO: 1e-2).")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (Diffusion-DPO: 1.0); 0 disables clipping.")
    lora_rank: int = _opt(0, "0 trains the full UNet; > 0 trains peft LoRA adapters of this rank (alpha = rank) on "
                             "to_q, to_k, to_v, to_out.0, merged into the saved UNet.")
    seed: int = _opt(0, "Seed: data order from (seed, epoch); noise, timesteps and caption dropout from "
                        "(seed, step, pair position), so results do not depend on the process count.")
    checkpoint_every: int = _opt(500, "Save a resumable checkpoint in out/checkpoints every N steps (0: never).")
    checkpoints_total_limit: int | None = _opt(3, "Keep only the newest N checkpoints (None keeps all).")
    resume: bool = _opt(False, "Continue from the newest checkpoint in out/checkpoints (opt-in; the config must "
                               "match except max_steps, checkpointing, validation, logging and max_nan_steps).")
    ties: Literal["drop", "random"] = _opt("drop", "Pairs whose source labels are a tie: drop them, or pick a "
                                                   "winner at random from (seed, row).")
    random_flip: bool = _opt(True, "Flip both images of a pair horizontally together, at random per (seed, epoch, row).")
    caption_dropout: float = _opt(0.2, "Probability per pair of training on the empty prompt (same for winner and "
                                       "loser). 0.2 as Diffusion-DPO's launchers (which Diffusion-RPO builds on): "
                                       "keeps the unconditional branch that classifier-free guidance uses trained "
                                       "on the new data. 0 trains the conditional branch only.")
    snr_gamma: float | None = _opt(None, "SFT only: Min-SNR loss weighting (Hang et al. 2023) with this gamma, as "
                                         "diffusers' --snr_gamma (5 is its recommended value); None weighs every "
                                         "timestep alike, the plain denoising loss.")
    validation_prompts: list[str] = _opt([], "Prompts drawn every --validation-every steps and at the end, with "
                                             "fixed seeds, into out/validation/step-XXXXXX.png.")
    validation_every: int = _opt(500, "Steps between validation grids (0: only at the end).")
    report_to: Literal["tensorboard", "wandb", "none"] = _opt(
        "tensorboard", "Experiment tracker (tensorboard is skipped with a note if not installed).")
    max_nan_steps: int = _opt(10, "Stop with an error after this many steps skipped for a non-finite loss or "
                                  "gradient.")
    use_cache: bool = _opt(True, "Cache VAE latents, text and CLIP embeddings once per dataset and model.")
    vae: str | None = _opt(None, "A VAE to use instead of the model's own for encoding the images (and caching): a "
                                 "VAE folder or Hub id, e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16, or a "
                                 "pipeline folder's vae/. The saved pipeline keeps the base's VAE.")
    allow_tf32: bool = _opt(True, "TF32 tensor cores for float32 matmuls and convolutions on CUDA (Ampere and newer): "
                                  "several times faster for the float32 trainable UNet, 10-bit mantissa inputs; no "
                                  "effect on CPU. --no-allow-tf32 for strict float32.")
    channels_last: bool = _opt(False, "Keep the UNets and the VAE in channels_last (NHWC) memory layout, often faster "
                                      "on CUDA with fp16/bf16; off by default (no gain on CPU).")
    compile: bool = _opt(False, "torch.compile the policy and reference UNets: a slow first step, then faster ones "
                                "on CUDA. Off by default.")
    reconstruct_prob: float = _opt(1 / 3, "improve: share of pairs trained on the reconstruction task (x given its "
                                          "own latent and no prompt, x the winner or the loser at random). The "
                                          "paper mixes three tasks per batch without stating the shares: equal "
                                          "thirds by default.")
    unconditional_prob: float = _opt(1 / 3, "improve: share of pairs trained unconditionally (no image, no prompt; x "
                                            "the winner or the loser). The rest (1 - reconstruct - unconditional) "
                                            "learns the winner given the loser's latent and the prompt.")
    improver: str | None = _opt(None, "iterative: the improvement model (a `--stage improve` run or checkpoint, an "
                                      "InstructPix2Pix-format pipeline folder) that turns the current model's "
                                      "images into winners.")
    iterations: int = _opt(3, "iterative/spin: rounds of (generate pairs, DPO-train); the paper runs 3.")
    online_pairs: int = _opt(38400, "iterative/spin: pairs generated per iteration from the dataset's prompts "
                                    "(the paper: 38,400); prompts are reused, with new seeds, when there are fewer.")
    iteration_reference: Literal["base", "previous"] | None = _opt(
        None, "iterative/spin: DPO reference of each iteration: base (--ref, else --model) or previous (the model "
              "the iteration starts from). Default: base for iterative (the paper's SD1.5), previous for spin.")
    text_guidance: float = _opt(3.5, "iterative: the improver's text guidance s_T in e = e(0,0) + s_I (e(x,0) - "
                                     "e(0,0)) + s_T (e(x,c) - e(x,0)) (the paper: 3.5).")
    image_guidance: float = _opt(3.0, "iterative: the improver's image guidance s_I (the paper: 3.0).")
    sample_steps: int = _opt(50, "iterative/spin: denoising steps when generating the current model's images (CFG "
                                 "7.5) and when improving them.")

    @classmethod
    def from_yaml_and_overrides(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """Fields from the YAML file at ``path`` (if any), then ``overrides`` (flags win; ``None`` means unset).

        Keys may use dashes or underscores. Unknown keys, missing required fields and bad values raise
        a one-line StyleprefsError.
        """
        values: dict[str, Any] = {}
        if path is not None:
            try:
                loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise StyleprefsError(f"cannot read train config {path}: {str(exc).splitlines()[0]}") from None
            if not isinstance(loaded, dict):
                raise StyleprefsError(f"train config {path} must be a mapping of option: value")
            values.update(_normalise_keys(loaded, f"train config {path}"))
        values.update({k: v for k, v in _normalise_keys(overrides or {}, "overrides").items() if v is not None})
        missing = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)
                   if f.metadata.get("required") and f.name not in values]
        if missing:
            raise StyleprefsError(f"missing required training option(s): {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _coerce(name, value, hints[name]) for name, value in values.items()})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a one-line StyleprefsError for the first bad value."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            choices = _choices(hints[f.name])
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise StyleprefsError(f"--{_flag(f.name)} must be one of {', '.join(choices)}, got {value!r}")
        positive = ("batch_size", "gradient_accumulation_steps", "max_steps", "resolution", "max_nan_steps",
                    "iterations", "online_pairs", "sample_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise StyleprefsError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        non_negative = ("seed", "warmup_steps", "lora_rank", "checkpoint_every", "validation_every", "weight_decay",
                        "max_grad_norm", "lam")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise StyleprefsError(f"--{_flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("beta", "orpo_beta", "tau"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise StyleprefsError(f"--{_flag(name)} must be positive, got {getattr(self, name)}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise StyleprefsError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise StyleprefsError(f"--checkpoints-total-limit must be at least 1, got {self.checkpoints_total_limit}")
        if self.resolution % 8:
            raise StyleprefsError(f"--resolution must be a multiple of 8, got {self.resolution}")
        if self.snr_gamma is not None and (self.stage != "sft" or not self.snr_gamma > 0):
            raise StyleprefsError(f"--snr-gamma must be positive and is for --stage sft only, got {self.snr_gamma} "
                                  f"with --stage {self.stage}")
        if not 0 <= self.caption_dropout < 1:
            raise StyleprefsError(f"--caption-dropout must be in [0, 1), got {self.caption_dropout}")
        if self.stage in RPO_STAGES and self.clip_model is None and not self.use_cache:
            raise StyleprefsError(f"--stage {self.stage} needs CLIP embeddings: with --clip-model none they come "
                                  f"from the cache, which --no-use-cache turns off; give --clip-model")
        self._validate_online()
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise StyleprefsError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes, or use adamw")
        if self.report_to == "wandb" and importlib.util.find_spec("wandb") is None:
            raise StyleprefsError("--report-to wandb needs wandb: pip install wandb, or use tensorboard or none")

    def _validate_online(self) -> None:
        """The improve, iterative and spin options."""
        for name in ("reconstruct_prob", "unconditional_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise StyleprefsError(f"--{_flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.reconstruct_prob + self.unconditional_prob > 1 + 1e-9:
            raise StyleprefsError(f"--reconstruct-prob + --unconditional-prob must be at most 1, got "
                                  f"{self.reconstruct_prob + self.unconditional_prob:g}")
        for name in ("text_guidance", "image_guidance"):
            if getattr(self, name) < 0:
                raise StyleprefsError(f"--{_flag(name)} must not be negative, got {getattr(self, name)}")
        if self.stage == "iterative" and self.improver is None:
            raise StyleprefsError("--stage iterative needs --improver (a `styleprefs train --stage improve` output)")
        if self.stage == "improve" and self.validation_prompts:
            raise StyleprefsError("--stage improve draws no validation grids (its model edits images): drop "
                                  "--validation-prompts")

    @property
    def base_learning_rate(self) -> float:
        """``learning_rate``, or the stage's default when it is None (see the field's help)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.lora_rank > 0 else 1e-8

    def resolved(self) -> TrainConfig:
        """A copy with defaults that depend on other fields filled in (learning rate, its scaling, the base model
        and the beta of its family)."""
        scale_lr = self.lora_rank == 0 if self.scale_lr is None else self.scale_lr
        model = self.model or (recorded_base(self.init) if self.init else None) or DEFAULT_MODEL
        beta = self.beta if self.beta is not None else default_beta(model)
        return dataclasses.replace(self, learning_rate=self.base_learning_rate, scale_lr=scale_lr, model=model,
                                   beta=beta)

    def pairs_per_step(self, num_processes: int) -> int:
        return self.batch_size * self.gradient_accumulation_steps * num_processes

    def optimizer_learning_rate(self, num_processes: int) -> float:
        """The rate the optimizer uses: the base rate, times the pairs per step with --scale-lr."""
        cfg = self.resolved()
        return cfg.learning_rate * (cfg.pairs_per_step(num_processes) if cfg.scale_lr else 1)

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False, allow_unicode=True)

    def weights_hash(self) -> str:
        """sha256 of the fields that determine the trained weights (all but RESUMABLE_CHANGES)."""
        fields = {k: v for k, v in dataclasses.asdict(self.resolved()).items() if k not in RESUMABLE_CHANGES}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def default_beta(model: str) -> float:
    """The DPO/RPO beta of ``model``'s family (see the ``beta`` option)."""
    from styleprefs.trainer.models import family_of

    return family_of(model).default_beta


def recorded_base(source: str) -> str | None:
    """The base model of ``source`` as a UNet source: the ``model`` a training run (its train_config.yaml) or one of
    its checkpoints (trainer_state.json) recorded, else ``source`` itself if it is a pipeline folder, else None.
    A corrupt record raises a one-line StyleprefsError."""
    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file():
        return read_yaml(path / CONFIG_FILE).get("model")
    if (path / STATE_FILE).is_file():
        config = read_json(path / STATE_FILE).get("config")
        if not isinstance(config, dict):
            raise StyleprefsError(f"{path / STATE_FILE} cannot be read: it holds no 'config' mapping")
        return config.get("model")
    return str(path) if (path / "model_index.json").is_file() else None


@dataclass(frozen=True)
class ConfigOption:
    """One TrainConfig field as a CLI option."""

    name: str  # field name, e.g. "learning_rate"
    flag: str  # "--learning-rate"
    type: Any  # the base type: str, int, float, bool or list[str]
    default: Any  # None for required options
    required: bool
    optional: bool  # the field accepts None
    choices: tuple[str, ...]  # allowed values of a Literal field, else ()
    help: str


def config_options() -> list[ConfigOption]:
    """Every TrainConfig field as a :class:`ConfigOption`, in declaration order."""
    hints = typing.get_type_hints(TrainConfig)
    options = []
    for f in dataclasses.fields(TrainConfig):
        base, optional = _unwrap_optional(hints[f.name])
        choices = _choices(base)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        options.append(ConfigOption(
            name=f.name, flag=f"--{_flag(f.name)}", type=str if choices else base,
            default=None if default is dataclasses.MISSING else default, required=bool(f.metadata.get("required")),
            optional=optional, choices=choices, help=f.metadata["help"]))
    return options


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _normalise_keys(values: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in normalised if k not in known)
    if unknown:
        raise StyleprefsError(f"{where}: unknown training option(s) {', '.join(unknown)}")
    return normalised


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _choices(tp: Any) -> tuple[str, ...]:
    base, _ = _unwrap_optional(tp)
    return tuple(typing.get_args(base)) if typing.get_origin(base) is Literal else ()


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """``value`` as the field's type (YAML reads 5e3 as a string, a flag may arrive as text)."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise StyleprefsError(f"--{_flag(name)} needs a value")
    bad = StyleprefsError(f"--{_flag(name)} expects {_type_name(base)}, got {value!r}")
    if _choices(base) or base is str:
        if isinstance(value, (dict, list, bool)):
            raise bad
        return str(value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not number.is_integer():
            raise bad
        return int(number)
    if base is float:
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if typing.get_origin(base) is list:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise bad
        return list(items)
    raise bad


def _type_name(tp: Any) -> str:
    if _choices(tp):
        return "one of " + ", ".join(_choices(tp))
    return {str: "text", int: "an integer", float: "a number", bool: "true or false"}.get(tp, "a list of texts")
