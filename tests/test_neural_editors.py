"""The instruct-pix2pix and prompt-diffusion editors, and the Prompt Diffusion model and pipeline, on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image, ImageDraw
from safetensors import safe_open
from transformers import CLIPConfig, CLIPImageProcessor

from styleprefs import tiny
from styleprefs.cli.app import main
from styleprefs.editors import EDITORS, EditResult, edit_with_flags, load_editor
from styleprefs.editors.loading import clear_cache, resize_for_model, working_resolution
from styleprefs.editors.prompt_diffusion import (
    PromptDiffusionControlNetModel,
    PromptDiffusionEditor,
    PromptDiffusionPipeline,
    edge_map,
)
from styleprefs.errors import StyleprefsError
from styleprefs.style import load_style

STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def fresh_pipelines():
    """Editors load once per process; drop them when this module is done."""
    yield
    clear_cache()


@pytest.fixture(autouse=True)
def tiny_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--model tiny` builds into this module's cache, not the user's."""
    monkeypatch.setattr(tiny, "default_cache_dir", lambda: cache)


@pytest.fixture(scope="module")
def ip2p_path(cache: Path) -> Path:
    return tiny.ensure_tiny("tiny-ip2p", cache)


@pytest.fixture(scope="module")
def pd_path(cache: Path) -> Path:
    return tiny.ensure_tiny("tiny-prompt-diffusion", cache)


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(40, 220, 3)))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, h // 2, w, h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    x, y = (int(v) for v in rng.integers(4, min(w, h) // 2, 2))
    draw.ellipse([x, y, x + w // 3, y + h // 3], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


IMAGES = [picture(0), picture(1, (80, 60)), picture(2), picture(3, (48, 96))]
CAPTIONS = ["a red ball", "a wide field", "a cat", "a tall tower"]
SEEDS = [11, 2**63 - 5, 7, 123456789]


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def assert_same(a: list[Image.Image], b: list[Image.Image], atol: int = 1) -> None:
    """Equal up to float noise (batch vs single calls differ in the last bits before rounding to uint8)."""
    for x, y in zip(a, b):
        assert x.size == y.size and np.abs(arr(x) - arr(y)).max() <= atol


def check_edits(result: EditResult, inputs: list[Image.Image]) -> None:
    assert len(result.images) == len(result.nsfw) == len(inputs)
    for edit, original in zip(result.images, inputs):
        assert edit.mode == "RGB" and edit.size == original.size
        assert np.abs(arr(edit) - arr(original)).mean() > 1.0


# ---------------------------------------------------------------------------------------------
# instruct-pix2pix


@pytest.fixture(scope="module")
def ip2p(ip2p_path: Path):
    return load_editor("instruct-pix2pix", load_style("van_gogh"), model=str(ip2p_path), device="cpu", steps=STEPS)


def test_instruct_pix2pix_end_to_end(ip2p) -> None:
    result = edit_with_flags(ip2p, IMAGES, CAPTIONS, SEEDS)
    check_edits(result, IMAGES)
    assert result.nsfw == [None] * len(IMAGES)  # the tiny model ships no safety checker
    assert ip2p.params() == {
        "instruction": "make it a Van Gogh painting", "num_inference_steps": STEPS, "guidance_scale": 7.5,
        "image_guidance_scale": 1.5, "resolution": 64, "scheduler": "EulerAncestralDiscreteScheduler",
        "dtype": "fp32"}
    assert_same(ip2p.edit(IMAGES, CAPTIONS, SEEDS), result.images, atol=0)  # edit() = edit_with_flags().images


def test_instruct_pix2pix_batch_equals_single_calls(ip2p) -> None:
    batch = ip2p.edit(IMAGES, CAPTIONS, SEEDS)
    singles = [ip2p.edit([img], [cap], [seed])[0] for img, cap, seed in zip(IMAGES, CAPTIONS, SEEDS)]
    assert_same(batch, singles)


def test_instruct_pix2pix_seed_decides_output(ip2p) -> None:
    a, b, c = ip2p.edit([IMAGES[0]] * 3, ["x"] * 3, [5, 5, 6])
    assert np.array_equal(arr(a), arr(b)) and not np.array_equal(arr(a), arr(c))


def test_tiny_name_and_load_once(ip2p) -> None:
    style = load_style("van_gogh")
    first = load_editor("instruct-pix2pix", style, model="tiny", device="cpu", steps=STEPS)
    second = load_editor("instruct-pix2pix", style, model="tiny-ip2p", device="cpu", resolution=128)
    assert first.model_id == second.model_id == "tiny-ip2p"
    assert first._pipe is second._pipe is ip2p._pipe  # one pipeline per process
    assert second.params()["resolution"] == 128 and second.params()["num_inference_steps"] == 100


def _add_safety_checker(src: Path, dst: Path, threshold: float) -> Path:
    """A copy of the tiny IP2P with a tiny safety checker: threshold -2 flags every image, +2 none."""
    shutil.copytree(src, dst)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 4},
        projection_dim=16)
    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(2.0)
    checker.save_pretrained(dst / "safety_checker")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        dst / "feature_extractor")
    index = json.loads((dst / "model_index.json").read_text())
    index.update(safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                 feature_extractor=["transformers", "CLIPImageProcessor"], requires_safety_checker=True)
    (dst / "model_index.json").write_text(json.dumps(index))
    return dst


def test_safety_flag_is_recorded_and_image_kept(ip2p, ip2p_path: Path, tmp_path: Path) -> None:
    style = load_style("van_gogh")
    flagging = load_editor("instruct-pix2pix", style, model=str(_add_safety_checker(ip2p_path, tmp_path / "a", -2.0)),
                           device="cpu", steps=STEPS)
    passing = load_editor("instruct-pix2pix", style, model=str(_add_safety_checker(ip2p_path, tmp_path / "b", 2.0)),
                          device="cpu", steps=STEPS)
    flagged = flagging.edit_with_flags(IMAGES[:2], CAPTIONS[:2], SEEDS[:2])
    clean = passing.edit_with_flags(IMAGES[:2], CAPTIONS[:2], SEEDS[:2])
    assert flagged.nsfw == [True, True] and clean.nsfw == [False, False]
    reference = ip2p.edit(IMAGES[:2], CAPTIONS[:2], SEEDS[:2])
    assert_same(flagged.images, reference, atol=0)  # not blackened: the same edit as without a checker
    assert_same(clean.images, reference, atol=0)


# ---------------------------------------------------------------------------------------------
# Prompt Diffusion: model and pipeline


def test_controlnet_round_trips(pd_path: Path, tmp_path: Path) -> None:
    model = PromptDiffusionControlNetModel.from_pretrained(pd_path, subfolder="controlnet")
    assert model.config.conditioning_channels == 6
    model.save_pretrained(tmp_path / "cn")
    config = json.loads((tmp_path / "cn" / "config.json").read_text())
    assert config["_class_name"] == "PromptDiffusionControlNetModel" and config["conditioning_channels"] == 6
    with safe_open(str(tmp_path / "cn" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert any(k.startswith("controlnet_query_cond_embedding.") for k in f.keys())
    again = PromptDiffusionControlNetModel.from_pretrained(tmp_path / "cn")
    before, after = model.state_dict(), again.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the query embedding really comes from the checkpoint, not a fresh init
    with safe_open(str(pd_path / "controlnet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        key = "controlnet_query_cond_embedding.conv_in.weight"
        assert torch.equal(f.get_tensor(key), after[key])


@pytest.fixture(scope="module")
def controlnet(pd_path: Path) -> PromptDiffusionControlNetModel:
    return PromptDiffusionControlNetModel.from_pretrained(pd_path, subfolder="controlnet").eval()


@pytest.fixture(scope="module")
def strong_controlnet(controlnet) -> PromptDiffusionControlNetModel:
    """The tiny ControlNet with both condition embeddings' output convs scaled by 50. The tiny model's
    random embeddings are ~80x weaker than its latent input (a trained ControlNet's are not), so the
    conditions move its outputs by only ~1e-5; scaled, their effect is plain to see."""
    model = PromptDiffusionControlNetModel.from_config(controlnet.config)
    model.load_state_dict(controlnet.state_dict())
    with torch.no_grad():
        for embedding in (model.controlnet_cond_embedding, model.controlnet_query_cond_embedding):
            embedding.conv_out.weight.mul_(50.0)
    return model.eval()


def _control(model, pair: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        down, mid = model(sample, torch.tensor(500), encoder_hidden_states=text, controlnet_cond=pair,
                          controlnet_query_cond=query, return_dict=False)
    return torch.cat([d.flatten() for d in down] + [mid.flatten()])


@pytest.mark.parametrize("scaled", [False, True])
def test_controlnet_output_depends_on_pair_and_query(controlnet, strong_controlnet, scaled: bool) -> None:
    model, threshold = (strong_controlnet, 1e-3) if scaled else (controlnet, 1e-6)
    g = torch.Generator().manual_seed(1)
    pair, query = torch.rand(1, 6, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    base = _control(model, pair, query)
    assert torch.equal(base, _control(model, pair.clone(), query.clone()))  # same input, same bits
    other_source = pair.clone()
    other_source[:, :3] = -other_source[:, :3]
    other_target = pair.clone()
    other_target[:, 3:] = -other_target[:, 3:]
    for changed in (_control(model, other_source, query), _control(model, other_target, query),
                    _control(model, pair, -query)):
        assert (changed - base).abs().max() > threshold


def test_controlnet_query_embedding_is_summed(controlnet) -> None:
    """With the query embedding's output conv zeroed, the query no longer matters (and the model is a
    plain ControlNet on the pair): the two embeddings are added, nothing else."""
    g = torch.Generator().manual_seed(2)
    pair, query = torch.rand(1, 6, 64, 64, generator=g), torch.rand(1, 3, 64, 64, generator=g)
    model = PromptDiffusionControlNetModel.from_config(controlnet.config)
    model.load_state_dict(controlnet.state_dict())
    model.eval()
    torch.nn.init.zeros_(model.controlnet_query_cond_embedding.conv_out.weight)
    torch.nn.init.zeros_(model.controlnet_query_cond_embedding.conv_out.bias)
    assert torch.equal(_control(model, pair, query), _control(model, pair, 1 - query))
    plain = ControlNetModel.from_config({**dict(controlnet.config), "_class_name": "ControlNetModel"})
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("controlnet_query")})
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        down, mid = plain.eval()(sample, torch.tensor(500), encoder_hidden_states=text, controlnet_cond=pair,
                                 return_dict=False)
    assert torch.allclose(torch.cat([d.flatten() for d in down] + [mid.flatten()]), _control(model, pair, query),
                          atol=1e-6)


@pytest.fixture(scope="module")
def pd_pipe(pd_path: Path, strong_controlnet) -> PromptDiffusionPipeline:
    pipe = PromptDiffusionPipeline.from_pretrained(pd_path, controlnet=strong_controlnet)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_uses_pair_and_query_in_minus_one_one(pd_pipe) -> None:
    white, black = Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "black")
    scaled = pd_pipe.control_image_processor.preprocess([white, black])
    assert scaled[0].min() == 1.0 and scaled[1].max() == -1.0

    def run(pair, query) -> np.ndarray:
        return pd_pipe("a house", image=query, image_pair=pair, num_inference_steps=STEPS, output_type="np",
                       generator=torch.Generator().manual_seed(0)).images[0]

    a, b, q = picture(5), picture(6), picture(7)
    base = run([a, b], q)
    assert np.array_equal(base, run([a, b], q))
    for pair, query in (([b, b], q), ([a, a], q), ([a, b], a)):
        assert np.abs(run(pair, query) - base).max() > 1e-5  # tiny VAE decodes everything near grey


def test_pipeline_takes_plain_string_prompts(pd_pipe) -> None:
    out = pd_pipe(prompt="a house", negative_prompt="blurry", image=picture(7), image_pair=[picture(5), picture(6)],
                  num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3)


def _port_layout(pd_path: Path, folder: Path) -> Path:
    """The tiny model laid out as the research-project port publishes it: model_index.json names the port's
    pipeline and its ControlNet module (neither importable here), controlnet/ saved by the port's class."""
    shutil.copytree(pd_path, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index |= {"_class_name": "PromptDiffusionControlNetPipeline",
              "controlnet": ["pipeline_prompt_diffusion", "PromptDiffusionControlNetModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    config = json.loads((folder / "controlnet" / "config.json").read_text())
    (folder / "controlnet" / "config.json").write_text(json.dumps(config | {"_class_name": "PromptDiffusionControlNetModel"}))
    return folder


def test_port_layout_loads_strictly(pd_path: Path, tmp_path: Path) -> None:
    folder = _port_layout(pd_path, tmp_path / "port")
    with safe_open(str(folder / "controlnet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        checkpoint = {k: f.get_tensor(k) for k in f.keys()}
    model = PromptDiffusionControlNetModel.from_config(PromptDiffusionControlNetModel.load_config(folder / "controlnet"))
    result = model.load_state_dict(checkpoint, strict=True)  # no missing and no unexpected keys
    assert not result.missing_keys and not result.unexpected_keys
    editor = load_editor("prompt-diffusion", load_style("winter"), model=str(folder), device="cpu", steps=STEPS)
    loaded = editor._pipe.controlnet.state_dict()
    assert loaded.keys() == checkpoint.keys() and all(torch.equal(loaded[k], checkpoint[k]) for k in loaded)
    check_edits(edit_with_flags(editor, IMAGES[:1], CAPTIONS[:1], SEEDS[:1]), IMAGES[:1])


# ---------------------------------------------------------------------------------------------
# prompt-diffusion editor


@pytest.fixture(scope="module")
def pd_editor(pd_path: Path) -> PromptDiffusionEditor:
    return load_editor("prompt-diffusion", load_style("winter"), model=str(pd_path), device="cpu", steps=STEPS)


def test_prompt_diffusion_end_to_end(pd_editor) -> None:
    result = edit_with_flags(pd_editor, IMAGES, CAPTIONS, SEEDS)
    check_edits(result, IMAGES)
    assert result.nsfw == [None] * len(IMAGES)
    params = pd_editor.params()
    assert params["recipe"] == "pair" and params["num_inference_steps"] == STEPS
    assert params["scheduler"] == "DDIMScheduler" and params["example_pair"]["classic"]["filter"] == "winter"


def test_prompt_diffusion_batch_equals_single_calls(pd_editor) -> None:
    batch = pd_editor.edit(IMAGES, CAPTIONS, SEEDS)
    singles = [pd_editor.edit([img], [cap], [seed])[0] for img, cap, seed in zip(IMAGES, CAPTIONS, SEEDS)]
    assert_same(batch, singles)
    other = pd_editor.edit(IMAGES[:1], CAPTIONS[:1], [SEEDS[0] + 1])[0]
    assert not np.array_equal(arr(other), arr(batch[0]))


def test_default_example_pair_is_the_classic_edit(pd_editor) -> None:
    from styleprefs.editors.classic import ClassicEditor

    source, target, query = pd_editor.conditions(IMAGES[0], 3, (64, 64))
    assert np.array_equal(arr(source), arr(IMAGES[0])) and np.array_equal(arr(query), arr(IMAGES[0]))
    assert np.array_equal(arr(target), arr(ClassicEditor("winter").edit([IMAGES[0]], [""], [3])[0]))


def test_map_recipe_regenerates_edge_maps(pd_path: Path, pd_editor) -> None:
    editor = load_editor("prompt-diffusion", load_style("sketch"), model=str(pd_path), device="cpu", steps=STEPS,
                         recipe="map")
    source, target, query = editor.conditions(IMAGES[0], 3, (64, 64))
    assert np.array_equal(arr(query), arr(edge_map(IMAGES[0])))
    assert np.array_equal(arr(source), arr(edge_map(target)))
    assert arr(query).mean() < 100  # white edges on black
    check_edits(editor.edit_with_flags(IMAGES[:2], CAPTIONS[:2], SEEDS[:2]), IMAGES[:2])
    assert editor._pipe is pd_editor._pipe and editor.params()["recipe"] == "map"


def _style_with_pair(tmp_path: Path, pair: str) -> Path:
    text = Path(load_style.__globals__["BUILTIN_DIR"] / "winter.yaml").read_text()
    text = text.replace('  prompt: "{caption}, in winter, covered in snow"',
                        f'  prompt: "{{caption}}, in winter, covered in snow"\n  example_pair: {pair}')
    path = tmp_path / "styles" / "my_winter.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_user_example_pair(pd_path: Path, pd_editor, tmp_path: Path) -> None:
    (tmp_path / "styles" / "pair").mkdir(parents=True)
    picture(20).save(tmp_path / "styles" / "pair" / "summer.png")
    picture(21, (96, 64)).save(tmp_path / "styles" / "pair" / "winter.jpg")
    style = load_style(_style_with_pair(tmp_path, "[pair/summer.png, pair/winter.jpg]"))
    assert style.prompt_diffusion.example_pair == (str((tmp_path / "styles/pair/summer.png").resolve()),
                                                   str((tmp_path / "styles/pair/winter.jpg").resolve()))
    editor = load_editor("prompt-diffusion", style, model=str(pd_path), device="cpu", steps=STEPS)
    source, target, query = editor.conditions(IMAGES[1], 0, (64, 64))
    assert np.array_equal(arr(source), arr(picture(20).resize((64, 64), Image.LANCZOS)))
    assert np.array_equal(arr(query), arr(IMAGES[1].resize((64, 64), Image.LANCZOS)))
    assert editor.params()["example_pair"]["images"] == ["summer.png", "winter.jpg"]
    ours = editor.edit(IMAGES[:1], CAPTIONS[:1], SEEDS[:1])[0]
    default = pd_editor.edit(IMAGES[:1], CAPTIONS[:1], SEEDS[:1])[0]
    assert not np.array_equal(arr(ours), arr(default))


def test_working_size_rule() -> None:
    """edit_cli.py's rule without its crop: long side ~512, multiples of 64; tiny models stay at 64."""
    assert resize_for_model((512, 512), 512) == (512, 512) and resize_for_model((1024, 1024), 512) == (512, 512)
    assert resize_for_model((640, 480), 512) == (512, 384) and resize_for_model((480, 640), 512) == (384, 512)
    assert resize_for_model((1024, 768), 512) == (512, 384) and resize_for_model((80, 60), 64) == (64, 64)
    sd15 = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=64)), vae_scale_factor=8)
    tiny_pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(sample_size=8)), vae_scale_factor=8)
    assert working_resolution(sd15, None) == 512 and working_resolution(tiny_pipe, None) == 64
    assert working_resolution(sd15, 768) == 768


# ---------------------------------------------------------------------------------------------
# bad input: one-line StyleprefsError


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_unknown_editor_and_option() -> None:
    with pytest.raises(StyleprefsError, match="unknown editor 'pix2pix'") as exc:
        load_editor("pix2pix", load_style("winter"))
    assert all(name in one_line(exc) for name in EDITORS)
    with pytest.raises(StyleprefsError, match="no option"):
        load_editor("instruct-pix2pix", load_style("winter"), model="tiny", device="cpu", sampler="ddim")
    classic = load_editor("classic", load_style("winter"), model="ignored", steps=3)
    result = edit_with_flags(classic, IMAGES[:2], CAPTIONS[:2], SEEDS[:2])
    assert classic.name == "classic" and result.nsfw == [None, None]
    assert_same(result.images, classic.edit(IMAGES[:2], CAPTIONS[:2], SEEDS[:2]), atol=0)


def test_model_folder_missing_components_is_named(pd_path: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(pd_path / "unet", partial / "unet")
    with pytest.raises(StyleprefsError) as exc:
        load_editor("instruct-pix2pix", load_style("van_gogh"), model=str(partial), device="cpu")
    message = one_line(exc)
    assert "lacks model_index.json, vae/, text_encoder/, tokenizer/, scheduler/" in message
    no_controlnet = tmp_path / "no-controlnet"
    shutil.copytree(pd_path, no_controlnet, ignore=shutil.ignore_patterns("controlnet"))
    with pytest.raises(StyleprefsError, match=r"lacks controlnet/ \(expected model_index.json, controlnet/"):
        load_editor("prompt-diffusion", load_style("winter"), model=str(no_controlnet), device="cpu")
    with pytest.raises(StyleprefsError, match="neither an existing folder nor a Hub id"):
        load_editor("prompt-diffusion", load_style("winter"), model=str(tmp_path / "nowhere"), device="cpu")


def test_wrong_kind_of_model(pd_path: Path, cache: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain-controlnet"
    shutil.copytree(pd_path, plain)
    ControlNetModel.from_pretrained(pd_path, subfolder="controlnet").save_pretrained(plain / "controlnet")
    with pytest.raises(StyleprefsError, match="no controlnet_query_cond_embedding") as exc:
        load_editor("prompt-diffusion", load_style("winter"), model=str(plain), device="cpu")
    one_line(exc)
    text_to_image = tiny.ensure_tiny("tiny", cache)  # an SD folder: every component, but a 4-channel UNet
    with pytest.raises(StyleprefsError, match="takes 4 input channels, not 8") as exc:
        load_editor("instruct-pix2pix", load_style("van_gogh"), model=str(text_to_image), device="cpu")
    one_line(exc)


def test_bad_device_dtype_and_numbers(ip2p_path: Path) -> None:
    style = load_style("van_gogh")
    for kwargs, pattern in (({"dtype": "fp16"}, "on CPU use --dtype fp32"), ({"dtype": "fp8"}, "unknown dtype"),
                            ({"device": "gpu"}, "unknown device"), ({"steps": 0}, "steps must be at least 1"),
                            ({"resolution": 100}, "multiple of 64")):
        with pytest.raises(StyleprefsError, match=pattern) as exc:
            load_editor("instruct-pix2pix", style, model=str(ip2p_path), **{"device": "cpu", **kwargs})
        one_line(exc)
    if not torch.cuda.is_available():
        with pytest.raises(StyleprefsError, match="CUDA is not available"):
            load_editor("instruct-pix2pix", style, model=str(ip2p_path), device="cuda")
    with pytest.raises(StyleprefsError, match="unknown Prompt Diffusion recipe"):
        load_editor("prompt-diffusion", load_style("winter"), model="tiny", device="cpu", recipe="two-step")


def test_example_pair_must_be_images(tmp_path: Path) -> None:
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "notes.txt").write_text("not an image")
    picture(0).save(tmp_path / "styles" / "a.png")
    with pytest.raises(StyleprefsError, match=r"notes\.txt is not an image") as exc:
        load_style(_style_with_pair(tmp_path, "[a.png, notes.txt]"))
    one_line(exc)
    with pytest.raises(StyleprefsError, match=r"missing\.png does not exist"):
        load_style(_style_with_pair(tmp_path, "[missing.png, a.png]"))
    with pytest.raises(StyleprefsError, match="list of two image paths"):
        load_style(_style_with_pair(tmp_path, "[a.png]"))


def test_cli_reports_bad_editor_input_with_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "notes.txt").write_text("not an image")
    picture(0).save(tmp_path / "styles" / "a.png")
    bad_style = _style_with_pair(tmp_path, "[a.png, notes.txt]")
    for args, pattern in ((["--editor", "pix2pix"], "unknown editor 'pix2pix'"),
                          (["--style", str(bad_style)], "notes.txt is not an image")):
        with pytest.raises(SystemExit) as exc:
            main(["build", "--source", "sample", "--num-pairs", "2", "--out", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and pattern in err and len(err.strip().splitlines()) == 1
