"""FID/KID (closed forms, sample counts, random features), Vendi and win rate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from styleprefs.errors import StyleprefsError
from styleprefs.eval import fid
from styleprefs.eval.fid import fid_from_features, frechet_distance, kid_from_features, style_fid
from styleprefs.eval.vendi import vendi_folder, vendi_score
from styleprefs.eval.winrate import win_rate



def picture(seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size, size, 3), np.uint8)
    arr[: size // 2] = rng.integers(40, 255, 3)
    arr[size // 2:] = rng.integers(0, 200, 3)
    y, x = rng.integers(0, size - 16, 2)
    arr[y:y + 16, x:x + 16] = rng.integers(0, 255, 3)
    return Image.fromarray(arr)


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_pairs(path: Path, n: int, ties: tuple[int, ...] = ()) -> Path:
    """Pick-a-Pic-schema rows (the columns eval reads); the winner slot alternates, ``ties`` get 0.5/0.5."""
    rows = []
    for i in range(n):
        label_0 = 0.5 if i in ties else float(i % 2)
        rows.append({"caption": f"caption {i}", "jpg_0": jpeg(picture(2 * i)), "jpg_1": jpeg(picture(2 * i + 1)),
                     "label_0": label_0, "label_1": 0.5 if i in ties else 1.0 - label_0})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_images(folder: Path, images: list[Image.Image]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")
    return folder


# ---------------------------------------------------------------------------------------------- FID / KID


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_fid_of_a_set_with_itself_is_zero() -> None:
    rng = np.random.default_rng(0)
    for n, d in ((50, 2048), (300, 16)):  # fewer samples than dimensions, and more
        x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d)
        assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8 * d)
    mu, sigma = rng.normal(size=8), random_spd(rng, 8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_fid_matches_the_closed_form_for_gaussians() -> None:
    rng = np.random.default_rng(1)
    # Diagonal covariances: ||mu1 - mu2||^2 + sum (s1 - s2)^2 with s the standard deviations.
    mu1, mu2, s1, s2 = rng.normal(size=5), rng.normal(size=5), rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)
    # General covariances: tr((S1 S2)^(1/2)) = sum of square roots of the eigenvalues of S1 S2.
    a, b = random_spd(rng, 6), random_spd(rng, 6)
    trace_root = np.sqrt(np.linalg.eigvals(a @ b).real).sum()
    expected = ((mu1[:1] - mu2[:1]) ** 2).sum() * 0 + np.trace(a) + np.trace(b) - 2 * trace_root
    assert frechet_distance(np.zeros(6), a, np.zeros(6), b) == pytest.approx(expected, rel=1e-9)
    # Samples from two known Gaussians estimate it.
    n = 200_000
    x = rng.normal(size=(n, 2)) * [1.0, 2.0] + [0.0, 1.0]
    y = rng.normal(size=(n, 2)) * [1.5, 1.0] + [1.0, 0.0]
    closed = (1 + 1) + (1.0 - 1.5) ** 2 + (2.0 - 1.0) ** 2
    assert fid_from_features(x, y) == pytest.approx(closed, rel=0.01)


def test_small_n_fid_equals_the_covariance_route() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(12, 40)), rng.normal(size=(9, 40)) @ rng.normal(size=(40, 40)) + 0.5
    assert fid_from_features(x, y) == pytest.approx(frechet_distance(*fid.feature_stats(x), *fid.feature_stats(y)),
                                                    rel=1e-7)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    rng = np.random.default_rng(3)
    x, x2, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1.0
    same, _ = kid_from_features(x, x2, num_subsets=20, subset_size=200)
    apart, std = kid_from_features(x, y, num_subsets=20, subset_size=200)
    assert abs(same) < 0.02 < apart and std >= 0
    assert kid_from_features(x[:5], y[:5], subset_size=1000, num_subsets=3)[0] > 0  # subset capped at N


@pytest.fixture(scope="module")
def style_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("data") / "train-00000-of-00001.parquet", 5, ties=(2,))


@pytest.fixture(scope="module")
def preferred(style_data: Path) -> list[bytes]:
    """The preferred images' JPEG bytes."""
    return [raw for _, raw in fid.preferred_images(style_data).load(range(4))]


def write_jpegs(folder: Path, encoded: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(encoded):
        (folder / f"{i:03d}.jpg").write_bytes(data)
    return folder


def test_preferred_images_are_the_winners_and_ties_are_counted(style_data: Path) -> None:
    images = fid.preferred_images(style_data)
    assert images.count == 4 and "1 tie" in images.note
    winners = [np.asarray(img) for img, _ in images.load(range(4))]
    expected = [np.asarray(Image.open(io.BytesIO(jpeg(picture(2 * i + (1 - i % 2)))))) for i in (0, 1, 3, 4)]
    assert all(np.array_equal(a, b) for a, b in zip(winners, expected))


def test_style_fid_random_features_is_labelled_and_zero_on_the_same_images(style_data: Path, preferred, tmp_path):
    generated = write_jpegs(tmp_path / "gen", preferred)  # the preferred images themselves
    result = style_fid(style_data, generated, features="random", show_progress=False)
    assert result["fid"] == pytest.approx(0.0, abs=1e-6) and result["n"] == 4
    assert result["comparable_to_published"] is False and "NOT comparable" in result["warnings"][0]
    assert any("N = 4 < 2048" in w for w in result["warnings"])
    assert "clean-fid" in result["resize"] and json.loads((generated / "style_fid.json").read_text())["n"] == 4
    other = write_images(tmp_path / "other", [picture(100 + i) for i in range(4)])
    assert style_fid(style_data, other, features="random", show_progress=False)["fid"] > 1.0


def test_unequal_and_too_small_counts_are_reported(style_data: Path, preferred, tmp_path: Path) -> None:
    generated = write_jpegs(tmp_path / "gen", preferred[:3])
    result = style_fid(style_data, generated, features="random", show_progress=False)
    assert result["n"] == 3 and result["n_reference_available"] == 4 and result["n_generated_available"] == 3
    assert any("unequal counts: 4 preferred images vs 3 generated" in w for w in result["warnings"])
    with pytest.raises(StyleprefsError, match="unequal counts"):
        style_fid(style_data, generated, features="random", unequal="error", show_progress=False)
    with pytest.raises(StyleprefsError, match="at least 2 images"):
        style_fid(style_data, write_jpegs(tmp_path / "one", preferred[:1]), features="random", show_progress=False)


def test_no_inception_weights_offline_is_a_user_error(style_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    generated = write_images(tmp_path / "gen", [picture(i) for i in range(4)])
    with pytest.raises(StyleprefsError, match="no FID Inception weights.*--features random"):
        style_fid(style_data, generated, show_progress=False)
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(StyleprefsError, match="not an FID Inception state dict"):
        style_fid(style_data, generated, inception=bad, show_progress=False)


def test_fid_weights_file_layout_round_trips(tmp_path: Path) -> None:
    """A state dict in pytorch-fid's layout (torchvision key names, fc of 1008 classes) loads strictly."""
    state = fid.FidInception().net.state_dict()
    assert state["fc.weight"].shape == (1008, 2048) and "Mixed_7c.branch_pool.conv.weight" in state
    torch.save(state, tmp_path / fid.FID_WEIGHTS_NAME)
    model = fid.load_fid_inception(tmp_path / fid.FID_WEIGHTS_NAME)
    assert isinstance(model.net.Mixed_7c, fid.FIDInceptionE_2) and not model.training


# ---------------------------------------------------------------------------------------------- Vendi


def test_vendi_of_identical_items_is_one_and_of_orthogonal_items_is_n() -> None:
    v = np.random.default_rng(0).normal(size=16)
    assert vendi_score(np.tile(v, (7, 1))) == pytest.approx(1.0)
    assert vendi_score(np.eye(5)) == pytest.approx(5.0)
    assert vendi_score(np.eye(5, 3)[:3] * [1, 2, 3]) == pytest.approx(3.0)  # scale does not matter (cosine)
    assert vendi_score(np.eye(12)[:, :12]) == pytest.approx(12.0)  # the d x d route gives the same
    x = np.random.default_rng(1).normal(size=(30, 4))
    assert 1.0 < vendi_score(x) <= 4.0 + 1e-9  # bounded by min(n, d)


def test_vendi_folder_per_prompt_average(tmp_path: Path) -> None:
    from styleprefs.eval.generate import ImageRecord

    folder = tmp_path / "gen"
    (folder / "images").mkdir(parents=True)
    lines = []
    for pid, prompt in enumerate(["same", "varied"]):
        for i in range(3):
            image = picture(0) if prompt == "same" else picture(10 + i)
            path = f"images/{pid:05d}-{i:02d}.png"
            image.save(folder / path)
            lines.append(json.dumps(ImageRecord(pid, prompt, "", i, i, path, 64, 64).__dict__))
    (folder / "index.jsonl").write_text("\n".join(lines) + "\n")
    result = vendi_folder(folder, embedding="random")
    assert result["per_prompt"]["same"] == pytest.approx(1.0) and result["per_prompt"]["varied"] > 1.0
    assert result["vendi"] == pytest.approx(np.mean(list(result["per_prompt"].values())))
    assert "NOT comparable" in result["warnings"][0] and (folder / "vendi.json").is_file()


def test_vendi_inception_embedding_loads_torchvision_weights(tmp_path: Path) -> None:
    """The Vendi-Score repo's embedding: torchvision inception_v3 (ImageNet layout, aux head), 2048-d pool."""
    import torchvision

    from styleprefs.eval.vendi import Embedder

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    torch.save(net.state_dict(), tmp_path / "inception_v3_google-0cc3c7bd.pth")
    embed = Embedder("inception", weights=str(tmp_path / "inception_v3_google-0cc3c7bd.pth"), device="cpu")
    assert embed([picture(0), picture(1, 80)]).shape == (2, 2048)
    with pytest.raises(StyleprefsError, match="--embedding clip"):
        Embedder("inception", weights=str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------------------------------------- win rate


def test_win_rate_of_a_model_against_itself_is_one_half() -> None:
    rng = np.random.default_rng(0)
    scores = {f"p{i}": rng.normal(size=5).tolist() for i in range(20)}
    result = win_rate(scores, scores, n_bootstrap=500)
    assert result["win_rate"] == 0.5 and result["ties"] == 20 and result["ci_low"] == result["ci_high"] == 0.5


def test_win_rate_uses_per_prompt_medians_and_counts_ties_half() -> None:
    a = {"p1": [0, 0, 10, 10, 10], "p2": [1, 1, 1, 1, 1], "p3": [0, 0, 0, 5, 5], "only_a": [9]}
    b = {"p1": [5, 5, 5, 5, 5], "p2": [1, 1, 1, 9, 9], "p3": [1, 1, 1, 1, 1], "only_b": [0]}
    # medians: p1 10 > 5 (win; means would say the same), p2 1 = 1 (tie, though the mean of B is higher),
    # p3 0 < 1 (loss, though the mean of A is higher)
    result = win_rate(a, b, n_bootstrap=2000, seed=1)
    assert (result["wins"], result["ties"], result["losses"]) == (1, 1, 1)
    assert result["win_rate"] == pytest.approx(0.5) and result["n_prompts"] == 3
    assert result["only_in_a"] == result["only_in_b"] == 1
    assert 0.0 <= result["ci_low"] <= 0.5 <= result["ci_high"] <= 1.0
    assert win_rate(a, b, n_bootstrap=2000, seed=1) == result  # seeded
    better = {p: [v + 100 for v in s] for p, s in b.items()}
    assert win_rate(better, b, n_bootstrap=100)["win_rate"] == 1.0


def test_win_rate_without_shared_prompts_is_an_error() -> None:
    with pytest.raises(StyleprefsError, match="share no prompt"):
        win_rate({"a": [1.0]}, {"b": [1.0]})
