"""GPU settings (styleprefs.gpu): each flag parses, reaches its place, and is safe on CPU.

torch.compile is replaced by a recorder that returns the module uncompiled (compiling takes minutes on one core).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from styleprefs import gpu
from styleprefs.build import BuildConfig, build_dataset
from styleprefs.cli.app import main
from styleprefs.editors import load_editor
from styleprefs.editors.classic import ClassicEditor
from styleprefs.editors.loading import clear_cache
from styleprefs.errors import StyleprefsError
from styleprefs.eval.generate import generate
from styleprefs.resolve import locate
from styleprefs.style import load_style
from styleprefs.trainer import loop
from styleprefs.trainer.cache import cache_key
from styleprefs.trainer.config import TrainConfig, config_options
from styleprefs.trainer.models import load_components


@pytest.fixture
def compiled(monkeypatch) -> list[torch.nn.Module]:
    """The modules handed to torch.compile, which returns them as they are."""
    calls: list[torch.nn.Module] = []

    def record(module, *args, **kwargs):
        calls.append(module)
        return module

    monkeypatch.setattr(torch, "compile", record)
    return calls


@pytest.fixture
def tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dataset(BuildConfig(source="sample", num_pairs=4, shard_size=4),
                         tmp_path_factory.mktemp("gpu") / "data", show_progress=False).out


def _channels_last(module: torch.nn.Module) -> bool:
    return module.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_train_flags_and_defaults() -> None:
    defaults = {o.flag: o.default for o in config_options()}
    assert defaults["--allow-tf32"] is True and defaults["--channels-last"] is False
    assert defaults["--compile"] is False and defaults["--vae"] is None


def test_train_flags_reach_the_config(monkeypatch, tmp_path: Path) -> None:
    seen: list[TrainConfig] = []
    monkeypatch.setattr(loop, "train", lambda cfg: seen.append(cfg) or tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--stage", "sft", "--data", "d", "--out", str(tmp_path), "--compile", "--channels-last",
              "--no-allow-tf32", "--vae", "madebyollin/sdxl-vae-fp16-fix"])
        raise SystemExit(0)
    assert exc.value.code == 0
    cfg = seen[0]
    assert (cfg.compile, cfg.channels_last, cfg.allow_tf32, cfg.vae) == (True, True, False,
                                                                        "madebyollin/sdxl-vae-fp16-fix")


def test_training_compiles_both_unets_in_channels_last_with_the_vae_swapped(dataset: Path, tmp_path: Path, compiled,
                                                                           tf32) -> None:
    vae_folder = Path(locate("tiny").location) / "vae"
    cfg = TrainConfig(stage="dpo", data=str(dataset), out=str(tmp_path / "run"), model="tiny", clip_model="tiny",
                      resolution=64, batch_size=2, gradient_accumulation_steps=1, max_steps=1, learning_rate=1e-4,
                      scale_lr=False, warmup_steps=0, checkpoint_every=0, report_to="none", compile=True,
                      channels_last=True, allow_tf32=False, vae=str(vae_folder))
    loop.train(cfg, show_progress=False)
    assert len(compiled) == 2 and all(_channels_last(m) for m in compiled)  # policy and reference
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    key = cache_key(dataset, "tiny", 64, vae=str(vae_folder))
    assert key["vae"] and "vae" not in cache_key(dataset, "tiny", 64)
    assert (tmp_path / "run" / "model_index.json").is_file()


def test_vae_loads_from_a_vae_folder_a_pipeline_or_a_tiny_name(tmp_path: Path) -> None:
    pipeline = Path(locate("tiny").location)
    for source in ("tiny", str(pipeline), str(pipeline / "vae")):
        assert isinstance(gpu.load_vae(source), AutoencoderKL)
    swapped = load_components("tiny", include_denoiser=False, vae=str(pipeline / "vae")).vae
    assert isinstance(swapped, AutoencoderKL) and not swapped.training
    with pytest.raises(StyleprefsError, match="no config.json"):
        gpu.load_vae(str(tmp_path))
    with pytest.raises(StyleprefsError, match="neither an existing folder nor a Hub id"):
        gpu.load_vae("./missing/vae")


def test_generate_compiles_and_swaps_the_vae(tmp_path: Path, compiled) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    settings = generate("tiny", str(prompts), tmp_path / "gen", images_per_prompt=1, steps=1, device="cpu",
                        show_progress=False, vae="tiny", compile=True, channels_last=True)
    assert settings["vae"] == "tiny" and settings["done"] == 1
    assert len(compiled) == 1 and _channels_last(compiled[0])


def test_neural_editors_compile_and_slice_the_vae(compiled) -> None:
    editor = load_editor("instruct-pix2pix", load_style("winter"), model="tiny", device="cpu", steps=1,
                         compile=True, channels_last=True)
    try:
        editor.edit([Image.new("RGB", (64, 64), "white")], ["a cabin"], [0])
        assert len(compiled) == 1 and _channels_last(compiled[0])
        assert editor._pipe.vae.use_slicing and not editor._pipe.vae.use_tiling
        assert "compile" not in editor.params()
    finally:
        clear_cache()


def test_vae_tiling_only_for_large_images() -> None:
    vae = gpu.load_vae("tiny")
    gpu.set_vae_memory(vae, (gpu.TILING_MIN_SIDE * 2, 512))
    assert vae.use_tiling and vae.use_slicing
    gpu.set_vae_memory(vae, (512, 512))
    assert not vae.use_tiling


def test_batch_size_auto(monkeypatch) -> None:
    assert gpu.parse_batch_size("auto") == "auto" and gpu.parse_batch_size("4") == 4
    for bad in ("0", "x", "-1"):
        with pytest.raises(StyleprefsError, match="--batch-size"):
            gpu.parse_batch_size(bad)
    style = load_style("winter")
    assert gpu.editor_batch_size("auto", ClassicEditor(style.classic.filter, style.classic.params)) == gpu.AUTO_BATCH_CPU
    assert gpu.editor_batch_size(3, None) == 3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (24 * 2**30, 80 * 2**30))
    assert gpu.auto_batch_size(torch.device("cuda"), 512) == int(24 * gpu.FREE_MEMORY_SHARE / gpu.GIB_PER_IMAGE_512)
    assert gpu.auto_batch_size(torch.device("cuda"), 1024) == int(24 * gpu.FREE_MEMORY_SHARE / gpu.GIB_PER_IMAGE_512 / 4)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2**20, 80 * 2**30))
    assert gpu.auto_batch_size(torch.device("cuda"), 512) == 1


def test_build_cli_takes_batch_size_auto(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--out", str(tmp_path / "a"), "--source", "sample", "--num-pairs", "2", "--batch-size", "auto"])
        raise SystemExit(0)
    assert exc.value.code == 0 and (tmp_path / "a" / "manifest.json").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["build", "--out", str(tmp_path / "b"), "--source", "sample", "--batch-size", "many"])
    assert exc.value.code == 2 and "--batch-size must be a positive integer or auto" in capsys.readouterr().err
