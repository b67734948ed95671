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
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file
from scipy.sparse import csr_matrix

from styleprefs.errors import StyleprefsError
from styleprefs.safety.text import normalise

MODEL_DIR = Path(__file__).with_name("model")
CONFIG_FILE, WEIGHTS_FILE = "prompt_model.json", "prompt_model.safetensors"
FORMAT_VERSION = 1
BACKEND = "text-model"
WORD_NGRAMS, CHAR_NGRAMS = (1, 2), (2, 5)


def word_ngrams(text: str) -> list[str]:
    """Word 1-2 grams of a normalised caption (words one space apart)."""
    words = text.split()
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def char_ngrams(text: str) -> list[str]:
    """Character 2-5 grams inside words, as scikit-learn's ``char_wb`` analyzer makes them, cached per word."""
    return [gram for word in text.split() for gram in _word_char_ngrams(word)]


@lru_cache(maxsize=1 << 17)
def _word_char_ngrams(word: str) -> tuple[str, ...]:
    padded = f" {word} "
    grams: list[str] = []
    for n in range(CHAR_NGRAMS[0], CHAR_NGRAMS[1] + 1):
        if len(padded) <= n:  # a word no longer than n counts once, whole
            grams.append(padded)
            break
        grams += [padded[i : i + n] for i in range(len(padded) - n + 1)]
    return tuple(grams)


def prepare(texts: Sequence[str]) -> list[str]:
    """Captions as the model reads them: the word lists' normalised form."""
    return [normalise(text) for text in texts]


class PromptModel:
    """Probability that a caption is unsafe; ``threshold`` is the one chosen on the training sources'
    validation split (see the data card). ``name`` identifies the weights in manifests.

    Scoring computes what scikit-learn's TfidfVectorizer.transform and the logistic regression compute (a test
    checks it against them), with each word's character n-grams looked up once and the counts summed in
    scipy: about four times faster, and scikit-learn is only needed to train.
    """

    _CACHE_LIMIT = 1 << 17

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
                                  f"reads format {FORMAT_VERSION}; retrain it with "
                                  "`python -m styleprefs.safety.train_text`")
        self.word_index = {term: i for i, term in enumerate(config["word_vocabulary"])}
        self.char_index = {term: i for i, term in enumerate(config["char_vocabulary"])}
        n_word = len(self.word_index)
        coef = arrays["coef"].astype(np.float64)
        self.word_weights = (arrays["word_idf"].astype(np.float64), coef[:n_word])
        self.char_weights = (arrays["char_idf"].astype(np.float64), coef[n_word:])
        self.intercept = float(arrays["intercept"][0])
        self.threshold = float(config["threshold"])
        self.name = config["name"]
        self.config = config
        self._char_ids: dict[str, tuple[int, ...]] = {}

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Probability in [0, 1] that each caption is unsafe, in input order."""
        prepared = prepare(texts)
        if not prepared:
            return []
        if len(self._char_ids) > self._CACHE_LIMIT:
            self._char_ids.clear()
        word_ids = [[i for i in map(self.word_index.get, word_ngrams(text)) if i is not None] for text in prepared]
        char_ids = [[i for word in text.split() for i in self._word_char_ids(word)] for text in prepared]
        logits = _block(word_ids, *self.word_weights) + _block(char_ids, *self.char_weights) + self.intercept
        return (1.0 / (1.0 + np.exp(-logits))).tolist()

    def _word_char_ids(self, word: str) -> tuple[int, ...]:
        ids = self._char_ids.get(word)
        if ids is None:
            found = map(self.char_index.get, _word_char_ngrams(word))
            ids = self._char_ids[word] = tuple(i for i in found if i is not None)
        return ids


def _block(docs: list[list[int]], idf: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """coef . x for each document, x its L2-normalised TF-IDF row (tf = 1 + log count) over the block's features."""
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    columns = np.fromiter(chain.from_iterable(docs), dtype=np.int64, count=int(lengths.sum()))
    rows = np.repeat(np.arange(len(docs)), lengths)
    x = csr_matrix((np.ones(len(columns)), (rows, columns)), shape=(len(docs), len(idf)))
    x.sum_duplicates()
    x.data = (1.0 + np.log(x.data)) * idf[x.indices]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return (x @ coef) / np.where(norms > 0, norms, 1.0)
