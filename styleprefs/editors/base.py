"""The interface every editor implements."""

from __future__ import annotations

from typing import Protocol, Sequence

from PIL import Image


class Editor(Protocol):
    name: str  # registry name, e.g. "classic"
    model_id: str  # what the edited slot's model_{0,1} column records

    def params(self) -> dict:
        """Everything that determines the edit (recorded as the ``edit_params`` column)."""
        ...

    def edit(
        self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]
    ) -> list[Image.Image]:
        """Edit each image into the style; output i depends only on (images[i], captions[i], seeds[i])."""
        ...
