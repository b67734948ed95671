"""Swapping a rewritten dataset into its folder, crash-safe: ``filter-unsafe`` and ``relabel`` use it.

New files are staged in ``TARGET/<staging>/`` (shards in ``data/``, the manifest last). ``commit`` moves the
files they replace to ``TARGET/<backup>/``, the staged ones into place, and ``manifest.json`` last: that
rename is the commit. The card is then written and both folders deleted, the backup last. ``recover``,
run first by every later run, finishes a swap that committed and rolls back one that did not.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from styleprefs.card import write_card
from styleprefs.io import remove_temp_files


@dataclass(frozen=True)
class Swap:
    staging: str  # folder name of the staged files
    backup: str  # folder name of the replaced files until the swap is finished
    names: tuple[str, ...] = ("data", "quarantine.parquet", "rejects.parquet")  # what a swap may replace

    def commit(self, target: Path, fresh: bool) -> None:
        """Move the staged files into place (the replaced ones to the backup); the manifest rename commits.

        ``fresh``: ``target`` was empty before (an ``--out`` folder)."""
        staging, backup = target / self.staging, target / self.backup
        backup.mkdir()
        names = [name for name in self.names if (staging / name).exists()]
        for name in names:
            if (target / name).exists():
                os.replace(target / name, backup / name)
        for name in names:
            os.replace(staging / name, target / name)
        os.replace(staging / "manifest.json", target / "manifest.json")
        self.recover(target, fresh)

    def recover(self, target: Path, fresh: bool) -> None:
        """Finish a swap into ``target`` that committed (card, then cleanup), or undo one that did not.

        ``fresh``: ``target`` was empty before (``--out``), so whatever was moved into it goes."""
        staging, backup = target / self.staging, target / self.backup
        remove_temp_files(target)
        if backup.exists() and not (staging / "manifest.json").exists():
            write_card(target)
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(backup)  # last: while it exists, the swap is not finished
            return
        if backup.exists() or (fresh and staging.exists()):
            for name in self.names:
                if fresh or (backup / name).exists():
                    _remove(target / name)
                if (backup / name).exists():
                    os.replace(backup / name, target / name)
            shutil.rmtree(backup, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
