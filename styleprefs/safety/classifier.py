"""Optional caption safety backend: a Hugging Face sequence classifier, loaded by Hub id or local folder.

Known checkpoints (both DistilBERT-sized, fine on CPU):

- ``eliasalbouzidi/distilbert-nsfw-text-classifier``: labels ``safe`` / ``nsfw``.
- ``michellejieli/NSFW_text_classifier``: labels ``NSFW`` / ``SFW``.

The score of a text is the probability of the unsafe label(s): the summed softmax probability of the
unsafe labels, or for a multi-label model (``problem_type="multi_label_classification"``, one sigmoid
per label) the largest of their sigmoid probabilities.

Models are loaded with transformers' Auto classes and never with ``trust_remote_code``. Without network
a Hub id loads only from the local Hugging Face cache (set ``HF_HUB_OFFLINE=1`` to skip the download
retries); otherwise download the model elsewhere and pass its folder.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from styleprefs.errors import StyleprefsError
from styleprefs.resolve import is_hub_id, locate

BACKEND = "text safety classifier"
DEFAULT_TEXT_MODEL = "eliasalbouzidi/distilbert-nsfw-text-classifier"
# A label counts as unsafe by default when it contains one of these, not negated ("non-toxic", "not_nsfw").
UNSAFE_LABEL_PATTERN = re.compile(r"nsfw|unsafe|toxic|sexual|explicit|porn|hate|violen", re.IGNORECASE)
_ENDS_WITH_NEGATION = re.compile(r"(?:^|[\W_])(?:not|non|no)[\W_]?$", re.IGNORECASE)
_LOAD_ERRORS = (OSError, ValueError, RuntimeError)
_MAX_REASON = 160


def model_load_error(backend: str, model: str, exc: BaseException, hub_example: str) -> StyleprefsError:
    """One-line error for a model that failed to load, saying how to provide it locally.

    ``hub_example`` is the Hub id suggested when ``model`` is neither a folder nor a Hub id.
    """
    if Path(model).expanduser().is_dir():
        return StyleprefsError(f"{backend} {model!r}: cannot load this folder ({_one_line(exc)}); pass a folder "
                               "written by `hf download <model id> --local-dir DIR`")
    if not is_hub_id(model):
        return _no_such_model(backend, model, hub_example)
    return StyleprefsError(f"{backend} {model!r}: not available locally and cannot be downloaded "
                           f"({_one_line(exc)}); on a machine with network run "
                           f"`hf download {model} --local-dir DIR`, then pass DIR")


def model_location(backend: str, model: str, hub_example: str) -> str:
    """Where to load ``model`` from (``styleprefs.resolve.locate``: an offline name, a folder or a Hub id);
    fails fast, before any download attempt, when it is none of them."""
    resolved = locate(model)
    if not (resolved.local and Path(resolved.location).is_dir()) and not is_hub_id(model):
        raise _no_such_model(backend, model, hub_example)
    return resolved.location


def _no_such_model(backend: str, model: str, hub_example: str) -> StyleprefsError:
    return StyleprefsError(f"{backend} {model!r}: no such folder (nor a Hub id); on a machine with network run "
                           f"`hf download {hub_example} --local-dir DIR`, then pass DIR")


def _one_line(exc: BaseException) -> str:
    """The first sentence of the exception's message, shortened."""
    lines = str(exc).strip().splitlines()
    text = lines[0].split(". ")[0] if lines else type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


class TextSafetyClassifier:
    """Scores captions with a sequence classifier: the probability that each text is unsafe.

    ``unsafe_labels`` names the unsafe labels of ``model.config.id2label`` (case-insensitive); by default
    every label matching UNSAFE_LABEL_PATTERN that is not negated ("non-toxic") counts. Texts longer than
    the model's maximum length are truncated. ``name`` is the model as given and ``unsafe_labels`` the labels
    chosen, as the model spells them.
    """

    BACKEND = BACKEND

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, device: str = "cpu",
                 unsafe_labels: Sequence[str] | None = None, batch_size: int = 64) -> None:
        location = model_location(self.BACKEND, model, DEFAULT_TEXT_MODEL)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(location, trust_remote_code=False)
        except _LOAD_ERRORS as exc:
            raise model_load_error(self.BACKEND, model, exc, DEFAULT_TEXT_MODEL) from None
        self.model.to(device).eval()
        self.name, self.device, self.batch_size = model, device, batch_size
        self._multi_label = self.model.config.problem_type == "multi_label_classification"
        self.unsafe_ids = unsafe_label_ids(self.model.config.id2label, unsafe_labels, model,
                                           single_label=not self._multi_label)
        self.unsafe_labels = tuple(self.model.config.id2label[i] for i in self.unsafe_ids)
        self.max_length = _max_length(self.tokenizer.model_max_length, self.model)

    def scores(self, texts: Sequence[str]) -> list[float]:
        """Probability in [0, 1] that each text is unsafe, in input order."""
        texts = list(texts)
        return [score for start in range(0, len(texts), self.batch_size)
                for score in self._batch_scores(texts[start : start + self.batch_size])]

    def flags(self, texts: Sequence[str], threshold: float = 0.5) -> list[bool]:
        """Whether each text's score is above ``threshold``."""
        return [score > threshold for score in self.scores(texts)]

    @torch.inference_mode()
    def _batch_scores(self, texts: list[str]) -> list[float]:
        inputs = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits.float()
        if self._multi_label:
            probabilities = logits.sigmoid()[:, self.unsafe_ids].amax(dim=1)
        else:
            probabilities = logits.softmax(dim=-1)[:, self.unsafe_ids].sum(dim=1)
        return probabilities.clamp(0.0, 1.0).tolist()


def unsafe_label_ids(id2label: dict[int, str], unsafe_labels: Sequence[str] | None, model: str,
                     single_label: bool = True) -> list[int]:
    """Ids of the unsafe labels: those named in ``unsafe_labels`` (case-insensitive), else the default pattern.

    For a single-label (softmax) model not every label may be unsafe, or every text would score 1.
    """
    if unsafe_labels is not None:
        wanted = {label.casefold() for label in unsafe_labels}
        ids = [i for i, label in sorted(id2label.items()) if label.casefold() in wanted]
        missing = wanted - {id2label[i].casefold() for i in ids}
    else:
        ids = [i for i, label in sorted(id2label.items()) if _looks_unsafe(label)]
        missing = set()
    labels = ", ".join(repr(label) for _, label in sorted(id2label.items()))
    if missing or not ids:
        what = f"has no label {', '.join(sorted(map(repr, missing)))}" if missing else "has no unsafe-looking label"
        raise StyleprefsError(f"{BACKEND} {model!r} {what} (its labels: {labels}); "
                              "name its unsafe label(s) with --text-model-label")
    if single_label and len(ids) == len(id2label):
        raise StyleprefsError(f"{BACKEND} {model!r}: every label counts as unsafe (its labels: "
                              f"{labels}), so every text would score 1; name the unsafe one(s) with "
                              "--text-model-label")
    return ids


def _looks_unsafe(label: str) -> bool:
    match = UNSAFE_LABEL_PATTERN.search(label)
    return match is not None and not _ENDS_WITH_NEGATION.search(label[: match.start()])


def _max_length(tokenizer_max: int, model: PreTrainedModel) -> int:
    """The tokenizer's limit, capped by the model's position embeddings (some tokenizers set no limit)."""
    positions = getattr(model.config, "max_position_embeddings", None) or math.inf
    return int(min(tokenizer_max, positions))
