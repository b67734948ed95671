"""``styleprefs train``: its options are generated from ``TrainConfig`` so the two never drift apart."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Optional

import typer

from styleprefs.trainer.config import ConfigOption, TrainConfig, config_options


def _parameter(option: ConfigOption) -> inspect.Parameter:
    # Every default is None: an unset flag must not override the YAML file.
    if option.type is bool:
        decls, annotation = (f"{option.flag}/--no-{option.flag[2:]}",), Optional[bool]
    elif option.type == list[str]:
        decls, annotation = (option.flag,), Optional[List[str]]
    else:
        decls, annotation = (option.flag,), Optional[option.type]
    default = f" (default: {option.default})" if option.default not in (None, []) else ""
    choices = f" One of: {', '.join(option.choices)}." if option.choices else ""
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(None, *decls, help=f"{option.help}{choices}{default}",
                                                  show_default=False))


def train(config: Optional[Path] = None, **flags) -> None:
    """Fine-tune SD1.5/SDXL, --stage sft, dpo, rpo, orpo, orrpo, improve, iterative or spin; flags override --config.

    dpo Diffusion-DPO, rpo Diffusion-RPO, orpo/orrpo reference-free, improve an improvement model, spin SPIN-Diffusion."""
    from accelerate import PartialState
    from rich.console import Console

    from styleprefs.trainer.loop import train as run

    out = run(TrainConfig.from_yaml_and_overrides(config, flags))
    if PartialState().is_main_process:  # once, not once per process
        Console(soft_wrap=True).print(f"trained pipeline written to {out}", markup=False)


train.__signature__ = inspect.Signature(
    [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                       default=typer.Option(None, "--config", help="Run config YAML; flags win over it."))]
    + [_parameter(o) for o in config_options()]
)
