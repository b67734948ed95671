"""One model resolver for every loader: an offline name, a local folder, or a Hub id.

- Offline names are the random tiny models (``styleprefs.tiny.BUILDERS``: ``tiny*``), built on first use, and the
  trained mini models (``styleprefs.mini.ship.NAMES``: ``mini``, ``mini-clip``, ``mini-flow``), unpacked from the
  package's weights on first use (``ensure_offline``). ``tiny`` alone stands for the caller's own tiny kind.
  This module is where the two meet, so neither of them imports the other's side.
- An existing path is a local model; what it must hold is the caller's to say (``files``, ``components``).
- Anything else must look like a Hub id (``owner/name``); loading it needs network.

``locate`` decides which of the three a string is; ``resolve_model`` adds the folder and Hub-id checks
with one-line errors. Loaders keep their own wording for load failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from styleprefs import tiny as tiny_models
from styleprefs.errors import StyleprefsError, one_line
from styleprefs.mini import ship as mini_weights


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user gave (recorded in outputs), tiny names canonicalised
    location: str  # local folder or Hub id handed to from_pretrained
    local: bool


def is_offline_name(name: str) -> bool:
    return name in tiny_models.BUILDERS or name in mini_weights.NAMES


def ensure_offline(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of offline model ``name``, built (tiny) or unpacked (mini, keyed by the shipped weights'
    version) into the cache on first use."""
    if name in mini_weights.NAMES:
        return tiny_models.ensure_built(name, lambda path: mini_weights.assemble(name, path), mini_weights.version(),
                                        cache_dir)
    return tiny_models.ensure_tiny(name, cache_dir)


def offline_or_path(model: str) -> str:
    """An offline name's folder; anything else (a folder or a Hub id) unchanged."""
    return str(ensure_offline(model)) if is_offline_name(model) else model


def is_hub_id(model: str) -> bool:
    """``owner/name`` as the Hub spells repo ids (a path-like string never is one)."""
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def locate(model: str, tiny: str | None = None) -> ResolvedModel:
    """Where ``model`` loads from: an offline name's built folder, an existing path, else ``model`` as a Hub id."""
    name = tiny if model == "tiny" and tiny else model
    if is_offline_name(name):
        try:
            return ResolvedModel(name, str(ensure_offline(name)), True)
        except OSError as exc:
            raise StyleprefsError(f"cannot build the tiny model {name!r}: {one_line(exc)}") from None
    path = Path(model).expanduser()
    return ResolvedModel(model, str(path), True) if path.exists() else ResolvedModel(model, model, False)


def missing_parts(folder: Path, files: Sequence[str] = (), components: Sequence[str] = ()) -> list[str]:
    """The ``files`` and ``components`` (folders, listed with a trailing ``/``) that ``folder`` lacks."""
    return [f for f in files if not (folder / f).is_file()] + [f"{c}/" for c in components if not (folder / c).is_dir()]


def resolve_model(model: str, *, what: str, tiny: str | None = None, components: Sequence[str] = (),
                  files: Sequence[str] = ("model_index.json",)) -> ResolvedModel:
    """``locate(model, tiny)``, then: a local folder must hold every name in ``files`` and every folder in
    ``components``; a string that is no existing path must be a Hub id."""
    resolved = locate(model, tiny)
    if is_offline_name(resolved.name):
        return resolved
    path = Path(resolved.location)
    if resolved.local:
        if not path.is_dir():
            raise StyleprefsError(f"{what} model {model} is a file; pass a model folder or a Hub id")
        missing = missing_parts(path, files, components)
        expected = [*files, *(f"{c}/" for c in components)]
        if missing and missing == expected:
            raise StyleprefsError(f"{what} model folder {model} is not a model folder: it holds none of "
                                  f"{', '.join(expected)}")
        if missing:
            raise StyleprefsError(f"{what} model folder {model} lacks {', '.join(missing)} (expected "
                                  f"{', '.join(expected)})")
    elif not is_hub_id(model):
        raise StyleprefsError(f"{what} model {model!r} is neither an existing folder nor a Hub id (owner/name)")
    return resolved
