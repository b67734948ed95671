"""``python -m styleprefs.mini train --out DIR``: train the mini models (mini-clip, mini, mini-flow); ``pack`` ships them."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from styleprefs.errors import StyleprefsError
from styleprefs.lock import folder_lock
from styleprefs.mini.train import MiniConfig, train_mini

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help=__doc__)


@app.command()
def train(out: Path = typer.Option(..., help="folder for mini-clip/, mini/, mini-flow/ and training.json"),
          seed: int = typer.Option(0, help="every draw of data and training comes from it"),
          quick: bool = typer.Option(False, help="a few steps of each model, to try the script"),
          threads: int = typer.Option(2, help="CPU threads; the same seed and thread count give the same weights")
          ) -> None:
    """Train mini-clip, then mini's VAE and UNet, then mini-flow's transformer, from scratch on the sample scenes
    (a rerun resumes)."""
    if threads < 1:
        raise StyleprefsError(f"--threads must be at least 1, got {threads}")
    cfg = MiniConfig.quick(seed) if quick else MiniConfig(seed=seed)
    cfg.threads = threads
    with folder_lock(out):  # a second run on the same folder gets a one-line error, not a race on its stages
        record = train_mini(cfg, out, command="python -m styleprefs.mini " + shlex.join(sys.argv[1:]))
    typer.echo(f"trained in {record['total_seconds'] / 60:.1f} min: {out / 'mini'}, {out / 'mini-flow'}, "
               f"{out / 'mini-clip'}")


@app.command()
def pack(trained: Path = typer.Argument(..., help="a folder written by `train`")) -> None:
    """Copy trained weights into the package (float16, with SHA256SUMS): what `mini`, `mini-flow` and `mini-clip`
    load."""
    from styleprefs.mini.ship import WEIGHTS, pack as pack_weights

    for line in pack_weights(trained):
        typer.echo(line)
    typer.echo(f"packed into {WEIGHTS}")


if __name__ == "__main__":
    from styleprefs.cli.app import run

    run(app)
