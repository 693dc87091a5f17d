"""One folder per experiment: data, modules, caches, reports, logs. No path is hard-coded."""
from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from modtrain.errors import ModtrainError
from modtrain.recipe import Recipe

LOCK = ".modtrain.lock"


@dataclass(frozen=True)
class Workdir:
    root: Path
    data: Path

    @classmethod
    def for_recipe(cls, recipe: Recipe, root: str | Path) -> "Workdir":
        root = Path(root)
        source = recipe.data.source
        return cls(root, root / "data" if source == "generate" else Path(source))

    @property
    def modules(self) -> Path:
        return self.root / "modules"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files, one folder per job (``tensorboard --logdir``)."""
        return self.root / "tensorboard"

    def cache(self, producer: str, split: str) -> Path:
        return self.caches / producer / f"{split}.h5"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the workdir for one command that trains or writes caches; a second one stops at
        once naming the holder's pid. The OS releases the lock when its holder dies, killed or not."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        try:  # never through a symbolic link: the pid would overwrite whatever file it points at
            handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
        except OSError:
            if path.is_symlink():
                raise ModtrainError(f"{path} is a symbolic link (to {os.readlink(path)}); the workdir's lock must "
                                    f"be a plain file: remove the link") from None
            raise
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ModtrainError(f"{self.root} is busy: another modtrain command (pid {holder}) is training in it; "
                                f"wait for it to end or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
