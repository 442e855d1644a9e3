"""Changes to model folders: work folders (`models/.staging/NAME.PID/`), recovery after a kill,
and removal.

A preparation or removal works in its own folder while it holds the store lock. Before its
first rename in the store it writes `journal.json` there: the model, its folder in the store,
and what the manifest will list for it once the change is committed. Its old folder is kept as
`previous` until the manifest is written. A process killed with -9 leaves its work folder
behind; the next one that takes the lock settles it (`recover`): a committed change loses its
leftovers, an uncommitted one is undone, and the folder is deleted. Only work folders of dead
processes can exist while the lock is held, so nothing in use is ever touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from offline_asr.errors import StoreError
from offline_asr.fsutil import write_atomic
from offline_asr.registry.schemas import Artifact, Manifest, StorePath
from offline_asr.registry.store import ModelStore, diff_model, restore_files

log = logging.getLogger(__name__)

JOURNAL = "journal.json"
NEW = "model"  # the new folder, until it is moved into the store
PREVIOUS = "previous"  # the store's old folder, until the manifest no longer needs it
DOWNLOADS = "downloads"  # interrupted hub downloads: kept, the next preparation resumes them
WORK_NAME = re.compile(r".+\.[0-9]+")  # NAME.PID: anything else in .staging is left alone


class Journal(BaseModel):
    """What a work folder is about to change in the store."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    folder: StorePath
    after: list[Artifact] | None  # what the manifest lists once committed; None: removed


def work_folder(store: ModelStore, name: str) -> Path:
    """A fresh work folder for this process (call with the store lock held)."""
    folder = store.staging / f"{name}.{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def write_journal(work: Path, journal: Journal) -> None:
    """Record the change before the first rename in the store (fsynced, atomic)."""
    write_atomic(work / JOURNAL, journal.model_dump_json(indent=2) + "\n")


def recover(store: ModelStore, manifest: Manifest) -> None:
    """Settle and delete the work folders of killed processes (call with the lock held)."""
    if store.staging.is_symlink():
        raise StoreError(
            f"{store.staging} is a symbolic link; offline-asr keeps its work folders there and "
            "deletes old ones, so it does not follow links: remove the link"
        )
    if not store.staging.is_dir():
        return
    for work in sorted(store.staging.iterdir()):
        if not WORK_NAME.fullmatch(work.name) or work.is_symlink() or not work.is_dir():
            continue
        journal_path = work / JOURNAL
        if journal_path.is_file():
            try:
                journal = Journal.model_validate_json(journal_path.read_bytes())
            except (OSError, ValidationError) as error:
                log.warning("leaving %s alone: its journal is unreadable (%s)", work, error)
                continue
            if not _settle(store, manifest, work, journal):
                continue
        shutil.rmtree(work, ignore_errors=True)


def _settle(store: ModelStore, manifest: Manifest, work: Path, journal: Journal) -> bool:
    """Finish or undo one change; False when it is not ours to touch (the folder belongs to
    another model: a journal that was not written by offline-asr)."""
    owners = {m.id for m in manifest.models if m.path == journal.folder} - {journal.model_id}
    if owners:
        log.warning("leaving %s alone: %s belongs to %s", work, journal.folder, owners.pop())
        return False
    entry = manifest.get(journal.model_id)
    listed = entry.artifacts if entry is not None and entry.path == journal.folder else None
    if listed == journal.after:
        return True  # committed: `previous` is no longer needed
    target = store.root / journal.folder
    if journal.after is not None and not (work / NEW).exists() and target.exists():
        target.rename(work / "unregistered")  # moved in, never registered
        log.warning("removed %s: a killed preparation left it unregistered", target)
    if (work / PREVIOUS).exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        (work / PREVIOUS).rename(target)
        log.warning("restored %s as the manifest lists it", target)
    return True


def remove_model(store: ModelStore, model_id: str) -> Manifest:
    """Drop a model's entry and files; the folder is moved aside first and restored on failure."""
    with store.locked():
        manifest = store.load()
        recover(store, manifest)
        model = store.get(manifest, model_id)
        folder = store.root / model.path
        work = work_folder(store, f"removed-{model_id}")
        goldens: dict[Path, bytes | None] = {}
        try:
            write_journal(work, Journal(model_id=model_id, folder=model.path, after=None))
            if folder.exists():
                folder.rename(work / PREVIOUS)
            goldens = store.replace_goldens({model_id: None})
            remaining = [m for m in manifest.models if m.id != model_id]
            change = diff_model(model, None)
            assert change is not None
            updated = store.save(manifest.model_copy(update={"models": remaining}), [change])
        except BaseException:
            restore_files(goldens)
            if (work / PREVIOUS).exists():
                (work / PREVIOUS).rename(folder)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return updated
