"""The learned caption signal: a logistic regression on word and character n-grams, shipped with the package.

It sits beside the word lists (``styleprefs.safety.text``), not in place of them: a caption is unsafe when the
rules fire or when this model's probability reaches its threshold. It reads the caption as the lists do
(``normalise``: look-alike letters, leetspeak and spaced-out letters folded), cut into word 1-2 grams and
character 2-5 grams within words, each block TF-IDF weighted (sublinear tf) and L2-normalised.

The weights are plain data: ``model/prompt_model.json`` holds the settings, both vocabularies, the threshold
and the training record; ``model/prompt_model.safetensors`` the idf vectors, coefficients and intercept. Nothing
is unpickled. ``model/DATA_CARD.md`` says what it was trained on and how to retrain it
(``python -m styleprefs.safety.train_text``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer

from styleprefs.errors import StyleprefsError
from styleprefs.safety.text import normalise

MODEL_DIR = Path(__file__).with_name("model")
CONFIG_FILE, WEIGHTS_FILE = "prompt_model.json", "prompt_model.safetensors"
FORMAT_VERSION = 1
BACKEND = "text-model"
WORD_NGRAMS, CHAR_NGRAMS = (1, 2), (2, 5)


def vectorizers(word_vocabulary: Sequence[str] | None = None, char_vocabulary: Sequence[str] | None = None,
                min_df: int = 1, max_features: int | None = None) -> tuple[TfidfVectorizer, TfidfVectorizer]:
    """The word and character blocks, fixed to the given vocabularies or free to learn theirs."""
    common = dict(lowercase=False, sublinear_tf=True, dtype=np.float32, min_df=min_df, max_features=max_features)
    word = TfidfVectorizer(analyzer="word", ngram_range=WORD_NGRAMS, token_pattern=r"\S+",
                           vocabulary=_indexed(word_vocabulary), **common)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, vocabulary=_indexed(char_vocabulary), **common)
    return word, char


def _indexed(vocabulary: Sequence[str] | None) -> dict[str, int] | None:
    return None if vocabulary is None else {term: i for i, term in enumerate(vocabulary)}


def prepare(texts: Sequence[str]) -> list[str]:
    """Captions as the model reads them: the word lists' normalised form."""
    return [normalise(text) for text in texts]


class PromptModel:
    """Probability that a caption is unsafe; ``threshold`` is the one chosen on the training sources'
    validation split (see the data card). ``name`` identifies the weights in manifests."""

    def __init__(self, folder: Path = MODEL_DIR) -> None:
        folder = Path(folder)
        try:
            config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
            arrays = load_file(str(folder / WEIGHTS_FILE))
        except (OSError, ValueError) as exc:
            raise StyleprefsError(f"caption model in {folder}: cannot load it ({exc}); reinstall styleprefs or "
                                  "retrain it with `python -m styleprefs.safety.train_text`") from None
        if config.get("format") != FORMAT_VERSION:
            raise StyleprefsError(f"caption model in {folder}: format {config.get('format')!r}, this styleprefs "
                                  f"reads format {FORMAT_VERSION}; retrain it with `python -m styleprefs.safety.train_text`")
        self.word, self.char = vectorizers(config["word_vocabulary"], config["char_vocabulary"])
        self.word.idf_, self.char.idf_ = arrays["word_idf"], arrays["char_idf"]
        self.coef = arrays["coef"].astype(np.float32)
        self.intercept = float(arrays["intercept"][0])
        self.threshold = float(config["threshold"])
        self.name = config["name"]
        self.config = config

    def features(self, texts: Sequence[str]):
        prepared = prepare(texts)
        return hstack([self.word.transform(prepared), self.char.transform(prepared)]).tocsr()

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Probability in [0, 1] that each caption is unsafe, in input order."""
        if not len(texts):
            return []
        logits = self.features(texts) @ self.coef + self.intercept
        return (1.0 / (1.0 + np.exp(-logits))).tolist()
