"""The mini models' card: data, steps, loss curves, quality figures and the command that trained them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from styleprefs.io import write_text
from styleprefs.mini import world
from styleprefs.mini.quality import render_comparison, render_table
from styleprefs.mini.ship import WEIGHTS
from styleprefs.trainer.plots import running_mean


def plot_curves(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3))
    for ax, (name, values) in zip(np.atleast_1d(axes), curves.items()):
        window = max(1, len(values) // 50)
        ax.plot(running_mean(values, window))
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_card(figures: dict[str, dict], folder: Path | None = None) -> Path:
    """Write ``README.md`` (and ``loss_curves.png``) into ``folder`` (default: the shipped weights); ``figures``
    holds ``styleprefs.mini.quality.measure``'s figures of "mini" and of "mini-flow"."""
    folder = Path(folder or WEIGHTS)
    record = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    plot_curves(record["curves"], folder / "loss_curves.png")
    cfg = record["config"]
    minutes = {k: f"{v / 60:.1f}" for k, v in record["seconds"].items()}
    held_out = ", ".join(f"{c} house at {t}" for c, t in sorted(world.HELD_OUT))
    final = {k: float(np.mean(v[-100:])) for k, v in record["curves"].items()}
    mini, flow = figures["mini"], figures["mini-flow"]
    text = f"""# mini, mini-flow and mini-clip

Small models trained from scratch on styleprefs' bundled sample scenes, so that offline runs show
behaviour and not only plumbing. `mini` is a Stable Diffusion 1.5-layout pipeline at 64 px
(AutoencoderKL with 16x16 latents, UNet2DConditionModel, CLIP text encoder with the CLIP BPE tokenizer,
DDIM scheduler); `mini-flow` a Stable Diffusion 3-layout pipeline at 64 px (SD3Transformer2DModel trained
as a rectified flow, FlowMatchEulerDiscreteScheduler, two CLIP text encoders with projection, no T5) on
`mini`'s VAE; `mini-clip` a CLIPModel whose text tower is `mini`'s text encoder and both of `mini-flow`'s. They know
nothing outside the sample world: houses in five colours, four times of day, five grounds, trees,
animals and a few objects. mini FID (FID on `mini-clip` features) is comparable only within this
miniature, never with published FID.

## Data
- {cfg['scenes']} training scenes of the `sample` source, each drawn once (one of 16 layouts) at
  128, 256 or 512 px, then resized to 64 px (bicubic, as the trainer's cache does).
- Each scene also has one classic edit (winter 50%, Van Gogh 25%, sketch 25%), captioned with the
  style's CLIP text (e.g. "..., in winter, covered in snow"). `mini-clip` and the VAE see originals and
  edits; `mini`'s UNet and `mini-flow`'s transformer see originals only, so the base models draw the world
  in summer.
- Held out (never in training): {held_out}. Each colour and each time of day is seen, never these pairs.

## Architecture
{_architecture(folder)}

## Training
| model | steps | batch | lr | final loss (mean of last 100) | minutes |
|---|---|---|---|---|---|
| mini-clip (contrastive, both towers) | {cfg['clip_steps']} | {cfg['clip_batch']} scenes + their edits | {cfg['clip_lr']} | {final.get('clip', float('nan')):.4f} | {minutes.get('clip', '-')} |
| VAE | {cfg['vae_steps']} | {cfg['vae_batch']} | {cfg['vae_lr']} | {final.get('vae', float('nan')):.4f} | {minutes.get('vae', '-')} |
| UNet (EMA {cfg['ema_decay']}) | {cfg['unet_steps']} | {cfg['unet_batch']} | {cfg['unet_lr']} | {final.get('unet', float('nan')):.4f} | {minutes.get('unet', '-')} |
| mini-flow transformer (EMA {cfg['ema_decay']}) | {cfg.get('flow_steps', '-')} | {cfg.get('flow_batch', '-')} | {cfg.get('flow_lr', '-')} | {final.get('flow', float('nan')):.4f} | {minutes.get('flow', '-')} |

- `mini-clip`: CLIP's contrastive loss, with hard negatives as in NegCLIP: each caption with its time of
  day, and its house colour, swapped for another (never to a held-out pairing) is an extra wrong candidate
  for its image. A share of {cfg.get('clip_relight', 0)} of the images is seen under a random coloured light (per-channel
  gains in 0.4-1), which teaches colour constancy: a red house stays red under the night's blue light.
- VAE: MSE + L1 + KL ({cfg['vae_kl']}), plus {cfg.get('vae_edges', 0)} x the L1 between the images' horizontal and
  vertical pixel differences. Without that term a house, a few percent of the pixels, comes back a blur
  whose colour `mini-clip` cannot read, and `mini` cannot draw what its VAE cannot decode.
- UNet: epsilon prediction with Min-SNR loss weighting (gamma {cfg.get('snr_gamma', 'off')}), captions dropped
  {cfg['uncond_prob']:.0%} of the time for classifier-free guidance.
- mini-flow transformer: the rectified-flow objective of `styleprefs.trainer.flow_matching` (the trainer's flow
  family): `x_t = (1 - sigma) x0 + sigma n`, velocity target `n - x0`, plain MSE, sigma drawn logit-normally
  (mean 0, std 1) through the scheduler's schedule; the same originals, the same VAE latents and the same
  caption dropout as the UNet. Prompts are encoded by the pipeline's own `encode_prompt`, so the transformer
  trains on exactly the text sequence it samples with.

AdamW, warm-up {cfg['warmup']} steps then cosine decay, gradient clipping at 1, {cfg['threads']} CPU threads,
torch {record['torch']}. {_beside(record)}Total {record['total_seconds'] / 60:.1f} minutes of wall time
(data {minutes.get('data', '-')}), as measured: on a shared machine this includes time spent waiting for the CPU.
Seed {cfg['seed']}; every draw comes from it, so the same command on the same thread count gives the
same weights. A rerun trains only the models its folder lacks; those it finds keep their recorded times.
{record.get('note', '')}

![loss curves](loss_curves.png)

Command:

    {record.get('command') or 'python -m styleprefs.mini train --out DIR'}
    python -m styleprefs.mini pack DIR      # float16 copies + SHA256SUMS into styleprefs/mini/weights

## Quality on held-out scenes
`python bench/mini_quality.py --scenes {mini['scenes']} --card`, one image per held-out caption.

`mini` ({mini['steps']} DDIM steps, guidance {mini['guidance']}):

{render_table(mini)}

`mini-flow` ({flow['steps']} flow-matching Euler steps of its own scheduler, guidance {flow['guidance']}; the
pipeline called with `max_sequence_length` equal to its tokenizers' length, as it was trained):

{render_table(flow, "mini-flow")}

`mini-flow` against `mini`, measured in the same run:

{render_comparison(mini, flow)}
"""
    path = folder / "README.md"
    write_text(text, path)
    return path


def _architecture(folder: Path) -> str:
    """The shapes that decide the models' cost, read from the saved configs."""
    clip = json.loads((folder / "mini-clip" / "config.json").read_text(encoding="utf-8"))
    vision, text = clip["vision_config"], clip["text_config"]
    unet = json.loads((folder / "mini" / "unet" / "config.json").read_text(encoding="utf-8"))
    vae = json.loads((folder / "mini" / "vae" / "config.json").read_text(encoding="utf-8"))
    heads = unet["attention_head_dim"]  # diffusers' UNet reads this as the number of heads (SD1.5's 8)
    levels = unet["block_out_channels"]
    attending = [c for c, kind in zip(levels, unet["down_block_types"]) if "CrossAttn" in kind]
    widths, channels = "/".join(str(c // heads) for c in attending), "/".join(map(str, levels))
    return (f"- `mini-clip`: a ViT image tower on {vision['image_size']} px images in {vision['patch_size']} px "
            f"patches, width {vision['hidden_size']}, {vision['num_hidden_layers']} layers; a text tower of width "
            f"{text['hidden_size']}, {text['num_hidden_layers']} layers; {clip['projection_dim']}-d joint embeddings.\n"
            f"- `mini` UNet: channels {channels}, cross-attention in {len(attending)} of its {len(levels)} levels "
            f"with {heads} heads ({widths} channels a head), conditioned on the text tower's "
            f"{unet['cross_attention_dim']}-d hidden states; VAE: channels "
            f"{'/'.join(map(str, vae['block_out_channels']))}, {vae['latent_channels']} latent channels.\n"
            + _flow_architecture(folder / "mini-flow"))


def _flow_architecture(folder: Path) -> str:
    config = {part: json.loads((folder / part / name).read_text(encoding="utf-8")) for part, name in
              (("transformer", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json"),
               ("tokenizer", "tokenizer_config.json"))}
    dit, vae = config["transformer"], config["vae"]
    grid, heads = dit["sample_size"] // dit["patch_size"], dit["num_attention_heads"]
    return (f"- `mini-flow` transformer: {dit['num_layers']} MMDiT blocks of width {heads * dit['attention_head_dim']} "
            f"({heads} heads of {dit['attention_head_dim']}, {dit['qk_norm'] or 'no'} query/key norm) over "
            f"{dit['patch_size']}x{dit['patch_size']} patches of the {dit['sample_size']}x{dit['sample_size']}x"
            f"{dit['in_channels']} latents ({grid * grid} image tokens); text input {dit['joint_attention_dim']}-d "
            f"(the two towers' hidden states side by side), pooled input {dit['pooled_projection_dim']}-d; its CLIP "
            f"tokenizers pad to {config['tokenizer']['model_max_length']} tokens. VAE: `mini`'s, with shift factor "
            f"{vae['shift_factor']:.4f} and scaling factor {vae['scaling_factor']:.4f}; scheduler shift "
            f"{config['scheduler']['shift']}.")


def _beside(record: dict) -> str:
    if record["total_seconds"] >= sum(record["seconds"].values()):
        return ""
    return ("mini-clip and the VAE trained side by side, in two processes, and on 2 threads the UNet as two one-thread "
            "processes (DDP), as was mini-flow's transformer; the total counts time once. ")
