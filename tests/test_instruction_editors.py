"""The instruction editors `kontext` and `qwen-image-edit` on their tiny models: the tiny models' formats, equality
with the diffusers pipelines called directly, `styleprefs build` with the CLIP gate (one and two processes), the
dataset card's licence, and `--improver kontext:tiny` in the iterative stage."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from styleprefs.cli.app import main
from styleprefs.editors import improver_editor, load_editor
from styleprefs.editors.instruction import KONTEXT, _load_pipeline, condition_area, kontext_size, qwen_size
from styleprefs.errors import StyleprefsError
from styleprefs.resolve import resolve_model
from styleprefs.style import load_style
from styleprefs.tiny import BUILDERS, ensure_tiny
from styleprefs.trainer import loop
from styleprefs.trainer.config import TrainConfig

# An invalid step (e.g. one step with Qwen-Image's terminal shift) yields NaN latents, cast silently to black pixels.
pytestmark = pytest.mark.filterwarnings("error:invalid value encountered:RuntimeWarning")
WINTER = "Turn this into a snowy winter scene; keep the composition, the objects and the camera"
OPEN_GATE = ("--clip-model", "tiny", "--min-direction", "-1", "--min-image", "-1", "--min-text", "-1")


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


@pytest.fixture(scope="module")
def kontext() -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(ensure_tiny("tiny-kontext"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def qwen() -> DiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(ensure_tiny("tiny-qwen-image-edit"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_tiny_models_have_the_real_layouts(kontext, qwen) -> None:
    assert type(kontext).__name__ == "FluxKontextPipeline" and kontext.transformer.config.guidance_embeds
    assert kontext.vae.config.latent_channels == 16 and kontext.tokenizer_2.eos_token == "</s>"
    assert type(qwen).__name__ == "QwenImageEditPlusPipeline" and type(qwen.vae).__name__ == "AutoencoderKLQwenImage"
    config, tokenizer = qwen.text_encoder.config, qwen.tokenizer
    for field, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                         ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        assert getattr(config, field) == tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
    assert qwen.processor.image_token_id == config.image_token_id
    assert qwen.processor.video_processor is not None
    model_index = json.loads((ensure_tiny("tiny-qwen-image-edit") / "model_index.json").read_text())
    assert model_index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert model_index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]


@pytest.mark.parametrize("name", ["tiny-kontext", "tiny-qwen-image-edit"])
def test_tiny_builds_are_the_same_bytes_every_time(name, tmp_path) -> None:
    first, again = ensure_tiny(name), BUILDERS[name](tmp_path / "again")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_kontext_sizes_follow_the_preferred_resolutions() -> None:
    for width, height in PREFERRED_KONTEXT_RESOLUTIONS:  # a preferred resolution is its own working size
        assert kontext_size((width, height)) == (width, height)
        small = kontext_size((width, height), 64 * 64)
        assert small[0] % 16 == small[1] % 16 == 0 and small[0] * small[1] <= 64 * 64
        assert (small[0] >= small[1]) == (width >= height)
    assert kontext_size((640, 480)) == (1184, 880)  # 4:3 -> the closest preferred aspect ratio
    assert qwen_size((640, 480), 1024 * 1024) == (1184, 896) and qwen_size((500, 500), 64 * 64) == (64, 64)


def test_kontext_editor_equals_the_pipeline_called_directly(kontext) -> None:
    images = [picture(0, (64, 48)), picture(1, (64, 48))]  # already the working size: no resize either way
    editor = load_editor("kontext", load_style("winter"), model="tiny", device="cpu", steps=2)
    assert editor.params() | {"scheduler": None} == {
        "instruction": WINTER, "num_inference_steps": 2, "guidance_scale": 2.5, "pipeline": "FluxKontextPipeline",
        "resolution": "kontext preferred resolution", "max_area": 64 * 64, "scheduler": None, "dtype": "fp32"}
    got = editor.edit(images, ["a cat", "a dog"], [7, 8])
    kontext.vae.enable_slicing()  # as the editors decode (styleprefs.gpu.set_vae_memory): one image at a time
    want = kontext(image=images, prompt=[WINTER] * 2, guidance_scale=2.5, num_inference_steps=2, width=64, height=48,
                   max_area=64 * 48, _auto_resize=False,
                   generator=[torch.Generator().manual_seed(s) for s in (7, 8)]).images
    for a, b in zip(pixels(got), pixels(want)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(*pixels(got))  # each image its own seed and input


def test_qwen_editor_equals_the_pipeline_called_directly(qwen) -> None:
    """The model-card settings, one image per call; the pipeline called at the same (small) condition area, which
    the next test shows reaching the VAE. (At the pipeline's own 1 MP the editor redirects nothing, but a tiny run
    there takes most of a minute.)"""
    image = picture(2, (80, 60))
    editor = load_editor("qwen-image-edit", load_style("winter"), model="tiny", device="cpu", steps=2)
    assert {k: editor.params()[k] for k in ("true_cfg_scale", "negative_prompt", "num_inference_steps", "max_area")} \
        == {"true_cfg_scale": 4.0, "negative_prompt": " ", "num_inference_steps": 2, "max_area": 64 * 64}
    got = editor.edit([image], ["a cat"], [5])[0]
    qwen.vae.enable_slicing()  # as the editors decode (styleprefs.gpu.set_vae_memory)
    with condition_area(qwen, 64 * 64):
        want = qwen(image=image.resize((64, 64), Image.LANCZOS), prompt=WINTER, negative_prompt=" ",
                    true_cfg_scale=4.0, num_inference_steps=2, width=64, height=64,
                    generator=torch.Generator().manual_seed(5)).images[0]
    assert np.asarray(want).std() > 0
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want.resize(image.size, Image.LANCZOS)))


@pytest.mark.parametrize("offload, hook", [("model", "_hf_hook"), ("group", "_diffusers_hook")])
def test_cpu_offload_does_not_change_the_edits(offload, hook) -> None:
    """The offloaded pipeline (diffusers' hooks; on CPU here, where the editor itself refuses offload as useless)
    edits exactly as the plain one."""
    editor = load_editor("kontext", load_style("winter"), model="tiny", device="cpu", steps=2)
    images = [picture(6, (64, 48))]
    plain = editor.edit(images, ["a"], [3])
    offloaded = _load_pipeline(KONTEXT, resolve_model("tiny", what="Kontext", tiny="tiny-kontext"),
                               torch.device("cpu"), torch.float32, offload, False, False)
    assert any(hasattr(module, hook) for module in offloaded.transformer.modules())  # offload hooks are on
    editor._pipe = offloaded
    np.testing.assert_array_equal(np.asarray(editor.edit(images, ["a"], [3])[0]), np.asarray(plain[0]))


def test_a_qwen_image_edit_folder_takes_its_own_card_settings(qwen, tmp_path) -> None:
    """The first release's class (``QwenImageEditPipeline``, 50 steps on its card) through the same editor."""
    from diffusers import QwenImageEditPipeline

    folder = tmp_path / "qwen-image-edit"
    QwenImageEditPipeline(**qwen.components).save_pretrained(folder)
    editor = load_editor("qwen-image-edit", load_style("winter"), model=str(folder), device="cpu", max_area=64 * 64)
    assert editor.params()["pipeline"] == "QwenImageEditPipeline" and editor.steps == 50
    editor = load_editor("qwen-image-edit", load_style("winter"), model=str(folder), device="cpu", steps=2,
                         max_area=64 * 64)
    edits = editor.edit([picture(4, (80, 60)), picture(5, (60, 80))], ["a", "b"], [1, 2])
    assert [e.size for e in edits] == [(80, 60), (60, 80)]


def test_the_condition_area_reaches_the_vae_and_is_restored(qwen, monkeypatch) -> None:
    seen = []
    encode = qwen.vae.encode
    monkeypatch.setattr(qwen.vae, "encode", lambda x, *a, **k: seen.append(tuple(x.shape[-2:])) or encode(x, *a, **k))
    module = sys.modules[type(qwen).__module__]
    original = module.calculate_dimensions
    with condition_area(qwen, 64 * 64):
        qwen(image=picture(3, (80, 60)), prompt=WINTER, num_inference_steps=2, width=64, height=64)
    assert seen == [(64, 64)] and module.calculate_dimensions is original
    with condition_area(qwen, 1024 * 1024):  # the pipeline's own area: nothing redirected
        assert module.calculate_dimensions is original


def build(out: Path, *args: str) -> list[dict]:
    with pytest.raises(SystemExit) as exc:
        main(["build", "--source", "sample", "--style", "winter", "--editor-model", "tiny", "--editor-steps", "2",
              "--device", "cpu", "--out", str(out), *args])
        raise SystemExit(0)
    assert exc.value.code == 0
    return pq.read_table(out / "data").to_pylist()


@pytest.mark.parametrize("editor, model, licence", [("kontext", "tiny-kontext", "FLUX.1 [dev] Non-Commercial License"),
                                                    ("qwen-image-edit", "tiny-qwen-image-edit", "Apache License 2.0")])
def test_build_with_the_gate_writes_edited_rows(tmp_path, editor, model, licence) -> None:
    rows = build(tmp_path / editor, "--editor", editor, "--num-pairs", "2", "--batch-size", "2", *OPEN_GATE)
    assert len(rows) == 2
    for row in rows:
        edit, original = (0, 1) if row["label_0"] == 1.0 else (1, 0)
        assert row["editor"] == editor and row[f"model_{edit}"] == model and row[f"model_{original}"] != model
        before, after = (Image.open(io.BytesIO(row[f"jpg_{i}"])) for i in (original, edit))
        assert before.size == after.size and np.abs(np.asarray(after, float) - np.asarray(before, float)).mean() > 5
        assert all(row[k] is not None for k in ("clip_direction", "clip_image", "clip_text_edit",
                                                "clip_text_original"))
        assert json.loads(row["edit_params"])["instruction"] == WINTER
    card = (tmp_path / editor / "README.md").read_text()
    assert licence in card and f"`{editor}`, model `{model}`" in card


def test_two_process_kontext_build_equals_one_process_build(tmp_path) -> None:
    args = ["--source", "sample", "--style", "winter", "--editor", "kontext", "--editor-model", "tiny",
            "--editor-steps", "2", "--device", "cpu", "--num-pairs", "4", "--batch-size", "2", *OPEN_GATE]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                "styleprefs.cli", "build"]
    subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], check=True, capture_output=True)
    with pytest.raises(SystemExit) as exc:  # the one-process build in this process
        main(["build", *args, "--out", str(tmp_path / "one")])
        raise SystemExit(0)
    assert exc.value.code == 0

    def files(out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "README.md"}

    assert files(tmp_path / "two") == files(tmp_path / "one") and len(files(tmp_path / "one")) >= 4


def test_a_model_of_another_pipeline_class_is_a_one_line_error(tmp_path, capsys) -> None:
    """(The instruction editors' bad options are in tests/test_battery.py.)"""
    with pytest.raises(SystemExit) as exc:
        main(["build", "--source", "sample", "--device", "cpu", "--out", str(tmp_path / "x"), "--editor", "kontext",
              "--editor-model", str(ensure_tiny("tiny-flux"))])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "is a FluxPipeline, not a FluxKontextPipeline" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x" / "data").exists()


def test_improver_names() -> None:
    assert improver_editor("kontext") == ("kontext", None)
    assert improver_editor("kontext:tiny") == ("kontext", "tiny")
    assert improver_editor("qwen-image-edit:/models/qie") == ("qwen-image-edit", "/models/qie")
    assert improver_editor("runs/improver") == ("improve", "runs/improver")
    with pytest.raises(StyleprefsError, match="needs --improver"):
        TrainConfig(stage="iterative", data="d", out="o")


def test_iterative_stage_with_kontext_as_the_improver(tmp_path) -> None:
    data = tmp_path / "data"
    main_ok = ["build", "--source", "sample", "--num-pairs", "4", "--shard-size", "4", "--out", str(data)]
    with pytest.raises(SystemExit) as exc:
        main(main_ok)
        raise SystemExit(0)
    assert exc.value.code == 0
    cfg = TrainConfig(stage="iterative", data=str(data), out=str(tmp_path / "run"), model="tiny", resolution=64,
                      batch_size=2, gradient_accumulation_steps=1, max_steps=1, warmup_steps=0, learning_rate=1e-4,
                      report_to="none", checkpoint_every=0, improver="kontext:tiny", iterations=2, online_pairs=2,
                      sample_steps=2)
    loop.train(cfg, show_progress=False)
    summary = json.loads((tmp_path / "run" / "iterations.json").read_text())["iterations"]
    assert [s["iteration"] for s in summary] == [1, 2]
    for k in (1, 2):
        manifest = json.loads((tmp_path / "run" / f"iter-{k}" / "data" / "manifest.json").read_text())
        editor = manifest["config"]["editor"]
        assert editor["name"] == "kontext" and editor["model"] == "tiny-kontext"
        assert editor["params"]["instruction"] == WINTER and manifest["counts"]["kept"] == 2
        assert (tmp_path / "run" / f"iter-{k}" / "train" / "model_index.json").is_file()
