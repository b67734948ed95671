"""Editors turn an image into its styled version: ``load_editor(name, style)``."""

from __future__ import annotations

from styleprefs.editors.base import Editor
from styleprefs.errors import StyleprefsError
from styleprefs.style import StyleSpec

EDITORS = ("classic",)


def load_editor(name: str, style: StyleSpec) -> Editor:
    if name == "classic":
        from styleprefs.editors.classic import ClassicEditor

        try:
            return ClassicEditor(style.classic.filter, style.classic.params)
        except ValueError as exc:
            raise StyleprefsError(f"style {style.name!r}, classic editor: {exc}") from None
    raise StyleprefsError(f"unknown editor {name!r}: use one of {', '.join(EDITORS)}")


__all__ = ["EDITORS", "Editor", "load_editor"]
