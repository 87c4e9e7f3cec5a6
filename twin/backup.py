"""Backup and restore of a twin's data directory, and the lock that says a twin is using it.

`backup` uses SQLite's online backup (a consistent copy while the twin runs and writes) of the
journal file (journal, snapshot, history, alerts, sink cursors) and copies the model registry.
`restore` refuses while a twin holds the data directory's lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import closing
from pathlib import Path

from twin import database
from twin.config import Settings
from twin.errors import ConfigError

LOCK_FILE = "twin.lock"


class DataDirLock:
    """An exclusive lock on the data directory, held while a twin runs on it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._unusable(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"another twin is running on {self.path.parent}; stop it first"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:  # a full disk
            os.close(fd)
            raise self._unusable(exc) from exc
        self._fd = fd

    def _unusable(self, exc: OSError) -> ConfigError:
        return ConfigError(f"cannot use the data directory {self.path.parent}: {exc}")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def backup(settings: Settings, target: Path) -> Path:
    """Copy the data directory's database (online, consistent) and models into `target`."""
    source = settings.journal_path
    if not source.exists():
        raise ConfigError(f"nothing to back up: {source} does not exist")
    target.mkdir(parents=True, exist_ok=True)
    copy = target / source.name
    if copy.exists():
        raise ConfigError(f"{copy} exists already; back up into an empty directory")
    with closing(database.connect(source)) as live, closing(database.connect(copy)) as out:
        live.backup(out)
    if settings.models_dir.exists():
        shutil.copytree(settings.models_dir, target / "models")
    return target


def restore(settings: Settings, source: Path) -> None:
    """Replace the data directory's database and models with a backup's."""
    database = source / settings.journal_path.name
    if not database.exists():
        raise ConfigError(f"{source} holds no backup ({database.name} is missing)")
    lock = DataDirLock(settings.data_dir)
    lock.acquire()  # refuses while a twin runs here
    try:
        target = settings.journal_path
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        shutil.copy2(database, target)
        if (source / "models").exists():
            shutil.rmtree(settings.models_dir, ignore_errors=True)
            shutil.copytree(source / "models", settings.models_dir)
    finally:
        lock.release()
