"""The one model resolver (styleprefs.resolve) every loader uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from styleprefs import tiny
from styleprefs.errors import StyleprefsError
from styleprefs.resolve import is_hub_id, is_offline_name, locate, resolve_model


def test_offline_names_are_the_tiny_builders(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "default_cache_dir", lambda: cache)
    assert all(is_offline_name(n) for n in ("tiny", "tiny-clip", "mini", "mini-clip"))
    resolved = locate("tiny", tiny="tiny-clip")  # "tiny" stands for the caller's own kind
    assert resolved.name == "tiny-clip" and resolved.local
    assert resolved.location == str(tiny.ensure_tiny("tiny-clip", cache))


def test_paths_and_hub_ids(tmp_path: Path) -> None:
    assert locate(str(tmp_path)).local and not locate("owner/model").local
    assert is_hub_id("owner/model") and not any(map(is_hub_id, ("./a/b", "/a/b", "a/b/c", "~/x", "bad id/x")))
    (tmp_path / "model").mkdir()
    with pytest.raises(StyleprefsError, match=r"CLIP model folder .* is not a model folder: it holds none of "
                                              r"config\.json, unet/$"):
        resolve_model(str(tmp_path / "model"), what="CLIP", files=("config.json",), components=("unet",))
    (tmp_path / "model" / "unet").mkdir()
    with pytest.raises(StyleprefsError, match=r"CLIP model folder .* lacks config\.json \(expected config\.json, unet/\)"):
        resolve_model(str(tmp_path / "model"), what="CLIP", files=("config.json",), components=("unet",))
    with pytest.raises(StyleprefsError, match="neither an existing folder nor a Hub id"):
        resolve_model(str(tmp_path / "nowhere"), what="CLIP")
    assert resolve_model("owner/model", what="CLIP").location == "owner/model"
