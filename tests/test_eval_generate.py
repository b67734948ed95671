"""`eval generate`: prompt sources, seeds per (prompt, index), identical images on the same seed, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from styleprefs.errors import StyleprefsError
from styleprefs.eval import generate as gen
from styleprefs.eval.generate import generate, image_seed, read_index, read_settings
from styleprefs.eval.prompts import PromptItem, load_prompts

STEPS = 2



@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red fox in the snow\n\n  a   blue house \na red fox in the snow\na bowl of ramen\n")
    return path


def _pixels(folder: Path) -> dict[tuple[str, int], np.ndarray]:
    return {(r.prompt, r.index): np.asarray(Image.open(folder / r.path)) for r in read_index(folder)}


# ---------------------------------------------------------------------------------------------- prompts


def test_text_file_strips_skips_blank_and_dedupes(prompt_file: Path) -> None:
    assert [p.prompt for p in load_prompts(str(prompt_file))] == ["a red fox in the snow", "a blue house",
                                                                  "a bowl of ramen"]
    assert len(load_prompts(str(prompt_file), limit=2)) == 2


def test_parti_tsv_keeps_category(tmp_path: Path) -> None:
    path = tmp_path / "PartiPrompts.tsv"
    path.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\tx\na cat on a mat\tAnimals\tBasic\t\n")
    assert load_prompts(str(path)) == [PromptItem("bond", "Abstract"), PromptItem("a cat on a mat", "Animals")]


def test_json_shapes_and_hpsv2_folder(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps(["one", {"caption": "two", "category": "c"}]))
    assert load_prompts(str(tmp_path / "list.json")) == [PromptItem("one"), PromptItem("two", "c")]
    (tmp_path / "map.json").write_text(json.dumps({"anime": ["a", "b"], "photo": ["c"]}))
    assert [(p.prompt, p.category) for p in load_prompts(str(tmp_path / "map.json"))] == [
        ("a", "anime"), ("b", "anime"), ("c", "photo")]
    (tmp_path / "lines.jsonl").write_text('{"prompt": "x"}\n"y"\n')
    assert [p.prompt for p in load_prompts(str(tmp_path / "lines.jsonl"))] == ["x", "y"]
    bench = tmp_path / "benchmark"
    bench.mkdir()
    for style in ("anime", "photo"):
        (bench / f"{style}.json").write_text(json.dumps([f"{style} prompt 1", f"{style} prompt 2"]))
    items = load_prompts(str(bench))
    assert len(items) == 4 and {p.category for p in items} == {"anime", "photo"}


def test_dataset_captions(pickapic_dir: Path) -> None:
    items = load_prompts(str(pickapic_dir))
    assert items[0].prompt.startswith("a cozy cabin") and all(p.prompt.strip() for p in items)


def test_bad_prompt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StyleprefsError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(StyleprefsError, match="holds no prompts"):
        load_prompts(str(tmp_path / "empty.txt"))
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StyleprefsError, match="local copy"):
        load_prompts("parti")


# ---------------------------------------------------------------------------------------------- seeds


def test_image_seed_depends_on_seed_prompt_and_index() -> None:
    assert image_seed(0, "a", 0) == image_seed(0, "a", 0)
    seeds = {image_seed(s, p, i) for s in (0, 1) for p in ("a", "b") for i in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


# ---------------------------------------------------------------------------------------------- generate


def test_same_seed_twice_gives_identical_images(prompt_file: Path, tmp_path: Path) -> None:
    opts = dict(images_per_prompt=2, steps=STEPS, show_progress=False)
    a = generate("tiny", str(prompt_file), tmp_path / "a", batch_size=4, **opts)
    b = generate("tiny", str(prompt_file), tmp_path / "b", batch_size=4, **opts)
    assert a["done"] == b["done"] == 6 and a["guidance"] == 7.5 and a["safety_checker"] == "off"
    pa, pb = _pixels(tmp_path / "a"), _pixels(tmp_path / "b")
    assert pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert not np.array_equal(pa[("a blue house", 0)], pa[("a blue house", 1)])  # different seeds per index
    records = read_index(tmp_path / "a")
    assert [(r.prompt_id, r.index) for r in records] == [(p, i) for p in range(3) for i in range(2)]
    assert all(r.seed == image_seed(0, r.prompt, r.index) for r in records)
    assert records[0].width == records[0].height == 64
    assert read_settings(tmp_path / "a")["steps"] == STEPS


def test_seeds_follow_the_prompt_not_its_position(prompt_file: Path, tmp_path: Path) -> None:
    """A prompt list in another order (or shared by another list) gives each prompt the same images."""
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("a bowl of ramen\na red fox in the snow\n")
    opts = dict(images_per_prompt=1, steps=STEPS, show_progress=False)
    generate("tiny", str(prompt_file), tmp_path / "a", **opts)
    generate("tiny", str(reordered), tmp_path / "b", batch_size=1, **opts)
    pa, pb = _pixels(tmp_path / "a"), _pixels(tmp_path / "b")
    # Same initial noise; another batch size changes the pixels by float round-off only.
    assert all(np.abs(pa[k].astype(int) - pb[k]).max() <= 1 for k in pb)


def test_resume_after_interruption_equals_one_run(prompt_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    opts = dict(images_per_prompt=2, steps=STEPS, batch_size=2, show_progress=False)
    generate("tiny", str(prompt_file), tmp_path / "whole", **opts)
    real, calls = gen._sample, []

    def crash_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gen, "_sample", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        generate("tiny", str(prompt_file), tmp_path / "resumed", **opts)
    monkeypatch.setattr(gen, "_sample", real)
    assert len(read_index(tmp_path / "resumed")) == 2
    with open(tmp_path / "resumed" / "index.jsonl", "a") as f:
        f.write('{"prompt_id": 1, "pro')  # a line cut short by the crash is ignored
    result = generate("tiny", str(prompt_file), tmp_path / "resumed", **opts)
    assert (result["done"], result["skipped"]) == (4, 2)
    whole, resumed = _pixels(tmp_path / "whole"), _pixels(tmp_path / "resumed")
    assert whole.keys() == resumed.keys() and all(np.array_equal(whole[k], resumed[k]) for k in whole)
    assert generate("tiny", str(prompt_file), tmp_path / "resumed", **opts)["done"] == 0


def test_other_settings_are_refused_unless_overwrite(prompt_file: Path, tmp_path: Path) -> None:
    opts = dict(images_per_prompt=1, show_progress=False)
    generate("tiny", str(prompt_file), tmp_path / "g", steps=STEPS, **opts)
    with pytest.raises(StyleprefsError, match="other settings.*steps 2 -> 3"):
        generate("tiny", str(prompt_file), tmp_path / "g", steps=3, **opts)
    assert generate("tiny", str(prompt_file), tmp_path / "g", steps=3, overwrite=True, **opts)["done"] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(StyleprefsError, match="not a generation folder"):
        generate("tiny", str(prompt_file), tmp_path / "other", steps=STEPS, **opts)


def test_sdxl_generates_with_its_guidance(prompt_file: Path, tmp_path: Path) -> None:
    result = generate("tiny-sdxl", str(prompt_file), tmp_path / "xl", images_per_prompt=1, steps=STEPS, limit=1,
                      show_progress=False)
    assert result["kind"] == "sdxl" and result["guidance"] == 5.0 and len(read_index(tmp_path / "xl")) == 1


def test_missing_model_folder_is_a_user_error(prompt_file: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(StyleprefsError, match="missing"):
        generate(str(tmp_path / "model"), str(prompt_file), tmp_path / "g", show_progress=False)
