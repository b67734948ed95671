"""Style specs: a style is data (YAML), validated on load."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from PIL import Image

from styleprefs.errors import StyleprefsError, one_line

BUILTIN_DIR = Path(__file__).parent / "styles"
MAX_FILE_BYTES = 1 << 20
MAX_TEXT_CHARS = 2000  # templates, instructions, descriptions
# (min, max) of numeric keys, by key name; a number without an entry only has to be finite.
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "num_inference_steps": (1, 1000), "guidance_scale": (0, 100), "image_guidance_scale": (0, 100)}


@dataclass(frozen=True)
class InstructPix2PixSettings:
    instruction: str
    num_inference_steps: int = 100
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5


@dataclass(frozen=True)
class PromptDiffusionSettings:
    prompt: str  # template with {caption}
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    # Optional [source, target] image paths (relative to the YAML file) showing the edit; resolved
    # to absolute paths on load. Without it the editor shows the task with the classic filter.
    example_pair: tuple[str, str] | None = None


@dataclass(frozen=True)
class ClassicSettings:
    filter: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StyleSpec:
    name: str
    clip_text: str  # template with {caption}: the styled text of the CLIP quality gate
    classic: ClassicSettings
    instruct_pix2pix: InstructPix2PixSettings
    prompt_diffusion: PromptDiffusionSettings
    description: str = ""
    instruction: str = ""  # the instruction editors' text (kontext, qwen-image-edit); empty: instruct_pix2pix's

    def styled_caption(self, caption: str) -> str:
        return self.clip_text.format(caption=caption)

    @property
    def edit_instruction(self) -> str:
        """What the instruction editors are told: ``instruction``, else the InstructPix2Pix instruction."""
        return self.instruction or self.instruct_pix2pix.instruction

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def builtin_styles() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_style(name_or_path: str | Path) -> StyleSpec:
    """Load a built-in style by name or a user's style from a YAML path."""
    path = _resolve(str(name_or_path))
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise StyleprefsError(f"style file {path} must be a YAML mapping of keys to values")
    example_pair = _pop_example_pair(data, path)
    spec = _build(StyleSpec, data, f"style file {path}")
    if example_pair is not None:
        spec = dataclasses.replace(
            spec, prompt_diffusion=dataclasses.replace(spec.prompt_diffusion, example_pair=example_pair))
    for template in (spec.clip_text, spec.prompt_diffusion.prompt):
        _check_template(template, f"style file {path}")
    from styleprefs.editors.classic import effective_params  # deferred: the editors package imports this module

    try:
        effective_params(spec.classic.filter, spec.classic.params)
    except ValueError as exc:
        raise StyleprefsError(f"style file {path}: key 'classic': {exc}") from None
    return spec


def _read_yaml(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise StyleprefsError(f"style file {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise StyleprefsError(f"style file {path} cannot be read: {one_line(exc)}") from None


def _check_template(template: str, where: str) -> None:
    """A template must hold ``{caption}`` and no other field."""
    try:
        template.format(caption="")
    except (KeyError, IndexError, ValueError) as exc:
        raise StyleprefsError(f"{where}: template {template!r} may hold no field but {{caption}} ({one_line(exc)})") from None
    if "{caption}" not in template:
        raise StyleprefsError(f"{where}: template {template!r} must contain {{caption}}")


def _pop_example_pair(data: dict, path: Path) -> tuple[str, str] | None:
    """Take ``prompt_diffusion.example_pair`` out of ``data``: two image paths, relative to the YAML
    file's folder, each checked to be a readable image. Returns them absolute."""
    settings = data.get("prompt_diffusion")
    if not isinstance(settings, dict) or "example_pair" not in settings:
        return None
    settings = dict(settings)
    value = settings.pop("example_pair")
    data["prompt_diffusion"] = settings
    where = f"style file {path}: key 'prompt_diffusion.example_pair'"
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) and v for v in value)):
        raise StyleprefsError(f"{where} must be a list of two image paths [source, target], got {value!r}")
    resolved = []
    for item in value:
        image_path = Path(item).expanduser()
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        try:
            with Image.open(image_path) as img:
                img.verify()
        except (OSError, SyntaxError, ValueError) as exc:
            reason = "does not exist" if not image_path.exists() else f"is not an image ({one_line(exc)})"
            raise StyleprefsError(f"{where}: {image_path} {reason}") from None
        resolved.append(str(image_path.resolve()))
    return resolved[0], resolved[1]


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise StyleprefsError(f"style file {path} does not exist")
        return path
    builtin = BUILTIN_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise StyleprefsError(
            f"unknown style {name_or_path!r}: use one of {', '.join(builtin_styles())} or a path to a style .yaml"
        )
    return builtin


def _build(cls: type, data: dict, where: str) -> Any:
    """Instantiate a (nested) frozen dataclass from a mapping, naming any bad key or type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise StyleprefsError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(fields)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise StyleprefsError(f"{where}: missing required key {name!r}")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{where}: key {name!r}", name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise StyleprefsError(f"{where} must be a mapping")
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = {"str": str, "int": int, "dict": dict}.get(getattr(hint, "__name__", ""), hint)
    if not isinstance(value, expected) or isinstance(value, bool):
        raise StyleprefsError(f"{where} must be of type {expected.__name__}, got {_short(value)}")
    if isinstance(value, (int, float)):
        low, high = NUMBER_RANGES.get(name, (-math.inf, math.inf))
        if not (math.isfinite(value) and low <= value <= high):
            raise StyleprefsError(f"{where} must be a finite number between {low} and {high}, got {value!r}")
    if isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        raise StyleprefsError(f"{where} is longer than {MAX_TEXT_CHARS} characters")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
