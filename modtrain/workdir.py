"""One folder per experiment: data, modules, caches, reports, logs. No path is hard-coded."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modtrain.recipe import Recipe


@dataclass(frozen=True)
class Workdir:
    root: Path
    data: Path

    @classmethod
    def for_recipe(cls, recipe: Recipe, root: str | Path) -> "Workdir":
        root = Path(root)
        source = recipe.data["source"]
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

    def cache(self, producer: str, split: str) -> Path:
        return self.caches / producer / f"{split}.h5"
