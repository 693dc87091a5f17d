"""Recipes: one TOML file says what to train and how (docs/design.md, "Recipes").

A recipe is found by name among those shipped (``--recipe nmn-typed``) or by path, then
overridden with ``--set key=value`` (``--set train.lr=3e-4``, ``--set modules.find.dropout=0.2``).
Every key is checked: an unknown one is an error that lists the valid ones. The resolved
recipe is written into the workdir, where later commands find it.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modtrain.epoch_log import LOGGERS
from modtrain.errors import ModtrainError
from modtrain.io import write_text
from modtrain.trust import TrustSection
from modtrain.values import build_section, check, setting

RESOLVED = "recipe.toml"
AUTO = "auto"  # data.train_split / data.val_split: chosen from the data folder's split names
GENERATED_SPLITS = ("train", "val", "test")  # the splits of data.source = "generate"

TOP_KEYS = {"name", "description", "interface", "seed", "data", "train", "modules", "surrogates", "trust", "search"}


@dataclass(frozen=True)
class DataSection:
    """``[data]``: where the data comes from and, when generated, how much of it."""

    source: str = "generate"          # or a path to a CLEVR or VQA folder
    # the folder's format: generated data is written in it; a folder on disk must be of it (auto: detected)
    format: str = setting("auto", choices=("auto", "clevr", "vqa"))
    families: str = "no-relate"
    images: int = setting(1000, low=1)
    val_images: int = setting(200, low=1)
    test_images: int = setting(200, low=0)
    questions_per_image: int = setting(10, low=1)
    image_size: int = setting(64, low=16)
    seed: int = 0
    backbone: str = setting("clevr-cnn", choices=("clevr-cnn", "resnet101"))
    # the splits modules train and stop on; assembly reports the others. "auto": the data folder's
    # only train* split, and the val* split named like it (train2014 → val2014, CLEVR-CoGenT
    # trainA → valA) or else its only val* split (``resolve_splits``); generated data: train, val
    train_split: str = AUTO
    val_split: str = AUTO
    # train (and stop early) only on questions of program depth ≤ this (paper §5.6); the
    # reported splits are never filtered. None: every depth.
    max_train_depth: int | None = setting(None, low=1)
    # generated data: keep program depths LOW-HIGH about equally common in every split ("3-12"),
    # so that every depth has questions to evaluate (paper §5.6); None: as the families fall
    balance_depth: str | None = None
    # VQA: the answer set is the N most frequent training answers (the reference code: 1000); a
    # parse word seen fewer times than min_instance_count in training becomes the <UNK> instance
    answers: int = setting(1000, low=1)
    min_instance_count: int = setting(3, low=1)
    # features or caches larger than this (bytes) are streamed by batches of rows, never loaded whole;
    # smaller ones are read whole once (default 1 GiB)
    in_memory_bytes: int = setting(1 << 30, low=0)
    # a training epoch's order: "uniform" (every row anywhere), "window" (batches drawn from windows of
    # shuffle_window HDF5 chunks of features, read whole and ahead: far less I/O when streaming) or
    # "auto": window exactly when the training split's features are over in_memory_bytes.
    # shuffle_window None: as many chunks as fill a quarter of in_memory_bytes
    shuffle: str = setting("auto", choices=("auto", "uniform", "window"))
    shuffle_window: int | None = setting(None, low=1)
    # clevr-cnn pretraining; None: the backbone's own defaults
    pretrain_images: int | None = setting(None, low=1)
    pretrain_epochs: int | None = setting(None, low=1)
    # shape, size and material heads learnt on recoloured views (datasets/features.py, ``recolored``):
    # a CoGenT backbone that cannot tell shape by colour; None: off
    pretrain_recolor: bool | None = None
    # clevr-cnn as two bodies, colour apart from shape, size and material (datasets/features.py,
    # ``ColorFormCNN``): find and describe read their attribute's channels; None: off
    pretrain_split: bool | None = None


COMPILE_BACKENDS = ("off", "inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class TrainSection:
    """``[train]``, and a module's own training keys in ``[modules.NAME]``."""

    lr: float = setting(1e-3, low=0.0, low_open=True)
    batch_size: int = setting(64, low=1)
    max_epochs: int = setting(30, low=1)
    patience: int = setting(4, low=1)
    weight_decay: float = setting(0.0, low=0.0)
    device: str = "auto"
    amp: bool = True
    # torch.compile of the modules a job trains (``nn.Module.compile``) with this backend:
    # "inductor" (torch's code generator), "aot_eager" or "eager" (traced, run as is: for checking
    # that a module traces); "off" runs them eagerly. A frame the backend fails on runs eagerly.
    compile: str = setting("off", choices=COMPILE_BACKENDS)
    num_workers: int = setting(0, low=0)
    # where each epoch's metrics go: logs/JOB.jsonl, and TensorBoard event files in tensorboard/JOB
    loggers: tuple[str, ...] = setting(("jsonl", "tensorboard"), choices=LOGGERS)

    def key(self) -> dict[str, Any]:
        """The settings a trained result depends on (not where or how fast it ran, nor what it logged)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("device", "num_workers", "amp", "compile", "loggers")}

    @staticmethod
    def searched() -> tuple[str, ...]:
        """The settings a hyperparameter search varies (and a fair comparison shares)."""
        return ("lr", "batch_size", "weight_decay", "max_epochs", "patience")


TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainSection)}
# Per-module keys that are not hyperparameters of the module itself: its surrogate, and that
# surrogate's settings for this module alone (``surrogate_dropout = 0.2`` overrides
# [surrogates.factorized] dropout), which a search can then vary per module; and where the module
# comes from when another experiment trained it (``modtrain.reuse``): ``from = "DIR"`` (a module
# package) with what the import declares and chooses.
IMPORT_KEYS = {"from": str, "finetune": bool, "features_compatible": bool, "new_instances": str}
MODULE_EXTRA_KEYS = {"surrogate", *IMPORT_KEYS}
SURROGATE_PREFIX = "surrogate_"


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with modtrain."""
    files = importlib.resources.files("modtrain.recipes")
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


SPLIT_KEYS = "--set data.train_split=NAME --set data.val_split=NAME"


def resolve_splits(train_split: str, val_split: str, splits: list[str] | tuple[str, ...],
                   where: str = "the data folder") -> tuple[str, str]:
    """The (training, validation) split names for ``data.train_split`` / ``data.val_split`` among a
    data folder's ``splits`` — the one rule for every command. A named split must be one of
    ``splits``; ``auto`` takes the only split named train*, and the val* split named like it
    (train → val, train2014 → val2014, trainA → valA) or else the only split named val*. Anything
    else (none, or several to choose from, or the same split twice) is one error that lists the
    splits and names the two keys. ``where`` names the folder in the error."""
    splits = list(splits)
    listed = ", ".join(splits) or "none"

    def named(key: str, value: str) -> str:
        if value not in splits:
            raise ModtrainError(f"data.{key} = {value!r}: {where} has no such split; its splits: {listed}; "
                                f"choose with {SPLIT_KEYS}")
        return value

    def only(kind: str, prefix: str, found: list[str]) -> str:
        if len(found) != 1:
            which = f"no {kind} split (named {prefix}*)" if not found else \
                f"{len(found)} {kind} splits ({', '.join(found)})"
            raise ModtrainError(f"{where} has {which}, so data.{prefix}_split = {AUTO!r} cannot choose one; "
                                f"its splits: {listed}; choose with {SPLIT_KEYS}")
        return found[0]

    train = (only("training", "train", [s for s in splits if s.startswith("train")]) if train_split == AUTO
             else named("train_split", train_split))
    if val_split == AUTO:
        twin = "val" + train[len("train"):] if train.startswith("train") else None
        val = twin if twin in splits else only("validation", "val",
                                              [s for s in splits if s.startswith("val") and s != train])
    else:
        val = named("val_split", val_split)
    if val == train:
        raise ModtrainError(f"data.train_split and data.val_split are both {train!r}: a module stops early on "
                            f"questions it does not train on; {where}'s splits: {listed}; choose with {SPLIT_KEYS}")
    from modtrain.datasets.scenes import cogent_condition

    trained, stopped = cogent_condition(train), cogent_condition(val)
    if trained and stopped and trained != stopped:
        raise ModtrainError(f"data.train_split = {train!r}, data.val_split = {val!r}: a module trained on CoGenT "
                            f"condition {trained} would stop early (select) on condition {stopped}, which CoGenT "
                            f"tests generalization to; stop on a split of condition {trained}; {where}'s splits: "
                            f"{listed}; choose with {SPLIT_KEYS}")
    return train, val


def _read(name_or_path: str | Path) -> tuple[dict, str]:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ModtrainError(f"recipe file not found: {path}")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        resource = importlib.resources.files("modtrain.recipes") / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ModtrainError(f"unknown recipe {name_or_path!r}; shipped: {', '.join(shipped_recipes())} "
                                f"(or give a path to a .toml file)")
        text, where = resource.read_text(encoding="utf-8"), f"recipe {name_or_path}"
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as e:
        raise ModtrainError(f"{where}: invalid TOML: {e}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` → (["train", "lr"], 0.0003); values are TOML literals, else strings."""
    if "=" not in item:
        raise ModtrainError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [k.strip() for k in key.split(".")], value


def _overridden(cls, raw: dict, overrides: list[str], where: str) -> "Recipe":
    """The recipe ``raw`` with ``overrides``; an error that the recipe alone does not have is
    blamed on the ``--set`` that brought it (the one whose key it names), not on the file."""
    try:
        return cls(_apply(copy.deepcopy(raw), overrides), where)
    except ModtrainError as e:
        if not overrides or str(e).startswith("--set"):
            raise
        try:
            cls(copy.deepcopy(raw), where)
        except ModtrainError:
            raise e from None
        text = str(e).removeprefix(f"{where}: ")
        named = [o for o in overrides if o.split("=", 1)[0].strip() in text] or list(overrides)
        raise ModtrainError(f"--set {' --set '.join(named)}: {text}") from None


class Recipe:
    """A validated recipe with its overrides applied."""

    def __init__(self, raw: dict, where: str = "recipe"):
        self.raw = raw
        self.where = where
        self.validate()

    @classmethod
    def load(cls, name_or_path: str | Path, overrides: list[str] = ()) -> "Recipe":
        raw, where = _read(name_or_path)
        return _overridden(cls, raw, overrides, where)

    def with_overrides(self, overrides: list[str]) -> "Recipe":
        """This recipe with ``--set`` overrides applied (checked like any recipe)."""
        return _overridden(Recipe, self.raw, overrides, self.where)

    # -- views -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def interface(self) -> str:
        return self.raw.get("interface", "typed")

    @property
    def seed(self) -> int:
        return int(self.raw.get("seed", 0))

    @property
    def data(self) -> DataSection:
        """``[data]``, with ``auto`` split names resolved against the recipe's data (``data_splits``):
        at once for generated data, from the folder's file names (read once) for a data folder.
        Commands resolve them first (``resolved``), so that the workdir's recipe names its splits."""
        if self._resolved_data is None:
            d = self._data
            if AUTO in (d.train_split, d.val_split):
                train, val = resolve_splits(d.train_split, d.val_split, *self.data_splits())
                d = dataclasses.replace(d, train_split=train, val_split=val)
            self._resolved_data = d
        return self._resolved_data

    def data_splits(self) -> tuple[list[str], str]:
        """The split names of the recipe's data and what to call it in a message: train, val, test
        for generated data, else those of the folder at ``data.source`` (``modtrain.data.folder_splits``)."""
        d = self._data
        if d.source == "generate":
            return list(GENERATED_SPLITS), "generated data"
        from modtrain.data import folder_splits

        return folder_splits(d.source, None if d.format == "auto" else d.format), f"data folder {d.source}"

    def with_splits(self, splits: list[str] | tuple[str, ...], where: str = "the data folder") -> "Recipe":
        """This recipe with ``data.train_split`` / ``data.val_split`` resolved among ``splits``
        (``resolve_splits``) and written into it: what a workdir's recipe.toml records."""
        train, val = resolve_splits(self._data.train_split, self._data.val_split, splits, where)
        raw = copy.deepcopy(self.raw)
        raw.setdefault("data", {}).update(train_split=train, val_split=val)
        return Recipe(raw, self.where)

    def resolved(self) -> "Recipe":
        """This recipe with its split names resolved against its own data (``data_splits``), named
        splits checked to exist there: what every command does where a recipe meets its data."""
        return self.with_splits(*self.data_splits())

    @property
    def trust(self) -> TrustSection:
        """``[trust]``: when a module trained through a surrogate is used (``modtrain.trust``)."""
        return self._trust

    def pretrain_options(self) -> dict[str, int]:
        """The clevr-cnn pretraining settings the recipe gives (the others stay at their defaults)."""
        return {k: v for k, v in dataclasses.asdict(self.data).items() if k.startswith("pretrain_") and v is not None}

    @property
    def modules(self) -> list[str]:
        """Trainable modules of the recipe, in file order."""
        return list(self.raw.get("modules", {}))

    def module_hparams(self, name: str) -> dict[str, Any]:
        section = self.raw.get("modules", {}).get(name, {})
        return {k: v for k, v in section.items()
                if k not in TRAIN_KEYS and k not in MODULE_EXTRA_KEYS and not k.startswith(SURROGATE_PREFIX)}

    def train_config(self, name: str) -> TrainSection:
        """Training settings of one module (or job): [train] overridden by [modules.NAME]."""
        return dataclasses.replace(self._train, **self._own_train.get(name, {}))

    def surrogate(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """(surrogate name, its hyperparameters) for a module trained through one."""
        section = self.raw.get("modules", {}).get(name, {})
        chosen = section.get("surrogate")
        if chosen is None:
            return None
        own = {k[len(SURROGATE_PREFIX):]: v for k, v in section.items() if k.startswith(SURROGATE_PREFIX)}
        return chosen, {**self.raw.get("surrogates", {}).get(chosen, {}), **own}

    def with_surrogate(self, module: str, surrogate: str) -> "Recipe":
        raw = copy.deepcopy(self.raw)
        raw.setdefault("modules", {}).setdefault(module, {})["surrogate"] = surrogate
        return Recipe(raw, self.where)

    def with_implementation(self, module: str, impl: str) -> "Recipe":
        """The recipe with ``[modules.MODULE] impl = IMPL`` (``modtrain train find --impl cell``)."""
        from modtrain.registry import module_class

        if module not in self.modules:
            raise ModtrainError(f"recipe {self.name} has no module {module!r}; its modules: {', '.join(self.modules)}")
        if "impl" not in module_class(module).defaults:
            raise ModtrainError(f"--impl: module {module} has one implementation; modules with several: "
                                f"{', '.join(m for m in self.modules if 'impl' in module_class(m).defaults)}")
        raw = copy.deepcopy(self.raw)
        raw.setdefault("modules", {}).setdefault(module, {})["impl"] = impl
        return Recipe(raw, self.where)  # validated there: an unknown implementation names the valid ones

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every key and value; keep the typed sections."""
        from modtrain.registry import module_class, surrogate_class
        from modtrain.types import INTERFACES
        from modtrain.values import Range, check_hyperparameters, check_section, hyperparameter_range

        raw, where = self.raw, self.where
        _known(raw, TOP_KEYS, where, "")
        if not isinstance(raw.get("name"), str):
            raise ModtrainError(f"{where}: 'name' (a string) is required")
        if raw["name"] in ("", ".", "..") or any(c in raw["name"] for c in "/\\\0"):
            raise ModtrainError(f"{where}: name = {raw['name']!r}: a recipe's name is one folder name (the default "
                                f"workdir is runs/NAME): no '/' or '\\', not '.' or '..'")
        check(f"{where}: interface", self.interface, str, Range(choices=tuple(INTERFACES)))
        check(f"{where}: seed", raw.get("seed", 0), int)
        self._data = build_section(DataSection, raw.get("data", {}), where, "data.")
        self._resolved_data = None
        if self._data.train_split == self._data.val_split != AUTO:
            raise ModtrainError(f"{where}: data.train_split and data.val_split are both {self._data.val_split!r}: "
                                f"a module stops early on questions it does not train on; name another "
                                f"validation split")
        from modtrain.datasets.generate import parse_depth_range

        try:
            parse_depth_range(self._data.balance_depth)
        except ModtrainError as e:
            raise ModtrainError(f"{where}: data.balance_depth = {self._data.balance_depth!r}: {e}") from None
        self._train = build_section(TrainSection, raw.get("train", {}), where, "train.")
        self._trust = build_section(TrustSection, raw.get("trust", {}), where, "trust.")
        self._own_train = {}
        if not isinstance(raw.get("modules", {}), dict):
            raise ModtrainError(f"{where}: modules must be a table of [modules.NAME] sections")
        for module, section in raw.get("modules", {}).items():
            cls = module_class(module)
            surrogate = surrogate_class(section["surrogate"]) if "surrogate" in section else None
            own_surrogate = {SURROGATE_PREFIX + k for k in surrogate.defaults} if surrogate else set()
            _known(section, set(cls.defaults) | TRAIN_KEYS | MODULE_EXTRA_KEYS | own_surrogate, where,
                   f"modules.{module}.")
            if surrogate is not None:
                for key in section.keys() & own_surrogate:
                    name = key[len(SURROGATE_PREFIX):]
                    check_hyperparameters({key: surrogate.defaults[name]}, {key: section[key]},
                                          {key: getattr(surrogate, "limits", {}).get(name) or
                                           hyperparameter_range(name, surrogate.defaults[name], {})},
                                          f"{where}: modules.{module}")
            check_hyperparameters(cls.defaults, self.module_hparams(module), cls.limits, f"{where}: modules.{module}")
            for key, kind in IMPORT_KEYS.items():
                if key in section:
                    check(f"{where}: modules.{module}.{key}", section[key], kind,
                          Range(choices=("refuse", "train")) if key == "new_instances" else Range())
            if "from" not in section and section.keys() & (IMPORT_KEYS.keys() - {"from"}):
                raise ModtrainError(f"{where}: modules.{module}: "
                                    f"{', '.join(sorted(section.keys() & IMPORT_KEYS.keys()))} say how to import "
                                    f"the module: give from = \"DIR\" (a module package) too")
            self._own_train[module] = check_section(TrainSection, {k: v for k, v in section.items() if k in TRAIN_KEYS},
                                                    where, f"modules.{module}.")
        for surrogate, section in raw.get("surrogates", {}).items():
            cls = surrogate_class(surrogate)
            _known(section, cls.defaults, where, f"surrogates.{surrogate}.")
            check_hyperparameters(cls.defaults, section, getattr(cls, "limits", {}), f"{where}: surrogates.{surrogate}")
        for module, space in raw.get("search", {}).items():
            if module not in raw.get("modules", {}) and module != "e2e":
                raise ModtrainError(f"{where}: [search.{module}] names a module the recipe does not train; "
                                    f"valid: {', '.join(self.modules)}, e2e")
            if isinstance(space, dict) and f"{SURROGATE_PREFIX}dropout" in space:
                # the MC-dropout statistics measure this dropout: a search could buy trust with a small one
                raise ModtrainError(f"{where}: search.{module}.{SURROGATE_PREFIX}dropout: the surrogate's dropout "
                                    f"is what its MC-dropout statistics measure (paper §5.3), so it is fixed, never "
                                    f"searched; set it with surrogates.<name>.dropout")

    # -- output ------------------------------------------------------------------------------
    def to_toml(self) -> str:
        """The resolved recipe as TOML."""
        return _dump_toml(self.raw)

    def write(self, workdir: Path) -> Path:
        path = Path(workdir) / RESOLVED
        write_text(path, f"# resolved recipe (from {self.where}, overrides applied)\n" + self.to_toml())
        return path


def _apply(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ModtrainError(f"--set {item}: {'.'.join(keys[:-1])} is not a table")
        node[keys[-1]] = value
    return raw


def _known(section: Any, valid, where: str, prefix: str) -> None:
    if not isinstance(section, dict):
        raise ModtrainError(f"{where}: {prefix.rstrip('.')} must be a table")
    unknown = sorted(set(section) - set(valid))
    if unknown:
        raise ModtrainError(f"{where}: unknown key {prefix}{unknown[0]}; valid: "
                            f"{', '.join(prefix + k for k in sorted(valid))}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ModtrainError(f"cannot write {value!r} to TOML")


def _dump_toml(table: dict, prefix: str = "") -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}{k}"
            scalars = any(not isinstance(x, dict) for x in v.values()) or not v
            out += (f"\n[{name}]\n" if scalars else "") + _dump_toml(v, name + ".")
    return out


def load_for_workdir(recipe: str | None, workdir: str | Path | None, overrides: list[str]) -> tuple[Recipe, Path]:
    """The recipe of a command and its workdir: ``--recipe`` (default: the workdir's resolved
    recipe) and ``--workdir`` (default: runs/<recipe name>)."""
    if recipe is None:
        if workdir is None or not (Path(workdir) / RESOLVED).exists():
            raise ModtrainError("give --recipe NAME (shipped: " + ", ".join(shipped_recipes()) +
                                ") or a --workdir that holds a recipe.toml")
        recipe = str(Path(workdir) / RESOLVED)
    loaded = Recipe.load(recipe, overrides)
    return loaded, Path(workdir) if workdir is not None else Path("runs") / loaded.name
