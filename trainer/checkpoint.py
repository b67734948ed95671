"""Resumable checkpoints (``out/checkpoints/step-XXXXXX/``) and the final diffusers pipeline.

A checkpoint is accelerate's ``save_state`` (model, optimizer, registered LR scheduler, grad
scaler, RNG states) plus ``trainer_state.json`` (step, weights hash, resolved config, skipped-step
count, and the inputs as :func:`run_inputs` finds them, so a resume compares places and contents, not
spellings), and also a diffusers pipeline folder (:func:`write_pipeline`): the trained ``unet/``, for LoRA
runs ``pytorch_lora_weights.safetensors``, and the base's other components as hard links. So
``--init``, ``--model`` of ``eval generate`` and ``eval implicit-acc`` take a checkpoint as they take
a finished run. It is written to a hidden ``.step-XXXXXX.partial`` folder and renamed when complete,
so a crash never leaves a checkpoint that looks finished.
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

import torch
from accelerate import Accelerator
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

from styleprefs.errors import StyleprefsError
from styleprefs.io import read_json, sha256_file, write_json
from styleprefs.trainer.config import RESUMABLE_CHANGES, STATE_FILE, TrainConfig
from styleprefs.trainer.families import Family
from styleprefs.trainer.models import resolve_model

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
IP2P_PIPELINE = "StableDiffusionInstructPix2PixPipeline"
# Pipeline parts validation grids do without (SD1.5's 1.2 GB safety checker); saved pipelines keep them.
_DROPPED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
_INPUT_FIELDS = ("data", "init", "ref", "model")
_STATE_KEYS = frozenset({"step", "nan_steps", "weights_hash", "config"})


def checkpoint_dir(out: Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS / f"step-{step:06d}"


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator: Accelerator, cfg: TrainConfig, step: int, nan_steps: int, model: torch.nn.Module,
                    family: Family) -> Path:
    """Save the training state after ``step`` optimizer steps, and ``model`` (the unwrapped denoiser) with the base
    as a pipeline; call on every process."""
    final = checkpoint_dir(Path(cfg.out), step)
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json({"step": step, "nan_steps": nan_steps, "weights_hash": cfg.weights_hash(),
                    "config": dataclasses.asdict(cfg.resolved()), "inputs": run_inputs(cfg.resolved())},
                   partial / STATE_FILE)
        write_pipeline(cfg.resolved().model, model, partial, family)
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
    state = read_json(path / STATE_FILE)
    if not _STATE_KEYS <= state.keys():
        raise StyleprefsError(f"{path / STATE_FILE} cannot be read: it lacks {', '.join(sorted(_STATE_KEYS - state.keys()))}"
                              f"; delete {path} to resume from an earlier checkpoint")
    changed = [] if state["weights_hash"] == cfg.weights_hash() else changed_options(cfg, state)
    if changed:
        raise StyleprefsError(f"cannot resume from {path}: it was trained with other options: {', '.join(changed)}; "
                              f"use the same options or a new --out")
    accelerator.load_state(str(path))
    return state


def run_inputs(cfg: TrainConfig) -> dict[str, str | None]:
    """The inputs as a resume compares them: local paths resolved (Hub ids as given) and the sha256 of the
    dataset's manifest.json, so "./d" and "d", or a dataset moved elsewhere, count as the same."""
    manifest = Path(cfg.data) / "manifest.json"
    return {**{k: _resolved(getattr(cfg, k)) for k in _INPUT_FIELDS},
            "data_manifest": sha256_file(manifest) if manifest.is_file() else None}


def changed_options(cfg: TrainConfig, state: dict) -> list[str]:
    """The options that differ from the checkpoint's, as "name (old -> new)": not RESUMABLE_CHANGES, not --out
    (the run folder may move), and not an input that :func:`run_inputs` finds the same."""
    now, recorded = dataclasses.asdict(cfg.resolved()), state["config"]
    inputs, recorded_inputs = run_inputs(cfg.resolved()), state.get("inputs", {})
    return [f"{k} ({recorded.get(k)!r} -> {now[k]!r})" for k in now
            if k not in RESUMABLE_CHANGES and k != "out" and json.loads(json.dumps(now[k])) != recorded.get(k)
            and not _same_input(k, inputs, recorded_inputs)]


def _same_input(field: str, now: dict[str, str | None], recorded: dict[str, str | None]) -> bool:
    if field not in _INPUT_FIELDS or field not in recorded:
        return False
    same_manifest = field == "data" and now["data_manifest"] is not None \
        and now["data_manifest"] == recorded.get("data_manifest")
    return now[field] == recorded[field] or same_manifest


def _resolved(source: str | None) -> str | None:
    path = Path(source).expanduser() if source else None
    return str(path.resolve()) if path is not None and path.exists() else source


def base_pipeline(model_path: str, **modules: Any) -> DiffusionPipeline:
    """``model_path``'s pipeline with ``modules`` (e.g. the trained UNet) in place of its own, without the
    safety checker and feature extractor; components not given are loaded as stored in the base."""
    index = DiffusionPipeline.load_config(model_path)
    dropped: dict[str, Any] = {name: None for name in _DROPPED_COMPONENTS if name in index}
    if "requires_safety_checker" in index:
        dropped["requires_safety_checker"] = False
    return DiffusionPipeline.from_pretrained(model_path, **dropped, **modules)


def save_pipeline(base: str, model: torch.nn.Module, out: Path, family: Family) -> list[str]:
    """Write :func:`write_pipeline` into ``out``; returns the components left out.

    Files are written beside ``out``'s other contents and moved in with ``model_index.json`` last,
    so a half-written pipeline never loads.
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pipeline-", dir=out))
    try:
        missing = write_pipeline(base, model, tmp, family)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return missing


def write_pipeline(base: str, model: torch.nn.Module, out: Path, family: Family) -> list[str]:
    """Make ``out`` a diffusers pipeline folder of ``base`` with ``model`` (LoRA adapters merged) as its family's
    denoiser folder (``unet/`` or ``transformer/``).

    A UNet that takes an image latent beside the noise (``--stage improve``) makes it an InstructPix2Pix
    pipeline folder (``model_index.json`` names ``StableDiffusionInstructPix2PixPipeline``).

    A LoRA ``model`` also gets its adapters as ``pytorch_lora_weights.safetensors``, loadable by the family's
    pipeline's ``load_lora_weights``. ``model`` itself is not changed. Every other component of ``base`` (safety checker
    and feature extractor included) is hard-linked, or copied across file systems. Components that ``base``
    lists but does not hold locally (a Hub model's safety checker never downloaded) are set to null in
    ``model_index.json``; returns their names.
    """
    root = _local_folder(base)
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    missing = []
    for name, value in index.items():
        if name == family.denoiser_folder or not (isinstance(value, list) and value and value[0]):
            continue
        if (root / name).is_dir():
            _link_tree(root / name, out / name)
        else:
            index[name] = [None, None]
            missing.append(name)
    if family.denoiser_folder == "unet" and model.config.in_channels == 2 * model.config.out_channels:
        index["_class_name"] = IP2P_PIPELINE  # noise + image latent: an improvement model
    if "safety_checker" in missing and "requires_safety_checker" in index:
        index["requires_safety_checker"] = False
    folder = out / family.denoiser_folder
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    save_file({k: v.detach().cpu().contiguous() for k, v in merged_state_dict(model).items()},
              folder / "diffusion_pytorch_model.safetensors")
    if getattr(model, "_hf_peft_config_loaded", False):
        _save_lora(model, out, family)
    write_json(index, out / "model_index.json")
    return missing


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights with its active LoRA adapters merged in (as ``fuse_lora`` would), under the plain
    model's names; ``model`` is left as it is."""
    from peft.tuners.lora import LoraLayer

    state = {k: v for k, v in model.state_dict().items() if ".base_layer." not in k and ".lora_" not in k}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            with torch.no_grad():
                state[f"{name}.weight"] = layer.weight + sum(module.get_delta_weight(a) for a in module.active_adapters)
            if layer.bias is not None:
                state[f"{name}.bias"] = layer.bias
    return state


def _save_lora(model: torch.nn.Module, out: Path, family: Family) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    family.save_lora(convert_state_dict_to_diffusers(get_peft_model_state_dict(model)), out, LORA_WEIGHTS)


def _local_folder(base: str) -> Path:
    """``base`` as a local pipeline folder (a Hub id: its snapshot in the Hugging Face cache)."""
    location = resolve_model(base)
    if Path(location).is_dir():
        return Path(location)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(location, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise StyleprefsError(f"cannot find {base} in the Hugging Face cache: {str(exc).splitlines()[0]}") from None


def _link_tree(source: Path, target: Path) -> None:
    for file in source.rglob("*"):
        if not file.is_file():
            continue
        dest = target / file.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(os.path.realpath(file), dest)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(file, dest)
