"""Reward scorers on tiny local checkpoints: formats, scales, batch-size invariance, offline errors; scoring a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from styleprefs import tiny
from styleprefs.errors import StyleprefsError
from styleprefs.eval import rewards
from styleprefs.eval.generate import ImageRecord
from styleprefs.eval.rewards import load_scorer, pad_to_square, score_folder, score_images
from styleprefs.eval.winrate import winrate_folders

PROMPTS = ["a red fox in the snow", "a blue house", "a bowl of ramen, studio photo", "x", "a cat " * 40]



def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


IMAGES = [picture(0), picture(1, (80, 48)), picture(2, (40, 96)), picture(3), picture(4)]


@pytest.mark.parametrize("name, source", [("clip", "tiny-clip"), ("pickscore", "tiny-clip"),
                                          ("aesthetic", "tiny-aesthetic"), ("hpsv2", "tiny-hpsv2")])
def test_scores_do_not_depend_on_batch_size(name: str, source: str) -> None:
    scorer = load_scorer(name, source, device="cpu")
    one = score_images(scorer, PROMPTS, IMAGES, batch_size=1)
    many = score_images(scorer, PROMPTS, IMAGES, batch_size=4)
    assert one.shape == (5,) and one.dtype == np.float64 and np.isfinite(one).all()
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-6)
    assert {"model", "preprocessing", "scale"} <= scorer.describe().keys()


def test_pickscore_scale_is_the_checkpoints_logit_scale() -> None:
    pick = load_scorer("pickscore", "tiny-clip", device="cpu")
    scale = pick.clip.logit_scale
    assert scale == pytest.approx(float(pick.clip.model.logit_scale.exp())) and scale != 100.0
    img = pick.clip.image_embeddings(IMAGES)
    txt = pick.clip.text_embeddings(PROMPTS)
    np.testing.assert_allclose(score_images(pick, PROMPTS, IMAGES), scale * (img * txt).sum(-1).numpy(), rtol=1e-5)
    assert f"{scale:.4f}" in pick.describe()["scale"]


def test_clip_score_is_a_raw_cosine_with_padding_preprocessing() -> None:
    clip = load_scorer("clip", "tiny-clip", device="cpu")
    values = score_images(clip, PROMPTS, IMAGES)
    assert np.all(np.abs(values) <= 1.0) and clip.clip.preprocess == "pad"


def test_hpsv2_preprocessing_pads_the_long_side_to_a_centred_square() -> None:
    wide = Image.new("RGB", (80, 40), (255, 255, 255))
    x = pad_to_square(wide, 32, mean=(0, 0, 0), std=(1, 1, 1))
    assert x.shape == (3, 32, 32)
    assert torch.all(x[:, :8] == 0) and torch.all(x[:, -8:] == 0)  # 16 rows of black padding, split evenly
    assert torch.allclose(x[:, 8:24], torch.ones(1))


def test_aesthetic_mlp_layout_matches_the_real_file(tmp_path: Path) -> None:
    path = tiny.ensure_tiny("tiny-aesthetic") / tiny.AESTHETIC_MLP_FILE
    state = torch.load(path, weights_only=True)
    assert sorted({k.split(".")[1] for k in state}, key=int) == ["0", "2", "4", "6", "7"]
    mlp = rewards.load_aesthetic_mlp(path)
    assert isinstance(mlp[1], torch.nn.Identity) and mlp[7].out_features == 1
    scores = score_images(load_scorer("aesthetic", "tiny-aesthetic"), PROMPTS, IMAGES)
    assert np.all((scores > 1) & (scores < 10))
    wrong_clip = tmp_path / "mlp.pth"
    torch.save({"layers.0.weight": torch.zeros(1, 8), "layers.0.bias": torch.zeros(1)}, wrong_clip)
    with pytest.raises(StyleprefsError, match="expects 8-d embeddings.*16-d"):
        load_scorer("aesthetic", str(wrong_clip), aesthetic_clip="tiny-clip")


def test_hpsv2_checkpoint_is_a_state_dict_on_open_clip(tmp_path: Path) -> None:
    folder = tiny.ensure_tiny("tiny-hpsv2")
    assert "state_dict" in torch.load(folder / tiny.HPSV2_FILE, weights_only=True)
    (tmp_path / "open_clip_config.json").write_text((folder / "open_clip_config.json").read_text())
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, tmp_path / "hps.pt")
    with pytest.raises(StyleprefsError, match="scorer hpsv2.*not an HPSv2 checkpoint for tiny-hpsv2"):
        load_scorer("hpsv2", str(tmp_path))
    with pytest.raises(StyleprefsError, match="scorer hpsv2.*no architecture 'ViT-Q-99'"):
        load_scorer("hpsv2", str(tmp_path / "hps.pt"), hpsv2_arch="ViT-Q-99")


@pytest.mark.parametrize("name, source", [("pickscore", None), ("clip", "someone/not-here"), ("hpsv2", None)])
def test_unloadable_scorer_names_itself_and_the_local_route(name: str, source, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StyleprefsError) as exc:
        load_scorer(name, source, device="cpu")
    message = str(exc.value)
    assert message.startswith(f"scorer {name}:") and f"--scorer {name}=" in message and "\n" not in message


def test_missing_local_files_and_imagereward(tmp_path: Path) -> None:
    with pytest.raises(StyleprefsError, match="scorer aesthetic.*one .pth"):
        load_scorer("aesthetic", str(tmp_path))
    with pytest.raises(StyleprefsError, match="scorer imagereward.*image-reward"):
        load_scorer("imagereward")
    with pytest.raises(StyleprefsError, match="unknown scorer 'foo'"):
        rewards.parse_scorer("foo=bar")


def write_folder(folder: Path, prompts: list[str], images: list[list[Image.Image]]) -> Path:
    (folder / "images").mkdir(parents=True)
    lines = []
    for pid, (prompt, group) in enumerate(zip(prompts, images)):
        for i, image in enumerate(group):
            path = f"images/{pid:05d}-{i:02d}.png"
            image.save(folder / path)
            lines.append(json.dumps(ImageRecord(pid, prompt, "cat", i, 1000 * pid + i, path, 64, 64).__dict__))
    (folder / "index.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_score_folder_writes_parquet_and_averages_and_keeps_other_columns(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "gen", PROMPTS[:2], [IMAGES[:3], IMAGES[2:]])
    summary = score_folder(folder, ["clip=tiny-clip"], show_progress=False)
    score_folder(folder, ["aesthetic=tiny-aesthetic", "hpsv2=tiny-hpsv2"], batch_size=2, show_progress=False)
    table = pq.read_table(folder / "scores.parquet").to_pydict()
    assert {"path", "prompt", "index", "seed", "clip", "aesthetic", "hpsv2"} <= table.keys() and len(table["path"]) == 6
    assert summary["clip"]["mean"] == pytest.approx(np.mean(table["clip"]))
    saved = json.loads((folder / "rewards.json").read_text())
    assert {"clip", "aesthetic", "hpsv2"} <= saved.keys() and saved["hpsv2"]["n"] == 6


def test_win_rate_of_a_folder_against_itself(tmp_path: Path) -> None:
    groups = [[picture(10 * p + i) for i in range(3)] for p in range(4)]
    a = write_folder(tmp_path / "a", PROMPTS[:4], groups)
    b = write_folder(tmp_path / "b", PROMPTS[:4], groups)
    result = winrate_folders(a, b, ["clip=tiny-clip"], n_bootstrap=200, show_progress=False)
    assert result["clip"]["win_rate"] == 0.5 and result["clip"]["ties"] == 4 and result["same_seeds"]
    assert (a / "winrate_vs_b.json").is_file()
