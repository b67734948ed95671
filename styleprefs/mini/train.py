"""Train the mini world's models from scratch: ``mini-clip`` first, then ``mini``'s VAE and UNet, then ``mini-flow``.

``mini-clip`` learns scenes and their styled twins (winter, Van Gogh, sketch) against captions and the
styles' CLIP texts. ``mini``'s text encoder is ``mini-clip``'s text tower, frozen, as SD1.5's is
OpenAI CLIP's. Its VAE learns originals and edits, and its UNet learns originals only: the base
draws the sample world as it is, in summer, so a Winter dataset is a real shift for it. ``mini-flow`` (see
``styleprefs.mini.flow``) learns the same originals in the same latents with the rectified-flow objective.
Every draw comes from the seed; each finished model is saved at once and reused by a rerun.
"""

from __future__ import annotations

import copy
import datetime
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from diffusers.training_utils import compute_snr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

from styleprefs.io import atomic_dir, read_json, write_json
from styleprefs.mini import flow, models, world
from styleprefs.parallel import beside
from styleprefs.sources.sample import HELD_OUT, scene_for
from styleprefs.style import load_style
from styleprefs.tiny import bpe_tokenizer

STAGE_FILE = "stage.json"  # in each model's folder: its stage's wall-clock span, threads and loss curve
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class MiniConfig:
    seed: int = 0
    scenes: int = 16000
    clip_steps: int = 1600
    clip_batch: int = 64  # scenes per batch; each comes with its styled twin
    clip_lr: float = 1e-3
    clip_relight: float = 0.5  # share of CLIP images under a random illuminant
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_edges: float = 2.0  # weight of the image-gradient term of the VAE loss (see reconstruction_loss)
    vae_kl: float = 1e-6
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 4e-4
    uncond_prob: float = 0.1
    snr_gamma: float = 5.0  # Min-SNR loss weighting (Hang et al. 2023), as diffusers' --snr_gamma
    flow_steps: int = 3600
    flow_batch: int = 32
    flow_lr: float = 7e-4
    ema_decay: float = 0.999
    warmup: int = 100
    threads: int = 2
    curves: dict = field(default_factory=dict)

    @classmethod
    def quick(cls, seed: int = 0) -> MiniConfig:
        """A few steps of each model: for tests of the script, not for use."""
        return cls(seed=seed, scenes=64, clip_steps=3, clip_batch=8, vae_steps=3, vae_batch=4, unet_steps=3,
                   unet_batch=4, flow_steps=3, flow_batch=4, warmup=1)


class Pool:
    """The training scenes: captions, styled captions and 64 px originals and (with ``edits``, which only
    mini-clip and the VAE learn) edits."""

    def __init__(self, cfg: MiniConfig, edits: bool = True):
        indices = world.split_indices(held_out=False, count=cfg.scenes, seed=cfg.seed)
        items = world.draw_items(indices, cfg.seed)
        self.originals, self.edits = world.render_items(items, edits=edits)
        self.scenes = [scene_for(i) for i in indices]
        self.captions = [s.caption for s in self.scenes]
        styles = {name: load_style(name) for name in world.STYLES}
        self.styles = [styles[item.style] for item in items]
        self.styled = [style.styled_caption(c) for style, c in zip(self.styles, self.captions)]

    def __len__(self) -> int:
        return len(self.captions)

    def negatives(self, i: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
        """Hard negatives of scene ``i``'s caption and styled caption: its time of day, and its house
        colour if it has a house, swapped for another drawn from ``rng``. No negative names a held-out
        pairing: those stay unseen, as images and as text."""
        scene = self.scenes[i]
        times = [t for t in world.TIMES if t != scene.sky.name and (scene.house, t) not in HELD_OUT]
        plain = [world.swap_attribute(self.captions[i], scene, "time", str(rng.choice(times)))]
        if scene.house:
            colors = [c for c in world.COLORS if c != scene.house and (c, scene.sky.name) not in HELD_OUT]
            plain.append(world.swap_attribute(self.captions[i], scene, "color", str(rng.choice(colors))))
        return plain, [self.styles[i].styled_caption(c) for c in plain]


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def clip_pixels(images: np.ndarray, gains: np.ndarray | None = None) -> torch.Tensor:
    """uint8 64 px images normalised as CLIPImageProcessor does (no resize needed at 64 px), each
    first multiplied by its per-channel ``gains`` [N, 3] if given."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)
    if gains is not None:
        x = x * torch.from_numpy(gains).float().view(-1, 3, 1, 1)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def illuminants(count: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gains [count, 3]: ones, or for ``share`` of the images a random coloured light as
    dim and blue as the sample world's night. Seeing known colours under many lights teaches CLIP
    colour constancy, which held-out pairings such as a red house at night need."""
    gains = rng.uniform(0.4, 1.0, (count, 3))
    return np.where(rng.random((count, 1)) < share, gains, 1.0)


def contrastive_loss(model: CLIPModel, texts: dict, pixel_values: torch.Tensor,
                     negatives: dict | None = None) -> torch.Tensor:
    """CLIP's symmetric loss, with hard-negative captions as extra candidates for each image (as NegCLIP)."""
    images = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)
    groups = (texts,) if negatives is None else (texts, negatives)
    candidates = torch.cat([model.text_projection(model.text_model(**t).pooler_output) for t in groups])
    candidates = F.normalize(candidates, dim=-1)
    logits = model.logit_scale.exp() * images @ candidates.T
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :len(images)].T, target)) / 2


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, edges: float) -> torch.Tensor:
    """MSE + L1, plus ``edges`` x the L1 between the images' vertical and horizontal pixel differences.
    Pixel losses alone leave a house, a few percent of the pixels, a blur whose colour mini-clip cannot read."""
    loss = F.mse_loss(recon, target) + F.l1_loss(recon, target)
    for dim in (2, 3):
        loss = loss + edges * F.l1_loss(recon.diff(dim=dim), target.diff(dim=dim))
    return loss


def cosine_lr(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _loop(name: str, steps: int, lr: float, warmup: int, params, step_fn: Callable[[int], torch.Tensor],
          curve: list, show: bool = True) -> None:
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, steps, warmup))
    with _progress(show) as progress:
        task = progress.add_task(name, total=steps, loss=float("nan"))
        for step in range(steps):
            loss = step_fn(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            curve.append(loss.item())
            progress.update(task, advance=1, loss=float(np.mean(curve[-50:])))


def _progress(show: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    disable=not show)


def train_clip(cfg: MiniConfig, pool: Pool, tokenizer: CLIPTokenizer) -> CLIPModel:
    torch.manual_seed(cfg.seed)
    model = models.new_clip()
    model.train()
    rng = np.random.default_rng([cfg.seed, 1])

    def step(_: int) -> torch.Tensor:
        pick = rng.choice(len(pool), cfg.clip_batch, replace=False)
        images = np.concatenate([pool.originals[pick], pool.edits[pick]])
        flip = rng.random(len(images)) < 0.5
        images[flip] = images[flip, :, ::-1]
        texts = [pool.captions[i] for i in pick] + [pool.styled[i] for i in pick]
        plain, styled = zip(*(pool.negatives(i, rng) for i in pick))
        negatives = [c for group in plain + styled for c in group]
        pixels = clip_pixels(images, illuminants(len(images), cfg.clip_relight, rng))
        return contrastive_loss(model, tokens(texts), pixels, tokens(negatives))

    def tokens(texts: list[str]) -> dict:
        encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}

    _loop("mini-clip", cfg.clip_steps, cfg.clip_lr, cfg.warmup, list(model.parameters()), step,
          cfg.curves.setdefault("clip", []))
    return model.eval()


def train_vae(cfg: MiniConfig, pool: Pool, show: bool = True) -> AutoencoderKL:
    torch.manual_seed(cfg.seed)
    vae = models.new_vae()
    vae.train()
    rng = np.random.default_rng([cfg.seed, 2])
    images = np.concatenate([pool.originals, pool.edits])

    def step(_: int) -> torch.Tensor:
        x = to_unit(images[rng.choice(len(images), cfg.vae_batch, replace=False)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return reconstruction_loss(recon, x, cfg.vae_edges) + cfg.vae_kl * posterior.kl().mean()

    _loop("mini vae", cfg.vae_steps, cfg.vae_lr, cfg.warmup, list(vae.parameters()), step,
          cfg.curves.setdefault("vae", []), show)
    vae.eval()
    with torch.no_grad():
        sample = to_unit(images[rng.choice(len(images), min(len(images), 1024), replace=False)])
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in sample.split(128)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


@torch.no_grad()
def encode_texts(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """SD's conditioning: the last hidden state of the 77-token padded prompt."""
    out = []
    for start in range(0, len(texts), 256):
        ids = tokenizer(texts[start:start + 256], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


def train_unet(cfg: MiniConfig, pool: Pool, vae: AutoencoderKL, text_encoder: CLIPTextModel,
               tokenizer: CLIPTokenizer, store: Path | None = None) -> UNet2DConditionModel:
    """``mini``'s UNet (its EMA) on the pool's originals, encoded once by ``vae`` and ``text_encoder`` here.

    Given ``store`` (a file for the process group) and exactly 2 threads, two one-thread processes train it by
    DDP over gloo, each on half of every batch: on these small convolutions that steps about 1.3x as fast as
    one two-thread process. (The second process is forked after torch has started its threads, which is safe
    only for a process that uses one.)"""
    mean, std = encode_originals(vae, pool)
    texts = encode_texts(text_encoder, tokenizer, pool.captions + [""])
    inputs = _UNetInputs(mean, std, texts[:-1], texts[-1:], vae.config.scaling_factor)
    return _data_parallel(cfg, lambda rank, world: _unet_loop(cfg, inputs, rank, world), store)


@torch.no_grad()
def encode_originals(vae: AutoencoderKL, pool: Pool) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent posteriors (means, standard deviations; unscaled) of the pool's originals."""
    posteriors = [vae.encode(to_unit(pool.originals[s:s + 256])).latent_dist for s in range(0, len(pool), 256)]
    return torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])


def train_flow(cfg: MiniConfig, pool: Pool, vae: AutoencoderKL, clip: CLIPModel, tokenizer: CLIPTokenizer,
               store: Path | None = None) -> StableDiffusion3Pipeline:
    """``mini-flow``: its transformer (the EMA) trained on the pool's originals in ``vae``'s latents, in the
    pipeline it is saved as. Processes as :func:`train_unet`."""
    mean, std = encode_originals(vae, pool)
    inputs = flow.flow_inputs(mean, std, pool.captions, vae, clip, tokenizer)
    return inputs.pipeline(_data_parallel(cfg, lambda rank, world: _flow_loop(cfg, inputs, rank, world), store))


def _data_parallel(cfg: MiniConfig, loop: Callable[[int, int], torch.nn.Module | None], store: Path | None
                   ) -> torch.nn.Module:
    """``loop(rank, world)``'s model from process 0: with ``store`` and 2 threads, two one-thread DDP processes."""
    if store is None or cfg.threads != 2:
        return _train_process(cfg, loop, 0, 1, None)
    store = store.resolve()
    store.unlink(missing_ok=True)
    with beside(lambda: _train_process(cfg, loop, 1, 2, store)) as wait:
        ema = _train_process(cfg, loop, 0, 2, store)
        wait()
    torch.set_num_threads(cfg.threads)
    return ema


@dataclass
class _UNetInputs:
    mean: torch.Tensor  # latent posteriors of the originals, unscaled
    std: torch.Tensor
    captions: torch.Tensor  # encoded captions [N, 77, width]
    empty: torch.Tensor  # the encoded empty prompt [1, 77, width]
    scale: float


def _train_process(cfg: MiniConfig, loop: Callable[[int, int], torch.nn.Module | None], rank: int, world: int,
                   store: Path | None) -> torch.nn.Module | None:
    """Process ``rank`` of ``world``'s share of training; the EMA model from process 0, None from others."""
    torch.set_num_threads(cfg.threads // world)
    if world > 1:
        torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(store), world), rank=rank,
                                             world_size=world, timeout=datetime.timedelta(minutes=5))
    try:
        return loop(rank, world)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()


def _unet_loop(cfg: MiniConfig, inputs: _UNetInputs, rank: int, world: int) -> UNet2DConditionModel | None:
    torch.manual_seed(cfg.seed)
    unet = models.new_unet()
    scheduler = models.train_scheduler()
    rng = np.random.default_rng([cfg.seed, 3, rank])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    batch = _share(cfg.unet_batch, world)

    def step(model: torch.nn.Module) -> torch.Tensor:
        pick = torch.from_numpy(rng.choice(len(inputs.mean), batch, replace=False))
        mean = inputs.mean[pick]
        z = (mean + inputs.std[pick] * torch.randn(mean.shape, generator=generator)) * inputs.scale
        cond = torch.where(torch.from_numpy(rng.random(batch) < cfg.uncond_prob).view(-1, 1, 1),
                           inputs.empty, inputs.captions[pick])
        noise = torch.randn(z.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        error = F.mse_loss(model(scheduler.add_noise(z, noise, t), t, cond).sample, noise, reduction="none")
        snr = compute_snr(scheduler, t)
        return (error.mean(dim=(1, 2, 3)) * snr.clamp(max=cfg.snr_gamma) / snr).mean()

    return _ema_training(cfg, "unet", unet, cfg.unet_steps, cfg.unet_lr, step, rank, world)


def _flow_loop(cfg: MiniConfig, inputs: flow.FlowInputs, rank: int, world: int) -> SD3Transformer2DModel | None:
    torch.manual_seed(cfg.seed)
    transformer = models.new_transformer()
    pipe = inputs.pipeline(transformer)  # encodes prompts as sampling will; its transformer only lends its config
    rng = np.random.default_rng([cfg.seed, 4, rank])
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    batch = _share(cfg.flow_batch, world)
    return _ema_training(cfg, "flow", transformer, cfg.flow_steps, cfg.flow_lr,
                         lambda model: flow.flow_step(inputs, pipe, model, batch, cfg.uncond_prob, rng, generator),
                         rank, world)


def _share(batch: int, world: int) -> int:
    if batch % world:
        raise ValueError(f"batch {batch} does not split evenly over {world} processes")
    return batch // world


def _ema_training(cfg: MiniConfig, name: str, model: torch.nn.Module, steps: int, lr: float,
                  loss: Callable[[torch.nn.Module], torch.Tensor], rank: int, world: int) -> torch.nn.Module | None:
    """Train ``model`` for ``steps`` steps of ``loss(model or its DDP wrapper)``, keeping an EMA copy in process 0
    (returned; None from the others). DDP averages the gradients, so every process clips and steps alike; the
    curve ``cfg.curves[name]`` is process 0's share of the batches."""
    ema = copy.deepcopy(model) if rank == 0 else None
    model.train()
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def step(index: int) -> torch.Tensor:
        if index and ema is not None:
            _ema_update(ema, model, min(cfg.ema_decay, (1 + index) / (10 + index)))
        return loss(wrapped)

    _loop(f"mini {name}", steps, lr, cfg.warmup, list(model.parameters()), step, cfg.curves.setdefault(name, []),
          show=rank == 0)
    if ema is None:
        return None
    _ema_update(ema, model, min(cfg.ema_decay, (1 + steps) / (10 + steps)))
    return ema.eval()


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def save_clip(model: CLIPModel, tokenizer: CLIPTokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": models.IMAGE_SIZE}, image_mean=list(CLIP_MEAN),
                                         image_std=list(CLIP_STD),
                                         crop_size={"height": models.IMAGE_SIZE, "width": models.IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def text_encoder_of(clip: CLIPModel) -> CLIPTextModel:
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()


def save_pipeline(vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                  tokenizer: CLIPTokenizer, path: Path) -> None:
    pipe = StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=models.sampling_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)


def train_mini(cfg: MiniConfig, out: Path, command: str = "") -> dict:
    """Train ``mini-clip``, ``mini`` and ``mini-flow`` into ``out``; returns the training record (also
    ``out/training.json``).

    The VAE trains in a process beside ``mini-clip`` (each on half of ``cfg.threads``), then the UNet on all of
    them, then mini-flow's transformer. Each stage saves its model (with its time and loss curve) as it ends and is skipped by a rerun.
    Gives the caller back its own torch thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train_stages(cfg, out, command)
    finally:
        torch.set_num_threads(threads)


def _train_stages(cfg: MiniConfig, out: Path, command: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = bpe_tokenizer()
    folders = {"clip": out / "mini-clip", "vae": out / "vae", "unet": out / "mini", "flow": out / "mini-flow"}
    start = time.time()
    pool = Pool(cfg, edits=not (folders["clip"].is_dir() and folders["vae"].is_dir()))
    data_seconds = round(time.time() - start, 1)

    def run(name: str, save: Callable[[Path], None], threads: int = cfg.threads) -> None:
        if not folders[name].is_dir():
            _stage(cfg, name, folders[name], save, threads)

    def clip(path: Path) -> None:
        save_clip(train_clip(cfg, pool, tokenizer), tokenizer, path)

    def vae(path: Path, show: bool = True) -> None:
        train_vae(cfg, pool, show).save_pretrained(path, safe_serialization=True)

    side = cfg.threads // 2 if not (folders["clip"].is_dir() or folders["vae"].is_dir()) else 0
    if side:  # the VAE does not need mini-clip: it trains in a process beside it, on its share of the threads
        with beside(lambda: _stage(cfg, "vae", folders["vae"], lambda path: vae(path, show=False), side)) as wait:
            run("clip", clip, cfg.threads - side)
            wait()
    run("clip", clip)
    run("vae", vae)

    def unet(path: Path) -> None:
        autoencoder = AutoencoderKL.from_pretrained(folders["vae"])
        text_encoder = text_encoder_of(CLIPModel.from_pretrained(folders["clip"]))
        trained = train_unet(cfg, pool, autoencoder, text_encoder, tokenizer, out / ".unet-store")
        save_pipeline(autoencoder, trained, text_encoder, tokenizer, path)

    run("unet", unet)

    def transformer(path: Path) -> None:
        autoencoder = AutoencoderKL.from_pretrained(folders["vae"])
        trained = train_flow(cfg, pool, autoencoder, CLIPModel.from_pretrained(folders["clip"]), tokenizer,
                             out / ".flow-store")
        trained.save_pretrained(path, safe_serialization=True)

    run("flow", transformer)
    stages = {name: read_json(folder / STAGE_FILE) for name, folder in folders.items()}
    return write_record(out, cfg, data_seconds, stages, command)


def _stage(cfg: MiniConfig, name: str, path: Path, save: Callable[[Path], None], threads: int) -> None:
    """Train and save one model (``save(folder)``) on ``threads`` threads into ``path``, which appears only once
    complete, with the stage's wall-clock span and loss curve in its ``STAGE_FILE``."""
    start = time.time()
    torch.set_num_threads(threads)
    with atomic_dir(path) as partial:
        save(partial)
        write_json({"start": start, "end": time.time(), "threads": threads, "curve": cfg.curves.get(name, [])},
                   partial / STAGE_FILE)


def write_record(out: Path, cfg: MiniConfig, data_seconds: float, stages: dict, command: str) -> dict:
    """``out/training.json``: the configuration, each stage's wall time and loss curve, and the command.
    The total is the data's time plus the time covered by any stage: stages that ran side by side count once."""
    covered, reach = 0.0, -math.inf
    for begin, end in sorted((v["start"], v["end"]) for v in stages.values()):
        covered += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    record = {"config": {k: v for k, v in asdict(cfg).items() if k != "curves"},
              "seconds": {"data": data_seconds} | {k: round(v["end"] - v["start"], 1) for k, v in stages.items()},
              "total_seconds": round(data_seconds + covered, 1),
              "threads": {k: v["threads"] for k, v in stages.items()},
              "curves": {k: v["curve"] for k, v in stages.items() if v["curve"]},
              "held_out": sorted(world.HELD_OUT), "torch": torch.__version__, "command": command}
    write_json(record, out / "training.json")
    return record
