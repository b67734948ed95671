"""The dataset format: Pick-a-Pic v2 columns with Pick-a-Pic's own types, plus provenance."""

from __future__ import annotations

import pyarrow as pa

PICKAPIC_FIELDS = [
    pa.field("caption", pa.string()),
    pa.field("jpg_0", pa.binary()),
    pa.field("jpg_1", pa.binary()),
    pa.field("label_0", pa.float64()),
    pa.field("label_1", pa.float64()),
    pa.field("image_0_uid", pa.string()),
    pa.field("image_1_uid", pa.string()),
    pa.field("image_0_url", pa.string()),  # the source's URL, null when unknown (Pick-a-Pic's are dead links)
    pa.field("image_1_url", pa.string()),
    pa.field("best_image_uid", pa.string()),
    pa.field("model_0", pa.string()),
    pa.field("model_1", pa.string()),
    pa.field("ranking_id", pa.int64()),
    pa.field("user_id", pa.int64()),
    pa.field("num_example_per_prompt", pa.int64()),  # PickScore's loader reads it; 1 when the source has none
    pa.field("has_label", pa.bool_()),
    pa.field("are_different", pa.bool_()),
    pa.field("created_at", pa.timestamp("ns")),
]

PROVENANCE_FIELDS = [
    pa.field("style", pa.string()),
    pa.field("editor", pa.string()),
    pa.field("edit_params", pa.string()),  # JSON
    pa.field("seed", pa.int64()),
    pa.field("source", pa.string()),  # "<source name>:<row key>"
    pa.field("source_preferred", pa.string()),  # jpg_0 | jpg_1 | tie: the source user's choice
    pa.field("source_edited", pa.string()),  # jpg_0 | jpg_1: which original image was edited
    pa.field("clip_direction", pa.float64()),  # null when the quality gate did not run
    pa.field("clip_image", pa.float64()),
    pa.field("clip_text_edit", pa.float64()),  # cos(edited image, styled caption); null when the gate did not run
    pa.field("clip_text_original", pa.float64()),  # cos(original image, source caption)
    pa.field("editor_nsfw", pa.bool_()),  # the editor's own safety checker flag (InstructPix2Pix), else null
    pa.field("safety_text_score", pa.float64()),  # text classifier's unsafe probability, null if not run
    pa.field("safety_image_score_0", pa.float64()),  # image check's score of jpg_0 (open_nsfw: > 0.8 flagged; SD checker: > 0), null if not run
    pa.field("safety_image_score_1", pa.float64()),
]

DATASET_SCHEMA = pa.schema(PICKAPIC_FIELDS + PROVENANCE_FIELDS)

# Appended by `styleprefs relabel`: the labels before any relabelling and the scorer's score of each image.
RELABEL_FIELDS = [
    pa.field("original_label_0", pa.float64()),
    pa.field("original_label_1", pa.float64()),
    pa.field("score_0", pa.float64()),
    pa.field("score_1", pa.float64()),
]

# What a source in Pick-a-Pic's schema must have; the rest of its columns are optional.
REQUIRED_SOURCE_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("reason", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("category", pa.string()),
        pa.field("matched", pa.string()),  # the term or score that triggered it
        pa.field("backend", pa.string()),
        pa.field("jpg_0", pa.binary()),  # the pair's images when filter-unsafe removed a built pair (the review
        pa.field("jpg_1", pa.binary()),  # page shows them blurred); null when the caption was caught before editing
    ]
)


def missing_columns(names: list[str] | tuple[str, ...]) -> list[str]:
    return [c for c in REQUIRED_SOURCE_COLUMNS if c not in names]
