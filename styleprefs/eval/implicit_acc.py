"""``styleprefs eval implicit-acc``: Diffusion-DPO's implicit reward accuracy on held-out pairs.

For each pair (winner w, loser l, caption c) and each draw k of a timestep t and a noise eps shared by
w and l (Diffusion-DPO paper: averaged over 10 random t), with the trainer's own definitions
(``styleprefs.trainer.losses``): ``e_M(x)`` the per-sample denoising MSE of model M,
``d(x) = e_policy(x) - e_ref(x)``, ``logit = -(beta/2) * (d(w) - d(l))``. The pair counts as correct
for draw k when ``logit > 0``; a logit of exactly 0 (policy = reference) counts as wrong, as in
training's ``implicit_acc``, and is also reported as a tie. Reported:

- ``implicit_acc``: mean over pairs and draws of [logit > 0];
- ``implicit_acc_mean_logit``: mean over pairs of [mean over draws of logit > 0];
- per-draw accuracies, mean logit and the tie count.

Images are used without flip or caption dropout: resized (bicubic, shortest side) and centre-cropped
to ``resolution`` (default: the UNet's native size), encoded by the VAE; the latent is the posterior
**mean** (training samples the posterior; its noise would only add variance here). Draw k of pair i
comes from ``SeedSequence([seed, pair index, k])``, so results do not depend on batch size.

The VAE, text encoder(s) and noise schedule come from ``base`` (default: the reference if it is a
pipeline, else the model), which must be a full pipeline; ``model`` and ``ref`` may be pipelines or
bare UNet folders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from styleprefs.errors import StyleprefsError


def _draw(seed: int, index: int, k: int, latent_shape: tuple[int, ...], components) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``k`` of the pair at row ``index``: the family's time (a DDPM timestep or a flow noise level) and noise."""
    state = np.random.SeedSequence([seed, index, k]).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return components.family.draw_time(gen, components), torch.randn(latent_shape, generator=gen)


@torch.no_grad()
def implicit_accuracy(model: str, ref: str, data: str | Path, *, base: str | None = None, num_draws: int = 10,
                      beta: float = 5000.0, limit: int | None = 500, offset: int = 0, resolution: int | None = None,
                      batch_size: int = 8, seed: int = 0, device: str | None = None, ties: str = "drop",
                      out: str | Path | None = None, show_progress: bool = True) -> dict:
    """Implicit reward accuracy of ``model`` against ``ref`` on pairs ``offset .. offset+limit`` of ``data``."""
    from styleprefs.editors.loading import resolve_device
    from styleprefs.images import decode
    from styleprefs.io import write_json
    from styleprefs.trainer.data import preprocess, read_pairs
    from styleprefs.trainer.losses import dpo_logits, per_sample_error
    from styleprefs.trainer.families import PairDraws
    from styleprefs.trainer.models import encode_latent_dist, load_components, load_denoiser

    if num_draws < 1 or batch_size < 1:
        raise StyleprefsError("--draws and --batch-size must be at least 1")
    if beta <= 0:
        raise StyleprefsError(f"--beta must be positive, got {beta}")
    dev = resolve_device(device)
    pairs, counts = read_pairs(data, ties=ties, seed=seed)
    pairs = pairs[offset:offset + limit if limit else None]
    if not pairs:
        raise StyleprefsError(f"{data} has no pairs in the range (offset {offset}, limit {limit}); "
                              f"{counts['kept']} usable pair(s) of {counts['read']} read")
    base = base or next((m for m in (ref, model) if _is_pipeline(m)), None)
    if base is None:
        raise StyleprefsError("--model and --ref are both UNet or transformer folders: pass --base PIPELINE for the "
                              "VAE, text encoder(s) and noise schedule")
    components = load_components(base, include_denoiser=False, device=dev)
    family = components.family
    policy = load_denoiser(model, family).to(dev).eval().requires_grad_(False)
    reference = load_denoiser(ref, family).to(dev).eval().requires_grad_(False)
    latent_channels = components.vae.config.latent_channels
    for name, denoiser in (("--model", policy), ("--ref", reference)):
        if denoiser.config.in_channels not in (latent_channels, 4 * latent_channels):  # FLUX packs 2x2 latents
            raise StyleprefsError(f"{name} {family.denoiser_folder} has {denoiser.config.in_channels} input channels; "
                                  f"expected a text-to-image model")
    size = resolution or _native_size(policy, components)

    logits = np.zeros((len(pairs), num_draws))
    progress = _Progress(len(pairs), show_progress)
    with progress as advance:
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start:start + batch_size]
            pixels, rows = [], {"original_size_w": [], "crop_top_left_w": [], "original_size_l": [],
                                "crop_top_left_l": []}
            for side in ("winner", "loser"):
                for pair in batch:
                    try:
                        image = decode(getattr(pair, side))
                    except ValueError as exc:
                        raise StyleprefsError(f"{data} pair at row {pair.index}: {side} image cannot be decoded ({exc})") from None
                    px, original, crop = preprocess(image, size, None, False)
                    pixels.append(px)
                    side_name = "w" if side == "winner" else "l"
                    rows[f"original_size_{side_name}"].append(original)
                    rows[f"crop_top_left_{side_name}"].append(crop)
            mean, _ = encode_latent_dist(components, torch.stack(pixels))
            inputs = {"latent_mean": mean.float(), "latent_std": torch.zeros_like(mean, dtype=torch.float32)}
            for name, value in family.encode_prompts(components, [p.caption for p in batch]).items():
                inputs |= {name: value.float(), f"empty_{name}": value[0].float()}  # no caption is dropped here
            inputs |= {k: v.to(dev) for k, v in family.batch_extras(
                {k: torch.tensor(v) for k, v in rows.items()}, size).items()}
            zeros = torch.zeros_like(mean[: len(batch)], dtype=torch.float32)
            for k in range(num_draws):
                drawn = [_draw(seed, p.index, k, tuple(mean.shape[1:]), components) for p in batch]
                draws = PairDraws(timesteps=torch.stack([d[0] for d in drawn]).to(dev),
                                  noise=torch.stack([d[1] for d in drawn]).to(dev), posterior_w=zeros,
                                  posterior_l=zeros, dropped=torch.zeros(len(batch), dtype=torch.bool, device=dev))
                model_inputs, target = family.model_inputs(inputs, draws, components)
                err = per_sample_error(family.predict(policy, model_inputs), target)
                ref_err = per_sample_error(family.predict(reference, model_inputs), target)
                err_w, err_l = err.chunk(2)
                ref_w, ref_l = ref_err.chunk(2)
                values = dpo_logits(err_w.double(), err_l.double(), ref_w.double(), ref_l.double(), beta)
                logits[start:start + len(batch), k] = values.cpu().numpy()
            advance(len(batch))
    per_draw = (logits > 0).mean(axis=0)
    result = {
        "implicit_acc": float((logits > 0).mean()),
        "implicit_acc_mean_logit": float((logits.mean(axis=1) > 0).mean()),
        "per_draw_acc": per_draw.tolist(), "logit_mean": float(logits.mean()), "logit_std": float(logits.std()),
        "ties": int((logits == 0).sum()), "n_pairs": len(pairs), "n_draws": num_draws, "beta": beta, "seed": seed,
        "resolution": size, "latent": "VAE posterior mean", "model": model, "ref": ref, "base": base,
        "data": str(data), "pairs_read": counts["read"], "ties_dropped": counts["ties_dropped"], "offset": offset,
    }
    if out:
        write_json(result, Path(out))
    return result


def _native_size(denoiser: torch.nn.Module, components) -> int:
    """The image size a denoiser was configured for (its ``sample_size`` in latents; FLUX has none: 1024 px)."""
    sample = denoiser.config.get("sample_size")
    return int(sample) * components.vae_scale_factor if sample else 1024


def _is_pipeline(model: str) -> bool:
    """A tiny name or Hub id (assumed a pipeline), or a local folder with model_index.json."""
    path = Path(model).expanduser()
    return not path.exists() or (path / "model_index.json").is_file()


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]pairs"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 disable=not self.enabled)
        self.progress.__enter__()
        task = self.progress.add_task("pairs", total=self.total)
        return lambda k: self.progress.update(task, advance=k)

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)
