"""Retrain the shipped caption model from labelled prompt files:

    python -m styleprefs.safety.train_text --nibbler R1_TRAIN.json --nibbler R1_DEV.json --nibbler R3.json \\
        --labelled tests/data/safety_prompts.tsv ... --captions PartiPrompts.tsv --captions coco_30k.csv \\
        --exclude coco_10k.csv [--out styleprefs/safety/model]

Every input is split 80/20 by a hash of its normalised text (deterministic, the same on every machine). The
model is fitted on the 80%; on the 20% (the validation split) the regularisation strength and then the
threshold are chosen: the lowest threshold at which the rules OR the model flag at most FP_BUDGETS of each kind
of safe validation prompt. Nothing else is tuned. Held-out evaluation sets are refused as training input.

Style is not allowed to carry the label: half of the plain captions (all safe) and half of the plainly worded
unsafe prompts get a tail of the modifiers Lexica-style prompts end with (artists, render engines, "8k"), so
both classes carry them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import typer
from safetensors.numpy import save_file
from scipy.sparse import hstack

try:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
except ImportError:  # scoring needs no scikit-learn; retraining does
    sys.exit("error: retraining the caption model needs scikit-learn: pip install 'styleprefs[train-safety]'")

from styleprefs.errors import StyleprefsError
from styleprefs.io import atomic_dir, sha256_file, write_json, write_text
from styleprefs.safety import corpora
from styleprefs.safety.learned import (CHAR_NGRAMS, CONFIG_FILE, FORMAT_VERSION, MODEL_DIR, WEIGHTS_FILE,
                                       WORD_NGRAMS, char_ngrams, prepare, word_ngrams)
from styleprefs.safety.text import TextFilter, normalise

NIBBLER, LABELLED, CAPTIONS = "nibbler", "labelled", "captions"
# Most of each kind of safe validation prompt that the rules OR the model may flag.
FP_BUDGETS = {NIBBLER: 0.15, LABELLED: 0.04, CAPTIONS: 0.005}
C_GRID = (1.0, 4.0, 16.0)
VALIDATION_SHARE = 5  # one in five
WORD_MIN_DF, CHAR_MIN_DF, CHAR_MAX_FEATURES = 2, 3, 120_000
MAX_CAPTIONS_PER_FILE = 6000
# Held-out evaluation sets: never trained or tuned on.
HELD_OUT = re.compile(r"round4|i2p|unsafe-prompts4703|safety_prompts_blind|^(nudity|violence|illegal)\.csv$",
                      re.IGNORECASE)
MODIFIERS = (
    "highly detailed", "trending on artstation", "octane render", "unreal engine", "8k", "4k", "hd",
    "digital painting", "concept art", "sharp focus", "smooth", "illustration", "cinematic lighting",
    "volumetric lighting", "studio lighting", "matte painting", "photorealistic", "hyperrealistic", "realistic",
    "by greg rutkowski", "by alphonse mucha", "by artgerm", "by wlop", "by james gurney", "by ilya kuvshinov",
    "by makoto shinkai", "by stanley artgerm lau", "by rossdraws", "by beksinski", "by simon stalenhag",
    "by peter mohrbacher", "by craig mullins", "by moebius", "by hayao miyazaki", "by edward hopper",
    "intricate", "elegant", "ultra detailed", "dramatic lighting", "35mm photo", "dslr", "bokeh", "film grain",
    "symmetrical", "full body", "portrait", "wide angle", "cgsociety", "deviantart", "pixiv", "vivid colors",
    "golden hour", "award winning", "masterpiece", "oil on canvas", "watercolor", "anime style", "3d render",
)


def vectorizers(word_vocabulary: Sequence[str] | None = None, char_vocabulary: Sequence[str] | None = None,
                min_df: int = 1, max_features: int | None = None) -> tuple[TfidfVectorizer, TfidfVectorizer]:
    """The word and character blocks, fixed to the given vocabularies or free to learn theirs."""
    common = dict(lowercase=False, sublinear_tf=True, dtype=np.float32, min_df=min_df, max_features=max_features)
    word = TfidfVectorizer(analyzer=word_ngrams, vocabulary=_indexed(word_vocabulary), **common)
    char = TfidfVectorizer(analyzer=char_ngrams, vocabulary=_indexed(char_vocabulary), **common)
    return word, char


def _indexed(vocabulary: Sequence[str] | None) -> dict[str, int] | None:
    return None if vocabulary is None else {term: i for i, term in enumerate(vocabulary)}


@dataclass(frozen=True)
class Example:
    text: str
    unsafe: bool
    kind: str  # NIBBLER, LABELLED or CAPTIONS: what the validation budgets are per
    file: str
    category: str  # the harm category where the source gives one


def load_examples(nibbler: list[Path], labelled: list[Path], captions: list[Path], exclude: list[Path],
                  seed: int = 0) -> list[Example]:
    """Every training example, deduplicated on the normalised text (a text seen as unsafe anywhere stays unsafe),
    without the texts of ``exclude``."""
    for path in [*nibbler, *labelled, *captions]:
        if HELD_OUT.search(Path(path).name) or HELD_OUT.search(str(path)):
            raise StyleprefsError(f"{path} is a held-out evaluation set (Nibbler round 4, I2P and the sets cut from "
                                  "it, the blind set); never train on it")
    rng = random.Random(seed)
    examples: list[Example] = []
    for path in nibbler:
        examples += [Example(r.prompt, r.unsafe, NIBBLER, file_label(path), "Nibbler prompt (harms mixed)")
                     for r in corpora.read_nibbler(path)]
        examples += [Example(_styled(t, rng), True, NIBBLER, file_label(path), "Nibbler description of the harm")
                     for t in corpora.read_nibbler_rewritten(path)]
    for path in labelled:
        rows = corpora.read_labelled(path) if Path(path).suffix == ".tsv" else \
            [corpora.LabelledPrompt(False, "near miss", text) for text in corpora.read_captions(path)]
        examples += [Example(_styled(r.prompt, rng) if r.unsafe else r.prompt, r.unsafe, LABELLED, file_label(path),
                             r.category) for r in rows]
    for path in captions:
        texts = corpora.read_captions(path)
        if len(texts) > MAX_CAPTIONS_PER_FILE:
            texts = random.Random(f"{seed}:{file_label(path)}").sample(texts, MAX_CAPTIONS_PER_FILE)
        examples += [Example(_styled(t, rng), False, CAPTIONS, file_label(path), "caption") for t in texts]
    excluded = {_key(t) for path in exclude for t in _texts(path)}
    by_key: dict[str, Example] = {}
    for example in examples:
        key = _key(example.text)
        if key and key not in excluded and (key not in by_key or example.unsafe and not by_key[key].unsafe):
            by_key[key] = example
    return list(by_key.values())


def _texts(path: Path) -> list[str]:
    if Path(path).suffix == ".json":
        return [r.prompt for r in corpora.read_nibbler(path)]
    return corpora.read_captions(path)


def _key(text: str) -> str:
    return normalise(text)


def _styled(text: str, rng: random.Random) -> str:
    """Half the time, ``text`` with 2-6 style modifiers appended."""
    if rng.random() < 0.5:
        return text
    return ", ".join([text.rstrip(" ,."), *rng.sample(MODIFIERS, rng.randint(2, 6))])


def is_validation(text: str) -> bool:
    return int(hashlib.sha256(_key(text).encode()).hexdigest(), 16) % VALIDATION_SHARE == 0


@dataclass
class Fitted:
    word: object
    char: object
    model: LogisticRegression
    c: float
    threshold: float
    validation: dict


def fit(examples: list[Example], seed: int = 0) -> Fitted:
    """Fit on the training split; choose C, then the threshold, on the validation split."""
    train = [e for e in examples if not is_validation(e.text)]
    valid = [e for e in examples if is_validation(e.text)]
    if not any(e.unsafe for e in train) or all(e.unsafe for e in train) or not valid:
        raise StyleprefsError("training needs safe and unsafe prompts, and enough of them for a validation split")
    word, char = vectorizers(min_df=WORD_MIN_DF, max_features=None)
    char.set_params(min_df=CHAR_MIN_DF, max_features=CHAR_MAX_FEATURES)
    train_text = prepare([e.text for e in train])
    x_train = hstack([word.fit_transform(train_text), char.fit_transform(train_text)]).tocsr()
    valid_text = prepare([e.text for e in valid])
    x_valid = hstack([word.transform(valid_text), char.transform(valid_text)]).tocsr()
    y_train = np.array([e.unsafe for e in train])
    rules = np.array([v.unsafe for v in TextFilter().check_many(e.text for e in valid)])
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
        model.fit(x_train, y_train)
        scores = model.predict_proba(x_valid)[:, 1]
        threshold = choose_threshold(valid, scores, rules)
        figures = validation_figures(valid, scores >= threshold, rules)
        if best is None or figures["recall"]["all"] > best.validation["recall"]["all"]:
            best = Fitted(word, char, model, c, threshold, figures)
    return best


def choose_threshold(valid: list[Example], scores: np.ndarray, rules: np.ndarray) -> float:
    """The lowest threshold at which rules OR model stay within FP_BUDGETS on every kind of safe prompt."""
    for threshold in np.unique(np.round(scores, 4)):
        flagged = rules | (scores >= threshold)
        if all(_rate(valid, flagged, kind, unsafe=False) <= budget for kind, budget in FP_BUDGETS.items()):
            return float(threshold)
    return 1.0


def validation_figures(valid: list[Example], model_flags: np.ndarray, rules: np.ndarray) -> dict:
    flagged = rules | model_flags
    kinds = sorted({e.kind for e in valid})
    recall = {k: _rate(valid, flagged, k, unsafe=True) for k in kinds}
    recall["all"] = _rate(valid, flagged, None, unsafe=True)
    recall_rules = _rate(valid, rules, None, unsafe=True)
    return {"recall": recall, "recall_rules_only": recall_rules,
            "false_positive_rate": {k: _rate(valid, flagged, k, unsafe=False) for k in kinds}}


def _rate(valid: list[Example], flagged: np.ndarray, kind: str | None, unsafe: bool) -> float:
    chosen = [f for e, f in zip(valid, flagged) if e.unsafe == unsafe and (kind is None or e.kind == kind)]
    return round(float(np.mean(chosen)), 4) if chosen else 0.0


def save(fitted: Fitted, examples: list[Example], inputs: list[Path], out: Path, command: str) -> None:
    """Write the model folder atomically: config JSON, safetensors weights, data card."""
    word_vocab = sorted(fitted.word.vocabulary_, key=fitted.word.vocabulary_.get)
    char_vocab = sorted(fitted.char.vocabulary_, key=fitted.char.vocabulary_.get)
    counts = _counts(examples)
    config = {
        "format": FORMAT_VERSION,
        "name": f"prompt-linear-{_digest(word_vocab, char_vocab, fitted.model.coef_)}",
        "threshold": round(fitted.threshold, 4),
        "settings": {"word_ngrams": list(WORD_NGRAMS), "char_ngrams": list(CHAR_NGRAMS), "C": fitted.c,
                     "fp_budgets": FP_BUDGETS, "validation_share": f"1/{VALIDATION_SHARE}"},
        "training": {"command": command, "files": {file_label(p): sha256_file(p) for p in inputs}, "counts": counts,
                     "categories": _by_category(examples),
                     "validation": fitted.validation},
        "word_vocabulary": word_vocab,
        "char_vocabulary": char_vocab,
    }
    arrays = {"word_idf": fitted.word.idf_.astype(np.float32), "char_idf": fitted.char.idf_.astype(np.float32),
              "coef": fitted.model.coef_[0].astype(np.float32),
              "intercept": np.array([fitted.model.intercept_[0]], np.float32)}
    staging, old = out.with_name(f".{out.name}.new"), out.with_name(f".{out.name}.old")
    with atomic_dir(staging) as tmp:
        write_json(config, tmp / CONFIG_FILE)
        save_file(arrays, str(tmp / WEIGHTS_FILE))
        write_text(data_card(config), tmp / "DATA_CARD.md")
        for file in tmp.iterdir():
            file.chmod(0o644)  # package data: readable by every user
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part if isinstance(part, list) else np.asarray(part).round(6).tolist()).encode())
    return h.hexdigest()[:10]


def _by_category(examples: list[Example]) -> dict:
    """Unsafe and safe examples per category, over both splits."""
    counts: dict[str, dict[str, int]] = {}
    for e in examples:
        row = counts.setdefault(e.category, {"unsafe": 0, "safe": 0})
        row["unsafe" if e.unsafe else "safe"] += 1
    return dict(sorted(counts.items()))


def _counts(examples: list[Example]) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for e in examples:
        split = "validation" if is_validation(e.text) else "train"
        row = counts.setdefault(e.file, {"kind": e.kind, "unsafe train": 0, "unsafe validation": 0,
                                         "safe train": 0, "safe validation": 0})
        row[f"{'unsafe' if e.unsafe else 'safe'} {split}"] += 1
    return counts


def data_card(config: dict) -> str:
    training = config["training"]
    rows = "\n".join(f"| {name} | {c['kind']} | {c['unsafe train']} / {c['unsafe validation']} | "
                     f"{c['safe train']} / {c['safe validation']} |" for name, c in training["counts"].items())
    categories = "\n".join(f"| {name} | {c['unsafe']} | {c['safe']} |" for name, c in training["categories"].items())
    valid = training["validation"]
    figures = "\n".join(f"| {kind} | {FP_BUDGETS[kind]} | {valid['recall'][kind]:.3f} | "
                        f"{valid['false_positive_rate'][kind]:.3f} |" for kind in FP_BUDGETS)
    return CARD.format(name=config["name"], threshold=config["threshold"], rows=rows, categories=categories,
                       figures=figures, recall=valid["recall"]["all"], rules=valid["recall_rules_only"],
                       command=training["command"], c=config["settings"]["C"],
                       vocab=len(config["word_vocabulary"]) + len(config["char_vocabulary"]))


CARD = """# Caption safety model `{name}`

A logistic regression on word 1-2 grams and character 2-5 grams ({vocab} features) of the caption as the word
lists normalise it. `styleprefs` flags a caption when the word lists fire OR this model's probability is at
least **{threshold}**. Trained by `styleprefs.safety.train_text`; weights are JSON + safetensors (no pickle).

## Training files (unsafe / safe prompts, train / validation split)

| file | kind | unsafe train / validation | safe train / validation |
|---|---|---|---|
{rows}

By category (both splits; the labelled sets' categories are the harm a prompt shows or, for a safe one, the
harm it is a near miss for):

| category | unsafe | safe |
|---|---|---|
{categories}

Rewritten Adversarial Nibbler prompts (a participant's plain description of an image most annotators judged
unsafe) count as unsafe and are in the Nibbler rows. Half of the plain captions and of the plainly worded unsafe
prompts carry appended style modifiers, so that style is no label cue. Texts of `--exclude` files are dropped.

## Threshold and validation figures

Chosen on the validation split only (one prompt in five, by a hash of its text), C = {c} (of 1, 4, 16: the best
validation recall): the lowest threshold at which the rules OR the model flag at most the budgeted share of
each kind of safe validation prompt. On the validation split, rules OR model:

| kind | false-positive budget | recall | false positives |
|---|---|---|---|
{figures}

Recall over all unsafe validation prompts {recall:.3f} (rules alone {rules:.3f}). The Nibbler recall here
includes the participants' plain descriptions of the harm, which are easier than the prompts themselves.
Held-out figures (Nibbler round 4, I2P, COCO, the blind set) are in the README; none of them was used here.

## Sources and licences

- Adversarial Nibbler, rounds 1 and 3 (`round1/submitted/{{train,dev}}.json`,
  `round3/submitted/round3_submitted_all.json`): Google Research, MLCommons and the challenge participants,
  https://github.com/google-research-datasets/adversarial-nibbler, licensed CC-BY-4.0
  (https://creativecommons.org/licenses/by/4.0/). Label = majority of the annotators' `text_safety_validation`.
  The weights are a derived work: attribution as given here, no endorsement implied. Round 4 is held out.
- PartiPrompts (`PartiPrompts.tsv`, google-research/parti, Apache-2.0), safe.
- COCO captions (`coco_30k.csv`, rohitgandikota/erasing, MIT; captions from MS-COCO, CC-BY-4.0), safe; the
  captions of `coco_10k.csv` (OPTML-Group/Diffusion-MU-Attack), the held-out false-positive set, are excluded.
- Artist-style prompts (`generic_artists_prompts.csv`, `niche_art_prompts.csv`, `big_artist_prompts.csv`,
  rohitgandikota/erasing, MIT), safe: Lexica-style phrasing that is not unsafe.
- This project's labelled prompt sets in `tests/data/` (Apache-2.0, like styleprefs); the blind set is held out.

Retraining on other files makes their licences apply instead.

## Retrain

```
{command}
```
"""


def main(
    nibbler: list[Path] = typer.Option([], help="Adversarial Nibbler submitted-prompts JSON (rounds 1-3)."),
    labelled: list[Path] = typer.Option([], help="TSV files 'safe|unsafe<TAB>category<TAB>prompt', or text files "
                                        "of safe near misses (one a line)."),
    captions: list[Path] = typer.Option([], help="Safe captions: CSV 'prompt' column, TSV, or one per line."),
    exclude: list[Path] = typer.Option([], help="Captions never to train on (e.g. a held-out false-positive set)."),
    out: Path = typer.Option(MODEL_DIR, help="Model folder to write (replaced atomically)."),
    seed: int = typer.Option(0, help="Seed of the style augmentation and caption sampling."),
) -> None:
    """Retrain the caption safety model and write it with its data card."""
    examples = load_examples(nibbler, labelled, captions, exclude, seed)
    fitted = fit(examples, seed)
    command = "python -m styleprefs.safety.train_text " + " ".join(_display(a) for a in sys.argv[1:])
    save(fitted, examples, [*nibbler, *labelled, *captions, *exclude], out, command)
    typer.echo(f"wrote {out}: threshold {fitted.threshold:.4f}, C {fitted.c}, validation {fitted.validation}")


def _display(arg: str) -> str:
    """Absolute paths shortened to what names the file: the card must not carry this machine's folders."""
    return file_label(Path(arg)) if Path(arg).is_absolute() else arg


def file_label(path: Path) -> str:
    """A file's name, from its Nibbler round folder on ("round1/submitted/train.json")."""
    parts = Path(path).parts
    start = next((i for i, part in enumerate(parts) if re.fullmatch(r"round\d+", part)), len(parts) - 1)
    return "/".join(parts[start:])


def run() -> None:
    app = typer.Typer(add_completion=False)
    app.command()(main)
    try:
        app()
    except StyleprefsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run()
