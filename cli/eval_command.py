"""``styleprefs eval ...``: generate images on fixed seeds, then style FID, rewards, win rates, Vendi, implicit
accuracy and a report. Thin: parse, call ``styleprefs.eval``, print. Registered in ``app.py`` with
``app.add_typer(eval_app, name="eval")``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from styleprefs.errors import StyleprefsError

eval_app = typer.Typer(
    help="Evaluate models: generate on fixed seeds, style FID/KID, reward scores, win rates, Vendi, implicit accuracy, report.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True)

SCORER_HELP = ("Scorer: pickscore, hpsv2, aesthetic, clip or imagereward; NAME=PATH loads it from a local folder/file "
               "(offline the only way; tiny stand-ins: clip=tiny-clip, pickscore=tiny-clip, hpsv2=tiny-hpsv2, "
               "aesthetic=tiny-aesthetic). Repeat for several.")


def _print(text: str) -> None:
    console.print(text, markup=False, highlight=False)


def _warnings(result: dict) -> None:
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


@eval_app.command()
def generate(
    model: str = typer.Option(..., "--model", help="SD1.5/SDXL pipeline folder or Hub id; 'tiny' / 'tiny-sdxl' offline."),
    prompts: str = typer.Option(..., "--prompts", help="Dataset folder/Parquet (its captions), .txt/.tsv/.csv/.json/.jsonl file, "
                                "a folder of .json prompt lists, 'parti' (nateraw/parti-prompts) or 'hpsv2' (zhwang/HPDv2 benchmark)."),
    out: Path = typer.Option(..., "--out", help="Output folder (images/, index.jsonl, generate.json); rerun to resume."),
    images_per_prompt: int = typer.Option(5, help="Images per prompt (the paper's win rate uses 5)."),
    seed: int = typer.Option(0, help="Base seed; image i of a prompt gets seed hash(seed, prompt, i), same for every model."),
    steps: int = typer.Option(50, help="Sampling steps."),
    guidance: Optional[float] = typer.Option(None, help="CFG scale (default: 7.5 for SD1.5, 5.0 for SDXL, 7.0 for SD3, 3.5 for FLUX.1)."),
    resolution: Optional[int] = typer.Option(None, help="Image size [default: the model's native size]."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    negative_prompt: str = typer.Option("", help="Negative prompt for every image."),
    batch_size: int = typer.Option(4, help="Images per pipeline call."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    dtype: str = typer.Option("auto", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16."),
    overwrite: bool = typer.Option(False, help="Replace a folder generated with other settings."),
    vae: Optional[str] = typer.Option(None, help="Decode with this VAE instead of the model's (folder or Hub id, "
                                      "e.g. madebyollin/sdxl-vae-fp16-fix)."),
    allow_tf32: bool = typer.Option(True, help="TF32 matmuls and convolutions on CUDA (no effect on CPU)."),
    channels_last: bool = typer.Option(False, help="UNet and VAE in channels_last layout (GPU)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (slow first batch)."),
) -> None:
    """Generate images per prompt on seeds fixed per (prompt, index), with an index file; resumable."""
    from styleprefs.eval.generate import generate as run

    result = run(model, prompts, out, images_per_prompt=images_per_prompt, seed=seed, steps=steps, guidance=guidance,
                 resolution=resolution, limit=limit, negative_prompt=negative_prompt, batch_size=batch_size,
                 device=device, dtype=dtype, overwrite=overwrite, vae=vae, allow_tf32=allow_tf32,
                 channels_last=channels_last, compile=compile)
    _print(f"{result['done']} image(s) generated, {result['skipped']} already there; {result['total']} in {out} "
           f"({result['n_prompts']} prompts x {result['images_per_prompt']}, {result['steps']} steps, "
           f"guidance {result['guidance']}, {result['width']}x{result['height']})")


@eval_app.command("style-fid")
def style_fid(
    data: str = typer.Option(..., "--data", help="Style dataset (its preferred images are the reference set)."),
    generated: Path = typer.Option(..., "--generated", help="Folder written by `eval generate` (or any image folder)."),
    inception: Optional[Path] = typer.Option(None, help="FID Inception weights (pytorch-fid pt_inception-2015-12-05-6726825d.pth) "
                                             "[default: $TORCH_HOME/hub/checkpoints/]."),
    features: str = typer.Option("fid", help="fid (the TF Inception weights), mini (mini-clip features: mini FID, "
                                 "comparable only within the miniature world) or random (seeded untrained network: "
                                 "smoke tests only). Only fid is comparable to published FID."),
    resize: str = typer.Option("clean", help="clean (clean-fid: PIL bicubic in float) or pytorch-fid (bilinear)."),
    match_encoding: bool = typer.Option(True, help="Re-encode non-JPEG images as JPEG q95, like the dataset's images."),
    unequal: str = typer.Option("subsample", help="Unequal counts: subsample (random subset of the larger set, reported) or error."),
    seed: int = typer.Option(0, help="Seed for subsets and KID subsets (and random features)."),
    kid_subsets: int = typer.Option(100, help="KID subsets."),
    kid_subset_size: int = typer.Option(1000, help="KID subset size (capped at N)."),
    batch_size: int = typer.Option(16, help="Images per Inception forward."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    out: Optional[Path] = typer.Option(None, help="Result JSON [default: GENERATED/style_fid.json]."),
) -> None:
    """FID and KID between a dataset's preferred images and generated images (equal counts)."""
    from styleprefs.eval.fid import style_fid as run

    result = run(data, generated, inception=inception, features=features, resize=resize, match_encoding=match_encoding,
                 unequal=unequal, seed=seed, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size,
                 batch_size=batch_size, device=device, out=out)
    label = "" if result["comparable_to_published"] else f"  [{features} features: NOT comparable to published FID]"
    _print(f"style FID {result['fid']:.3f}  KID {result['kid']:.5f} ± {result['kid_std']:.5f}  "
           f"(N = {result['n']} per set){label}")
    _print(f"features: {result['features']['name']}; resize: {result['resize']}; encoding: {result['encoding']}")
    _warnings(result)


@eval_app.command()
def rewards(
    folder: Path = typer.Argument(..., help="Folder written by `eval generate`."),
    scorer: List[str] = typer.Option(..., "--scorer", help=SCORER_HELP),
    pickscore_processor: Optional[str] = typer.Option(None, help="Processor for PickScore [default: the model folder's, "
                                                      "else laion/CLIP-ViT-H-14-laion2B-s32B-b79K]."),
    aesthetic_clip: Optional[str] = typer.Option(None, help="CLIP under the aesthetic MLP [default: openai/clip-vit-large-patch14]."),
    hpsv2_version: str = typer.Option("v2.1", help="HPSv2 checkpoint fetched from xswu/HPSv2: v2.0 or v2.1."),
    hpsv2_arch: Optional[str] = typer.Option(None, help="open_clip architecture for an HPSv2 .pt [default: ViT-H-14]."),
    batch_size: int = typer.Option(8, help="Images per scorer forward (does not change the scores)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Score every generated image with reward models: per-image Parquet and per-scorer averages."""
    from styleprefs.eval.rewards import SCORES_FILE, score_folder

    summary = score_folder(folder, scorer, batch_size=batch_size, device=device, pickscore_processor=pickscore_processor,
                           aesthetic_clip=aesthetic_clip, hpsv2_version=hpsv2_version, hpsv2_arch=hpsv2_arch)
    table = Table("scorer", "mean", "std", "median", "n", "model", "scale", title=f"rewards of {folder}")
    for name, s in summary.items():
        table.add_row(name, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['median']:.4f}", str(s["n"]), str(s["model"]),
                      s["scale"])
    console.print(table)
    _print(f"per-image scores: {folder / SCORES_FILE}")


@eval_app.command()
def winrate(
    dir_a: Path = typer.Argument(..., help="Generation folder of model A."),
    dir_b: Path = typer.Argument(..., help="Generation folder of model B (same prompts and seeds)."),
    scorer: List[str] = typer.Option(..., "--scorer", help=SCORER_HELP),
    n_bootstrap: int = typer.Option(10000, help="Bootstrap resamples (over prompts) for the confidence interval."),
    confidence: float = typer.Option(0.95, help="Confidence level of the interval."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    out: Optional[Path] = typer.Option(None, help="Result JSON [default: DIR_A/winrate_vs_<DIR_B name>.json]."),
    batch_size: int = typer.Option(8, help="Images per scorer forward, when scores must be computed."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Win rate of A over B: per prompt, median score of A's images vs B's; ties count 1/2; bootstrap CI."""
    from styleprefs.eval.winrate import winrate_folders

    results = winrate_folders(dir_a, dir_b, scorer, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, out=out,
                              batch_size=batch_size, device=device, show_progress=True)
    table = Table("scorer", "win rate A over B", f"{int(confidence * 100)}% CI", "wins", "ties", "losses", "prompts",
                  title=f"{dir_a} vs {dir_b}")
    for name, r in results.items():
        if isinstance(r, dict) and "win_rate" in r:
            table.add_row(name, f"{r['win_rate']:.3f}", f"{r['ci_low']:.3f}–{r['ci_high']:.3f}", str(r["wins"]),
                          str(r["ties"]), str(r["losses"]), str(r["n_prompts"]))
    console.print(table)
    _warnings(results)


@eval_app.command()
def vendi(
    folder: Path = typer.Argument(..., help="Folder written by `eval generate`."),
    embedding: str = typer.Option("inception", help="inception (torchvision ImageNet weights, the Vendi-Score repo's), "
                                  "clip, or random (smoke test, not comparable)."),
    weights: Optional[Path] = typer.Option(None, help="inception_v3_google-0cc3c7bd.pth [default: $TORCH_HOME/hub/checkpoints/]."),
    clip_model: Optional[str] = typer.Option(None, help="CLIP for --embedding clip [default: openai/clip-vit-large-patch14; "
                                             "tiny-clip offline]."),
    seed: int = typer.Option(0, help="Seed of the random embedding."),
    batch_size: int = typer.Option(16, help="Images per forward."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    out: Optional[Path] = typer.Option(None, help="Result JSON [default: FOLDER/vendi.json]."),
) -> None:
    """Vendi diversity score of each prompt's images (cosine kernel), averaged over prompts."""
    from styleprefs.eval.vendi import vendi_folder

    result = vendi_folder(folder, embedding=embedding, weights=str(weights) if weights else None, clip_model=clip_model,
                          seed=seed, device=device, batch_size=batch_size, out=out)
    _print(f"Vendi {result['vendi']:.3f} ± {result['vendi_std']:.3f} over {result['n_prompts']} prompts "
           f"({result['images_per_prompt']} images each; {result['embedding']})")
    _warnings(result)


@eval_app.command("implicit-acc")
def implicit_acc(
    model: str = typer.Option(..., "--model", help="Fine-tuned pipeline or UNet folder (or Hub id, tiny name)."),
    ref: str = typer.Option(..., "--ref", help="Reference pipeline or UNet folder (e.g. the base or SFT model)."),
    data: str = typer.Option(..., "--data", help="Held-out preference pairs (dataset folder or Pick-a-Pic Parquet)."),
    base: Optional[str] = typer.Option(None, help="Pipeline giving the VAE, text encoders and schedule "
                                       "[default: --ref, or --model if --ref is a UNet folder]."),
    draws: int = typer.Option(10, help="(t, noise) draws per pair (the Diffusion-DPO paper: 10)."),
    beta: float = typer.Option(5000.0, help="DPO beta (scales the logits; the accuracy depends only on their sign)."),
    limit: int = typer.Option(500, help="Pairs to use (0: all)."),
    offset: int = typer.Option(0, help="First pair to use."),
    resolution: Optional[int] = typer.Option(None, help="Image size [default: the UNet's native size]."),
    batch_size: int = typer.Option(8, help="Pairs per forward (does not change the result)."),
    seed: int = typer.Option(0, help="Seed of the (t, noise) draws."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (put it in a run folder for `eval report`)."),
) -> None:
    """Diffusion-DPO implicit reward accuracy of --model against --ref on held-out pairs."""
    from styleprefs.eval.implicit_acc import implicit_accuracy

    r = implicit_accuracy(model, ref, data, base=base, num_draws=draws, beta=beta, limit=limit or None, offset=offset,
                          resolution=resolution, batch_size=batch_size, seed=seed, device=device, out=out)
    _print(f"implicit accuracy {100 * r['implicit_acc']:.1f}% over {r['n_pairs']} pairs x {r['n_draws']} draws "
           f"(on the mean logit: {100 * r['implicit_acc_mean_logit']:.1f}%; {r['ties']} zero logits counted wrong)")


@eval_app.command()
def report(
    runs: List[Path] = typer.Argument(..., help="Generation folders holding eval results (first = baseline for win rates)."),
    out: Path = typer.Option(Path("report.md"), "--out", help="Markdown report; JSON and PNGs are written beside it."),
    name: List[str] = typer.Option([], "--name", help="Row label per run, in order [default: folder names]."),
    grid_prompts: int = typer.Option(4, help="Prompts (rows) in the image grid."),
) -> None:
    """Markdown table (rows: methods, columns: metrics), image grid (same prompt and seed) and bar plots."""
    from styleprefs.eval.report import make_report

    empty = [str(run) for run in runs if run.is_dir() and not any(run.iterdir())]
    if empty:
        raise StyleprefsError(f"run folder(s) {', '.join(empty)} are empty: run `styleprefs eval generate` and the "
                              "metrics (style-fid, rewards, vendi, ...) there first")

    result = make_report(runs, out, names=name or None, grid_prompts=grid_prompts)
    _print(f"report written to {out} ({len(result['labels'])} runs, {len(result['columns'])} metrics)")
