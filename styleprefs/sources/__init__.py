"""Where pairs come from: ``open_source('sample' | 'pickapic' | PATH | REPO_ID, split)``."""

from __future__ import annotations

from styleprefs.sources.base import Source, SourcePair, key_to_int
from styleprefs.sources.pickapic import HUB_DEFAULT, PickapicSource


def open_source(spec: str, split: str | None = None) -> Source:
    if spec == "sample":
        from styleprefs.sources.sample import SampleSource

        return SampleSource(split=split)
    if spec == "pickapic":
        return PickapicSource(HUB_DEFAULT, split)
    return PickapicSource(spec, split)


__all__ = ["Source", "SourcePair", "key_to_int", "open_source", "PickapicSource"]
