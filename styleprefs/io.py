"""Atomic writes (temp file in the same folder, then rename), file hashing and output-folder guards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from styleprefs.errors import StyleprefsError, one_line

ROW_GROUP_ROWS = 100  # about 30 MB of Pick-a-Pic images per row group


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds, with the mode
    ``open()`` would give a new file (the umask's; ``mkstemp`` makes 0600, as does safetensors' writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(folder: Path) -> None:
    """Give ``folder`` and the folders and files under it the modes ``mkdir()`` and ``open()`` would under the
    umask, where a writer made them private (safetensors writes 0600; ``mkdtemp`` makes 0700). Files with other
    hard links (a base model's, shared with its cache) and entries of other users are left alone."""
    mask, me = umask(), os.geteuid()
    for entry in [Path(folder), *Path(folder).rglob("*")]:
        info = entry.lstat()
        if info.st_uid != me or stat.S_ISLNK(info.st_mode) or (stat.S_ISREG(info.st_mode) and info.st_nlink > 1):
            continue
        mode = (0o777 if stat.S_ISDIR(info.st_mode) else 0o666) & ~mask
        if stat.S_IMODE(info.st_mode) != mode:
            os.chmod(entry, mode)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield an empty folder ``.NAME.partial`` beside ``path`` (which must not exist); rename it to ``path`` only if
    the block succeeds, so ``path`` either does not exist or is complete. A partial folder left by a killed process
    is cleared."""
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_temp_files(folder: Path) -> None:
    """Delete the temporary files ``atomic_path`` leaves in ``folder`` when a process is killed."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def check_separate(out: Path, flag: str, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that is, contains or is inside an input: writing it would destroy
    the input (or, on a resume, feed the output back in)."""
    target = Path(out).resolve()
    for path in inputs:
        resolved = Path(path).resolve()
        if resolved == target or resolved in target.parents or target in resolved.parents:
            raise StyleprefsError(f"--out {out} overlaps {flag} {path}: choose an --out folder that is "
                                  f"neither inside nor around {flag}")


def write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)


def write_json(data: dict, path: Path) -> None:
    """Write ``data`` as JSON; NaN or infinity (not JSON: other readers refuse the file) is a bug and raises
    ValueError before anything is written."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file's object, ``{}`` if it does not exist; one-line StyleprefsError if it cannot be read."""
    return _read_mapping(Path(path), json.loads, "a JSON", "an object")


def read_yaml(path: Path) -> dict:
    """A YAML file's mapping, ``{}`` if it does not exist or is empty; one-line StyleprefsError if it cannot be read."""
    return _read_mapping(Path(path), _load_yaml, "a YAML", "a mapping")


def _load_yaml(text: str) -> Any:
    data = yaml.safe_load(text)
    return {} if data is None else data


def _read_mapping(path: Path, load: Callable[[str], Any], language: str, mapping: str) -> dict:
    if not path.is_file():
        return {}
    try:
        data = load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise StyleprefsError(f"{path} cannot be read: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise StyleprefsError(f"{path} cannot be read: it holds {language} {type(data).__name__}, not {mapping}")
    return data
