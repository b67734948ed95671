"""Resumable checkpoints (``out/checkpoints/step-XXXXXX/``) and the final diffusers pipeline.

A checkpoint is accelerate's ``save_state`` (model, optimizer, registered LR scheduler, grad
scaler, RNG states) plus ``trainer_state.json`` (step, weights hash, resolved config, skipped-step
count). It is written to a hidden ``.step-XXXXXX.partial`` folder and renamed when complete, so a
crash never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from diffusers import DiffusionPipeline, UNet2DConditionModel

from styleprefs.errors import StyleprefsError
from styleprefs.io import write_json
from styleprefs.trainer.config import RESUMABLE_CHANGES, TrainConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
# Pipeline parts a training run does not carry over from the base (SD1.5's 1.2 GB safety checker).
_DROPPED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator: Accelerator, cfg: TrainConfig, step: int, nan_steps: int) -> Path:
    """Save the training state after ``step`` optimizer steps; call on every process."""
    final = checkpoint_dir(Path(cfg.out), step)
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json({"step": step, "nan_steps": nan_steps, "weights_hash": cfg.weights_hash(),
                    "config": dataclasses.asdict(cfg.resolved())}, partial / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        prune_checkpoints(Path(cfg.out), cfg.checkpoints_total_limit)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(out: Path, limit: int | None) -> None:
    """Delete all but the newest ``limit`` checkpoints (None keeps all)."""
    if limit is None:
        return
    for old in list_checkpoints(out)[:-limit]:
        shutil.rmtree(old)


def load_checkpoint(accelerator: Accelerator, cfg: TrainConfig, path: Path) -> dict:
    """Restore the state saved at ``path`` after checking it was trained with ``cfg``; returns trainer_state.json."""
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state["weights_hash"] != cfg.weights_hash():
        now = dataclasses.asdict(cfg.resolved())
        changed = [f"{k} ({state['config'].get(k)!r} -> {now[k]!r})" for k in now
                   if k not in RESUMABLE_CHANGES and json.loads(json.dumps(now[k])) != state["config"].get(k)]
        raise StyleprefsError(f"cannot resume from {path}: it was trained with other options: {', '.join(changed)}; "
                              f"use the same options or a new --out")
    accelerator.load_state(str(path))
    return state


def base_pipeline(model_path: str, **modules: Any) -> DiffusionPipeline:
    """``model_path``'s pipeline with ``modules`` (e.g. the trained UNet) in place of its own, without the
    safety checker and feature extractor; components not given are loaded as stored in the base."""
    index = DiffusionPipeline.load_config(model_path)
    dropped: dict[str, Any] = {name: None for name in _DROPPED_COMPONENTS if name in index}
    if "requires_safety_checker" in index:
        dropped["requires_safety_checker"] = False
    return DiffusionPipeline.from_pretrained(model_path, **dropped, **modules)


def save_pipeline(model_path: str, unet: UNet2DConditionModel, out: Path) -> None:
    """Write ``model_path``'s pipeline with ``unet`` into ``out`` (see :func:`base_pipeline`).

    Files are written beside ``out``'s other contents and moved in with ``model_index.json`` last,
    so a half-written pipeline never loads.
    """
    pipe = base_pipeline(model_path, unet=unet)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pipeline-", dir=out))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
