"""The ``styleprefs`` command line: parse, call one library function, print."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from styleprefs.cli.eval_command import eval_app
from styleprefs.cli.experiment_command import experiment_app
from styleprefs.cli.train_command import train
from styleprefs.errors import StyleprefsError, as_user_error

app = typer.Typer(
    help="Style-alignment preference datasets and preference fine-tuning for Stable Diffusion.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True)
_debug = False  # set by --debug or STYLEPREFS_DEBUG=1: tracebacks for user errors too


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (also STYLEPREFS_DEBUG=1).")) -> None:
    """Style-alignment preference datasets and preference fine-tuning for Stable Diffusion."""
    global _debug
    _debug = _debug or debug


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="Dataset folder to create (or resume)."),
    style: str = typer.Option("winter", help="Built-in style (van_gogh, sketch, winter) or a style .yaml path."),
    source: str = typer.Option("pickapic", help="'pickapic' (Hub), 'sample' (bundled, offline), a Hub repo id, or a local Parquet/tar file, folder or glob."),
    editor: str = typer.Option("classic", help="Editor that restyles the rejected image: classic, instruct-pix2pix, "
                               "prompt-diffusion, kontext, qwen-image-edit, or improve (an improvement model from "
                               "`styleprefs train --stage improve`, given as --editor-model)."),
    editor_model: Optional[str] = typer.Option(None, help="Neural editor's Hub id or folder ('tiny' offline; improve: "
                                               "the improvement model's run folder); default the paper's model "
                                               "(kontext, qwen-image-edit: FLUX.1-Kontext-dev, Qwen-Image-Edit-2509)."),
    editor_steps: Optional[int] = typer.Option(None, help="Neural editor's denoising steps (default: the style's; "
                                               "kontext, qwen-image-edit: the model card's)."),
    quality_gate: Optional[bool] = typer.Option(None, "--quality-gate/--no-quality-gate", help="CLIP quality gate (default: on for neural editors, off for classic)."),
    clip_model: str = typer.Option("openai/clip-vit-large-patch14", help="CLIP of the quality gate ('tiny' offline)."),
    min_direction: float = typer.Option(0.2, help="Gate: minimum CLIP directional similarity."),
    min_image: float = typer.Option(0.7, help="Gate: minimum CLIP image similarity."),
    min_text: float = typer.Option(0.2, help="Gate: minimum CLIP image-text similarity (edit vs styled caption, original vs caption)."),
    max_tries: int = typer.Option(3, help="Gate: tries per row, each with the next seed, before rejecting it."),
    device: str = typer.Option("auto", help="Device of neural editors and the gate: auto, cpu, cuda, cuda:1 ..."),
    dtype: str = typer.Option("auto", help="Neural editors: auto (fp16 on GPU, bf16 for kontext and qwen-image-edit; fp32 on CPU), fp32, fp16 or bf16 (the gate is fp32)."),
    num_pairs: int = typer.Option(10000, help="Pairs to keep in the dataset."),
    seed: int = typer.Option(0, help="Seed; each row's randomness comes from (seed, row key)."),
    split: Optional[str] = typer.Option(None, help="Source split (Hub default: train)."),
    unique_captions: bool = typer.Option(False, help="Skip rows whose caption was already used (--max-per-prompt 1)."),
    max_per_prompt: Optional[int] = typer.Option(None, help="Use at most N rows per caption (case and spacing ignored)."),
    models: Optional[str] = typer.Option(None, help="Keep rows whose model_0 and model_1 both match: a glob on the "
                                         "whole name ('*dream*': Diffusion-DPO's Dreamlike-only pairs) or re:REGEX, "
                                         "searched; case ignored."),
    has_label: bool = typer.Option(False, "--has-label", help="Keep rows with label_0 0 or 1 (drop ties and unlabelled rows)."),
    sample: str = typer.Option("sequential", help="sequential: the source's order. random: row groups of Parquet "
                               "sources in a seeded order from the footers; only the groups used are read."),
    shard_size: int = typer.Option(1000, help="Rows per output Parquet shard."),
    batch_size: str = typer.Option("8", help="Images per editor call (does not change a classic build's output); auto: "
                                    "from free GPU memory and the working size (8 on CPU)."),
    workers: str = typer.Option("auto", help="Worker processes for the classic editor's rows (drawing sample pairs, "
                                "editing, encoding); auto: one per core; 0 or 1: in this process. Same output."),
    channels_last: bool = typer.Option(False, help="Neural editors: UNet and VAE in channels_last layout (GPU)."),
    compile: bool = typer.Option(False, "--compile", help="Neural editors: torch.compile the UNet (slow first batch)."),
    max_area: Optional[int] = typer.Option(None, help="kontext, qwen-image-edit: working area in pixels (default: the "
                                           "model's, about 1024x1024; tiny models 64x64). Smaller is faster."),
    offload: str = typer.Option("none", help="kontext, qwen-image-edit: CPU offload for 24 GB cards: none, model "
                                "(components in turn) or group (layer by layer, least memory). CUDA only."),
    safety: bool = typer.Option(True, help="Quarantine captions the built-in word lists or the shipped caption model flag, before editing."),
    overwrite: bool = typer.Option(False, help="Replace a dataset built with other arguments."),
) -> None:
    """Build a style preference dataset in Pick-a-Pic's Parquet format."""
    from styleprefs.build import BuildConfig, build_dataset, shortfall
    from styleprefs.gpu import parse_batch_size
    from styleprefs.parallel import parse_workers
    from styleprefs.sources.selection import SelectionConfig

    cfg = BuildConfig(style=style, source=source, editor=editor, num_pairs=num_pairs, seed=seed, split=split,
                      unique_captions=unique_captions, shard_size=shard_size, safety=safety,
                      editor_model=editor_model, editor_steps=editor_steps, quality_gate=quality_gate,
                      clip_model=clip_model, min_direction=min_direction, min_image=min_image, min_text=min_text,
                      max_tries=max_tries, selection=SelectionConfig(sample=sample, models=models, has_label=has_label,
                                                                     max_per_prompt=max_per_prompt))
    gpu = {"channels_last": channels_last, "compile": compile} if editor != "classic" else {}
    gpu |= {"max_area": max_area} if max_area is not None else {}
    gpu |= {"offload": offload} if offload != "none" else {}
    result = build_dataset(cfg, out, batch_size=parse_batch_size(batch_size), overwrite=overwrite, device=device,
                           dtype=dtype, editor_options=gpu, workers=parse_workers(workers))
    if result.status == "complete":
        console.print(f"{out} is already complete with these arguments; nothing to do.")
    _print_counts(result.manifest["counts"], f"dataset {out}")
    skipped = result.manifest.get("selection", {}).get("skipped")
    if skipped:
        _print_counts(skipped, "rows skipped by the selection")
    short = shortfall(result.manifest)
    if short:
        console.print(f"{out}: {short}", markup=False, highlight=False)


@app.command()
def inspect(
    dataset: Path = typer.Argument(..., help="Dataset folder written by `styleprefs build`."),
    grid: Optional[Path] = typer.Option(None, help="Write a PNG grid of pairs (original | edit) here."),
    rows: int = typer.Option(8, help="Pairs in the grid."),
) -> None:
    """Check a dataset's schema and shards, print counts and per-style stats, optionally draw a grid."""
    from styleprefs.inspect import inspect_dataset, save_grid

    report = inspect_dataset(dataset)
    _print_counts(report.counts, f"dataset {dataset}")
    table = Table("style", "editor", "rows", "edit in jpg_0", "source tie rows")
    for s in report.styles:
        table.add_row(s["style"], s["editor"], str(s["rows"]), f"{s['edit_slot0_share']:.2f}", str(s["source_ties"]))
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}")
    if grid is not None:
        save_grid(dataset, grid, rows)
        console.print(f"grid written to {grid}")
    if report.problems:
        raise typer.Exit(1)


@app.command("filter-unsafe")
def filter_unsafe_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder written by `styleprefs build`."),
    out: Optional[Path] = typer.Option(None, help="Write the filtered dataset here instead of in place."),
    images: bool = typer.Option(True, "--images/--no-images", help="Score both images of every pair (sexual content only; default backend open_nsfw, offline)."),
    image_model: str = typer.Option("open_nsfw", help="open_nsfw (shipped, onnxruntime), or an SD safety checker id or path, e.g. CompVis/stable-diffusion-safety-checker."),
    image_threshold: Optional[float] = typer.Option(None, help="Quarantine an image whose score is above this (default: open_nsfw 0.8, SD checker 0, its own rule)."),
    learned_text: bool = typer.Option(True, "--learned-text/--no-learned-text", help="Beside the word lists, the shipped caption model."),
    learned_text_threshold: Optional[float] = typer.Option(None, help="Quarantine a caption the caption model scores at least this (default: its shipped threshold)."),
    text_model: Optional[str] = typer.Option(None, help="Text classifier id or path, e.g. eliasalbouzidi/distilbert-nsfw-text-classifier."),
    text_model_label: list[str] = typer.Option([], help="The classifier's unsafe label name(s); default: matched by pattern."),
    text_threshold: float = typer.Option(0.5, help="Quarantine a caption whose unsafe probability is at least this."),
    blocklist: list[Path] = typer.Option([], help="Extra term list(s): lines 'category<TAB>term' or 'term'."),
    allowlist: list[Path] = typer.Option([], help="Phrases never to flag, one per line."),
    replace_lists: bool = typer.Option(False, help="Use only --blocklist/--allowlist, not the built-in lists."),
    device: str = typer.Option("cpu", help="Device for the model backends."),
) -> None:
    """Move unsafe rows to quarantine.parquet (category, matched term or score, backend); rewrite shards atomically."""
    from styleprefs.filter_unsafe import SafetyOptions, filter_unsafe
    from styleprefs.safety.nsfw_image import skipped_note

    options = SafetyOptions(blocklists=tuple(map(str, blocklist)), allowlists=tuple(map(str, allowlist)),
                            replace_default_lists=replace_lists, text_model=text_model,
                            text_labels=tuple(text_model_label), text_threshold=text_threshold,
                            learned_text=learned_text, learned_text_threshold=learned_text_threshold, images=images,
                            image_model=image_model, image_threshold=image_threshold, device=device)
    if not images:
        console.print(skipped_note(), markup=False)
    report = filter_unsafe(dataset, options, out=out)
    if report.status == "no-op":
        done = f"{out} already holds {dataset} filtered" if out else f"{dataset} was already filtered"
        console.print(f"{done} with these options; nothing to do.", markup=False, highlight=False)
        return
    table = Table("category", "rows quarantined", title=f"safety filter on {out or dataset}")
    for category, n in report.by_category().items():
        table.add_row(category, str(n))
    table.add_row("[bold]total[/bold]", f"{len(report.quarantined)} of {report.rows_before}")
    console.print(table)


@app.command()
def relabel(
    dataset: Path = typer.Argument(..., help="Dataset folder written by `styleprefs build`."),
    scorer: str = typer.Option(..., help="Scorer whose higher-scored image becomes the preferred one: "
                               "pickscore, hpsv2, aesthetic, clip, imagereward, winter, van_gogh or sketch, "
                               "NAME=PATH for a local copy (offline: winter=mini-clip, clip=tiny-clip)."),
    out: Optional[Path] = typer.Option(None, help="Write the relabelled dataset here instead of in place."),
    ties: str = typer.Option("keep", help="Pairs the scorer ties: keep (labels 0.5/0.5), drop (to rejects) or "
                             "original (keep the labels from before relabelling)."),
    tie_tolerance: float = typer.Option(1e-6, help="A tie is |score_0 - score_1| at most this."),
    batch_size: int = typer.Option(8, help="Images per scorer forward (does not change the labels)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
) -> None:
    """Relabel pairs with a reward model (AI feedback): higher score preferred; original labels and scores kept."""
    from styleprefs.relabel import RelabelOptions
    from styleprefs.relabel import relabel as run

    options = RelabelOptions(scorer=scorer, ties=ties, tie_tolerance=tie_tolerance, batch_size=batch_size,
                             device=device)
    report = run(dataset, options, out=out)
    if report.status == "no-op":
        console.print(f"{report.target} is already relabelled with these settings; nothing to do.", markup=False)
    counts, agreement = report.summary["counts"], report.summary["agreement"]
    table = Table("scorer", "pairs", "scorer ties", "original ties", "agree", "disagree", "agreement",
                  title=f"relabelled {report.target}")
    table.add_row(report.summary["settings"]["scorer"], str(counts["pairs"]), str(counts["scorer_ties"]),
                  str(counts["original_ties"]), str(counts["agree"]), str(counts["disagree"]),
                  "n/a" if agreement is None else f"{agreement:.3f}")
    console.print(table)


@app.command()
def review(
    dataset: Path = typer.Argument(..., help="Dataset folder written by `styleprefs build`."),
    host: str = typer.Option("127.0.0.1", help="Address the page listens on (127.0.0.1: this machine only)."),
    port: int = typer.Option(7860, help="Port of the page (0: any free port)."),
    apply: bool = typer.Option(False, "--apply", help="Write the new decisions of DATASET/review.jsonl into the "
                               "dataset (drops to rejects.parquet, flips swap labels) instead of serving the page."),
) -> None:
    """Curate by eye: a local page to browse pairs and drop, flip or keep them (saved to DATASET/review.jsonl)."""
    if apply:
        from styleprefs.review.apply import apply_review

        report = apply_review(dataset)
        if report.status == "no-op":
            console.print(f"{dataset}/review.jsonl holds no decisions that are not applied yet; nothing to do.",
                          markup=False)
        else:
            console.print(f"applied {report.lines} line(s) of {dataset}/review.jsonl", markup=False)
        c = report.counts
        console.print(f"judged by eye: {c['judged']} pairs, {c['dropped']} dropped, {c['flipped']} flipped",
                      markup=False)
        return
    from styleprefs.review.server import serve

    serve(dataset, host, port, ready=lambda url: console.print(
        f"Reviewing {dataset}: open {url}  (d drop, f flip, k keep, arrows move; Ctrl-C to stop)",
        markup=False, highlight=False))


@app.command()
def push(
    dataset: Path = typer.Argument(..., help="Dataset folder written by `styleprefs build`."),
    repo_id: str = typer.Argument(..., help="Hub dataset repo, owner/name."),
    config_name: Optional[str] = typer.Option(None, help="Config (subset) name in the repo; default: the dataset's style."),
    license: Optional[str] = typer.Option(None, help="Hub license id for the card (e.g. cc-by-nc-4.0, openrail++, other). No default."),
    private: bool = typer.Option(False, help="Create the repo private (no effect if it exists)."),
    revision: Optional[str] = typer.Option(None, help="Branch to commit to (created if missing); default main."),
    default_config: Optional[str] = typer.Option(None, help="Config that clients passing no config name load; default: the first pushed."),
    token: Optional[str] = typer.Option(None, help="Hub token; default HF_TOKEN or the saved login. Never printed."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded where; needs no network."),
) -> None:
    """Upload a dataset's shards, manifest and card to a Hub dataset repo as one config."""
    from styleprefs.publish import format_plan, plan_push
    from styleprefs.publish import push as push_plan

    plan = plan_push(dataset, repo_id, config_name=config_name, license=license, private=private, revision=revision,
                     default_config=default_config)
    if dry_run:
        for line in format_plan(plan):
            console.print(line, markup=False, highlight=False)
        return
    console.print(f"pushed config {plan.config_name}: {push_plan(plan, token=token)}", markup=False)


@app.command()
def cache(
    dataset: Path = typer.Argument(..., help="Dataset folder (or Pick-a-Pic-schema Parquet) to cache."),
    model: str = typer.Option("stable-diffusion-v1-5/stable-diffusion-v1-5", help="SD1.5/SDXL id or path; 'tiny' or 'tiny-sdxl' offline."),
    resolution: int = typer.Option(512, help="Training resolution (center crop)."),
    clip_model: str = typer.Option("openai/clip-vit-large-patch14", help="CLIP for RPO's embeddings ('tiny' offline, 'none' to skip)."),
    ties: str = typer.Option("drop", help="Tie rows (label 0.5): drop or random."),
    seed: int = typer.Option(0, help="Seed of the random tie policy."),
    batch_size: int = typer.Option(8, help="Pairs per encoder call."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:1, ..."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16 for the encoders."),
    vae: Optional[str] = typer.Option(None, help="Encode with this VAE instead of the model's (folder, Hub id, "
                                      "e.g. madebyollin/sdxl-vae-fp16-fix); give train the same --vae."),
) -> None:
    """Compute VAE latents, text and CLIP embeddings once per dataset, model and resolution."""
    import torch

    from styleprefs.trainer.cache import build_cache

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if batch_size < 1:
        raise StyleprefsError(f"--batch-size must be at least 1, got {batch_size}")
    if dtype not in dtypes:
        raise StyleprefsError(f"--dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    folder = build_cache(dataset, model, resolution, clip_model=None if clip_model == "none" else clip_model,
                         batch_size=batch_size, device=device, dtype=dtypes[dtype], ties=ties, seed=seed, vae=vae)
    console.print(f"cache ready: {folder}", markup=False)


app.command()(train)
app.add_typer(eval_app, name="eval")
app.add_typer(experiment_app, name="experiment")


@app.command()
def quickstart(
    out: Path = typer.Option(Path("out/quickstart"), help="Folder for the dataset, runs, generations and report."),
    style: str = typer.Option("winter", help="Built-in style or style .yaml."),
    inception: Optional[str] = typer.Option(None, help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth); default: mini FID (mini-clip features), labelled as such."),
    model: str = typer.Option("mini", help="The trained base model: mini (SD1.5 layout) or mini-flow (SD3 layout, rectified flow)."),
) -> None:
    """The whole pipeline offline on the trained mini models: build, filter, cache, SFT, RPO, generate, evaluate, report."""
    from styleprefs.quickstart import quickstart as run

    run(out, model=model, style=style, inception=inception, console=console)


def _print_counts(counts: dict, title: str) -> None:
    table = Table(title=title)
    for key in counts:
        table.add_column(key.replace("_", " "))
    table.add_row(*(str(v) for v in counts.values()))
    console.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``styleprefs``: see :func:`run`."""
    run(app, argv)


def run(typer_app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run ``typer_app``: user errors become one ``error:`` line on stderr and exit code 2.

    Anything that is not a user error (a bug) keeps its traceback; ``--debug`` or STYLEPREFS_DEBUG=1
    shows the traceback of user errors too. Every command line of the project goes through here.
    """
    global _debug
    _debug = os.environ.get("STYLEPREFS_DEBUG", "") not in ("", "0")
    try:
        code = typer_app(args=argv, standalone_mode=False)  # returns Ctrl-C as 130, typer.Exit as its code
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except Exception as exc:
        error = _usage_error(exc) or as_user_error(exc)
        if error is None or _debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        sys.exit(2)
    if code == 130:
        print(f"interrupted; to resume, run: {resume_command(sys.argv[1:] if argv is None else argv)}", file=sys.stderr)
    if isinstance(code, int) and code:
        sys.exit(code)


def resume_command(argv: list[str]) -> str:
    """The command line that resumes an interrupted ``styleprefs ARGV``: the same one; ``train`` with ``--resume``
    (without it, train refuses a folder that holds a run)."""
    args = [arg for arg in argv if arg != "--no-resume"]
    command = next((arg for arg in args if not arg.startswith("-")), None)
    if command == "train" and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["styleprefs", *args])


def _usage_error(exc: Exception) -> StyleprefsError | None:
    """A typer/click usage error (bad option, missing argument, bad value) as one line."""
    if not isinstance(exc, typer.TyperException):
        return None
    ctx = getattr(exc, "ctx", None)
    where = f"`{ctx.command_path} --help`" if ctx is not None else "--help"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)  # click's errors have one
    return StyleprefsError(f"{message} (see {where})")
