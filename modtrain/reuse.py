"""Module packages: a trained module leaves its experiment and joins another (docs/reuse.md).

The method's paper closes on "reusing components and building neural libraries on the way":
modules trained once, composed into new networks without end-to-end training. A *package*
(``modtrain export``) is a folder that holds everything a module needs to move:

- ``weights.pt`` and ``package.json``: the card (hyperparameters, signature, metrics, trust
  statistics, the producers it trained on), the vocabularies it was trained with *as words*
  (its instances, the question tokens and the answers, in the order of its weights), the
  identity of the features it read (backbone, its weights' hash, shape) and where it came from.

``modtrain import`` (or ``[modules.NAME] from = "DIR"`` in a recipe, or ``run --from W``) brings
it into another workdir after checks that each fail in one line: the interface and signature
must match the recipe's; the features must come from the same backbone with the same shape,
unless the user declares them compatible; the weights must match the card's hash. The
vocabularies are mapped by word: rows of a token the package never saw take its ``<UNK>`` row
(what the module did with an unknown word at home), answers it never saw get zero weights (no
say in them), and instances it lacks are refused, listing them, or trained alone (new rows, the
rest frozen). Which axes of which parameter hold which vocabulary is found by building the
module twice with vocabularies of different sizes, so every module, new ones included, maps
without declaring anything.

An import is recorded in ``W/imports/NAME.json``. Frozen (the default), the module's card and
weights go to ``W/modules`` and the planner treats it as trained: its job never runs, its
virtual dataset is written from it, and modules after it train on it. ``finetune`` retrains it
from the imported weights instead; ``new_instances = "train"`` trains the instances it lacks.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import torch

from modtrain import __version__
from modtrain.card import describe_module, load_card, load_weights, save_module, state_sha256, weights_path
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import atomic_path, read_json, write_json
from modtrain.registry import NMNModule, build_module, module_class
from modtrain.types import Attended, Features, get_interface
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)

FORMAT = "modtrain-module-package"
FORMAT_VERSION = 1
PACKAGE = "package.json"
WEIGHTS = "weights.pt"
IMPORTS = "imports"
# What trains here after an import, by its mode
RETRAINS = {"frozen": "nothing", "finetune": "the whole module", "new-instances": "its new instances alone"}


@dataclass(frozen=True)
class ImportOptions:
    """What the user declares or chooses on import."""

    features_compatible: bool = False  # features of another backbone (or unknown) are declared the same kind
    new_instances: str = "refuse"      # instances the package lacks: "refuse" (listing them) or "train" them alone
    finetune: bool = False             # retrain the whole module from the imported weights
    replace: bool = False              # replace a module already trained in the workdir


# -- what a module was trained with ----------------------------------------------------------
def vocabularies(data: PreparedData) -> dict[str, Any]:
    """The data's vocabularies as words in id order: question tokens, answers, and each module's instances."""
    tokens = data.vocab["question_tokens"]
    return {"tokens": sorted(tokens, key=tokens.get), "answers": list(data.answers),
            "instances": {m: list(v) for m, v in data.vocab["instances"].items()}}


def features_identity(data: PreparedData, split: str) -> dict[str, Any]:
    """Which backbone made a split's features, and their shape (C, H, W)."""
    path = data.split(split).features_path
    if not path.exists():
        raise ModtrainError(f"{path} not found; run 'modtrain data features {data.root}'")
    with h5py.File(path, "r") as f:
        shape = [int(s) for s in f["features"].shape[1:]]
        backbone, digest = f.attrs.get("backbone"), f.attrs.get("backbone_sha256")
    return {"backbone": None if backbone is None else str(backbone),
            "backbone_sha256": None if digest is None else str(digest), "shape": shape}


def reads_image(name: str, interface: str) -> bool:
    """Whether a module reads the image features, directly or as attended vectors."""
    resolved = get_interface(interface)
    return any(resolved.resolve(t) in (Features, Attended) for t in module_class(name).inputs)


# -- export ------------------------------------------------------------------------------------
def export_module(workdir: Workdir, name: str, out: str | Path, recipe_name: str | None = None) -> dict[str, Any]:
    """``modtrain export NAME``: write the package of a trained module into ``out`` (a new or empty
    folder, or an earlier package of a module of that name, which is replaced)."""
    out = Path(out)
    card = load_card(workdir.modules, name)
    state = load_weights(workdir.modules, name, card)  # refuses weights that are not the card's
    if out.exists() and any(out.iterdir()) and not (out / PACKAGE).exists():
        raise ModtrainError(f"{out} exists and is not a module package; export into a new or empty folder")
    if (out / PACKAGE).exists():
        previous = read_json(out / PACKAGE, "module package").get("name")
        if previous != name:
            raise ModtrainError(f"{out} holds the package of {previous!r}; export {name} into another folder")
    data = PreparedData(workdir.data)
    split = data.splits()[0]  # every split's features come from one backbone (PreparedData checks)
    package = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "card": card,
        "vocabulary": {**{k: v for k, v in vocabularies(data).items() if k != "instances"},
                       "instances": list(card["instances"])},
        "features": features_identity(data, split),
        "exported": {"workdir": str(Path(workdir.root).resolve()), "recipe": recipe_name,
                     "data": str(Path(workdir.data).resolve()), "modtrain_version": __version__,
                     "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS) as tmp:
        torch.save(state, tmp)
    write_json(out / PACKAGE, package)  # last: a folder with package.json is a whole package
    return package


def read_package(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A package and its weights, checked: its format, and weights that are its card's."""
    directory = Path(directory)
    path = directory / PACKAGE
    if not path.exists():
        raise ModtrainError(f"{directory} is not a module package: {PACKAGE} not found (write one with "
                            f"'modtrain export NAME --workdir W --out {directory}')")
    package = read_json(path, "module package")
    if not isinstance(package, dict) or package.get("format") != FORMAT:
        raise ModtrainError(f"{path}: not a modtrain module package (format {package.get('format')!r}, "
                            f"expected {FORMAT!r})" if isinstance(package, dict) else f"{path}: not a JSON object")
    if package.get("format_version") != FORMAT_VERSION:
        raise ModtrainError(f"{path}: package format version {package.get('format_version')}, but this modtrain "
                            f"reads version {FORMAT_VERSION}; export the module again with this modtrain")
    for key in ("name", "card", "vocabulary", "features"):
        if key not in package:
            raise ModtrainError(f"{path}: key {key!r} is missing; export the module again")
    weights = directory / WEIGHTS
    if not weights.exists():
        raise ModtrainError(f"{weights} not found; the package is incomplete: export it again")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or not a torch file: the same to the user
        raise ModtrainError(f"{weights} cannot be read ({str(e).splitlines()[0][:80]}); export the module again") \
            from None
    if not isinstance(state, dict) or state_sha256(state) != package["card"].get("weights_sha256"):
        raise ModtrainError(f"{weights} does not match the card in {path} (sha256 differs): the weights were "
                            f"changed or replaced after export; refused. Export the module again")
    return package, state


# -- vocabulary axes and the remap -----------------------------------------------------------
def vocabulary_axes(name: str, interface: str, dims: dict[str, int], instances: list[str],
                    hparams: dict[str, Any]) -> dict[str, dict[int, tuple[str, int]]]:
    """Per parameter (and persistent buffer): which axis holds which vocabulary, as ``{axis: (kind,
    blocks)}`` with kind ``instances``, ``tokens`` or ``answers`` and ``blocks`` the number of
    concatenated copies (compare reads [left; right; left⊙right]: 3 blocks of answers). Found by
    building the module again with each vocabulary grown by a different amount."""
    grow = {"instances": 2, "tokens": 5, "answers": 7}
    base = build_module(name, interface, dims, instances, **hparams).state_dict()
    bigger = build_module(name, interface, {**dims, "tokens": dims.get("tokens", 0) + grow["tokens"],
                                            "answers": dims.get("answers", 0) + grow["answers"]},
                          [*instances, *(f"<probe {i}>" for i in range(grow["instances"] if instances else 0))],
                          **hparams).state_dict()
    by_growth = {g * blocks: (kind, blocks) for kind, g in grow.items() for blocks in (1, 2, 3, 4)}
    axes: dict[str, dict[int, tuple[str, int]]] = {}
    for key, tensor in base.items():
        grown = bigger[key]
        if tensor.dim() != grown.dim():
            raise ModtrainError(f"module {name}: parameter {key} changes rank with the vocabulary; it cannot be "
                                f"mapped to another experiment's words")
        found = {}
        for axis, (a, b) in enumerate(zip(tensor.shape, grown.shape)):
            if a == b:
                continue
            if b - a not in by_growth or a % by_growth[b - a][1]:
                raise ModtrainError(f"module {name}: axis {axis} of parameter {key} grows with the vocabulary in a "
                                    f"way modtrain cannot map ({a} → {b})")
            found[axis] = by_growth[b - a]
        if found:
            axes[key] = found
    return axes


def _positions(home: list[str], here: list[str], fallback: int | None) -> np.ndarray:
    """For each word here, its index at home; a word home lacks gets ``fallback`` (−1: none)."""
    index = {w: i for i, w in enumerate(home)}
    return np.array([index.get(w, -1 if fallback is None else fallback) for w in here], np.int64)


def remap_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                axes: dict[str, dict[int, tuple[str, int]]], home: dict[str, list[str]],
                here: dict[str, list[str]]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Home weights laid out in this workdir's vocabularies. ``target``: a module built here, whose
    values fill what home lacks (new instances keep it; unknown answers get zeros; unknown tokens
    take home's ``<UNK>`` row). Returns the state and, per parameter with an instance axis, a mask
    of the entries that belong to instances home lacks (True: new)."""
    unk = home["tokens"].index("<UNK>") if "<UNK>" in home["tokens"] else None
    out, new = {}, {}
    for key, value in target.items():
        if key not in state:
            raise ModtrainError(f"the package's weights lack {key}: it was made by another version of the module")
        old = state[key]
        fixed = [a for a in range(value.dim()) if a not in axes.get(key, {})]
        if old.dim() != value.dim() or any(old.shape[a] != value.shape[a] for a in fixed):
            raise ModtrainError(f"parameter {key} is {tuple(old.shape)} in the package but {tuple(value.shape)} "
                                f"here: the module's dimensions differ")
        if key not in axes:
            out[key] = old.clone()
            continue
        result = value.clone()
        index_new, index_old, is_new = [], [], None
        for axis, size in enumerate(value.shape):
            if axis not in axes[key]:
                index_new.append(np.arange(size))
                index_old.append(np.arange(size))
                continue
            kind, blocks = axes[key][axis]
            width_here, width_home = size // blocks, old.shape[axis] // blocks
            block = _positions(home[kind], here[kind], unk if kind == "tokens" else None)
            if kind == "answers":
                result.index_fill_(axis, torch.from_numpy(np.flatnonzero(np.tile(block, blocks) < 0)), 0.0)
            if kind == "instances":
                flags = torch.from_numpy(block < 0)
                shape = [1] * value.dim()
                shape[axis] = size
                is_new = flags.view(shape).expand_as(value)
            positions = np.concatenate([block + k * width_home for k in range(blocks)])
            mapped = np.tile(block, blocks) >= 0
            index_new.append(np.concatenate([np.arange(width_here) + k * width_here for k in range(blocks)])[mapped])
            index_old.append(positions[mapped])
        grid_new = tuple(torch.from_numpy(a) for a in np.ix_(*index_new))
        grid_old = tuple(torch.from_numpy(a) for a in np.ix_(*index_old))
        result[grid_new] = old[grid_old].to(result.dtype)
        out[key] = result
        if is_new is not None:
            new[key] = is_new.clone()
    return out, new


# -- import ------------------------------------------------------------------------------------
def imports_dir(workdir: Workdir) -> Path:
    return workdir.root / IMPORTS


def import_record(workdir: Workdir, name: str) -> dict[str, Any] | None:
    """The record of an import of module ``name`` into the workdir, if any."""
    path = imports_dir(workdir) / f"{name}.json"
    return read_json(path, "import record") if path.exists() else None


def frozen_import(workdir: Workdir, name: str) -> dict[str, Any] | None:
    """The record of a frozen import whose weights are in place (the planner treats it as trained)."""
    record = import_record(workdir, name)
    if record is None or record["mode"] != "frozen":
        return None
    card = workdir.modules / f"{name}.json"
    if not card.exists() or read_json(card, "module card").get("weights_sha256") != record["weights_sha256"]:
        return None
    return record


def imported_sources(workdir: Workdir, names: list[str]) -> dict[str, str]:
    """Per imported module of ``names``: where from and how (for the plan and status)."""
    out = {}
    for name in names:
        record = import_record(workdir, name)
        if record is not None:
            how = {"frozen": "frozen", "finetune": "fine-tuned here",
                   "new-instances": f"frozen but new instances {', '.join(record['new_instances'])}"}[record["mode"]]
            out[name] = f"imported from {record['from']} ({how})"
    return out


def _refuse(directory: Path, name: str, why: str) -> ModtrainError:
    return ModtrainError(f"cannot import {name} from {directory}: {why}")


def check_package(package: dict[str, Any], directory: Path, recipe, data: PreparedData,
                  options: ImportOptions) -> dict[str, Any]:
    """The checks of an import, each refusing in one line; returns what the record says about the
    features and the vocabularies."""
    name, card = package["name"], package["card"]
    if name not in recipe.modules:
        raise _refuse(directory, name, f"recipe {recipe.name} has no module {name!r}; its modules: "
                                       f"{', '.join(recipe.modules)}")
    if card["interface"] != recipe.interface:
        raise _refuse(directory, name, f"it was trained in the {card['interface']} interface, but recipe "
                                       f"{recipe.name} uses {recipe.interface}; its outputs mean other things there")
    cls = module_class(name)
    interface = get_interface(recipe.interface)
    now = {"inputs": [interface.resolve(t).name for t in cls.inputs], "output": interface.resolve(cls.output).name}
    if card["signature"] != now:
        raise _refuse(directory, name, f"its signature {card['signature']['inputs']} → {card['signature']['output']} "
                                       f"differs from {name}'s here, {now['inputs']} → {now['output']}")
    notes: dict[str, Any] = {"features": "not read"}
    home = package["features"]
    if set(cls.needs) & {"features", "height", "width"}:  # its weights are sized by the features' C, H, W
        here = features_identity(data, recipe.data.train_split)
        if home["shape"] != here["shape"]:
            raise _refuse(directory, name, f"it was trained on features of shape {tuple(home['shape'])} (C, H, W), "
                                           f"here they are {tuple(here['shape'])}: its weights do not fit them")
    if reads_image(name, recipe.interface):
        if home["backbone_sha256"] is not None and home["backbone_sha256"] == here["backbone_sha256"]:
            notes["features"] = "same backbone"
        elif options.features_compatible:
            notes["features"] = (f"declared compatible by the user: backbone {home['backbone']} "
                                 f"{str(home['backbone_sha256'])[:12]} at home, {here['backbone']} "
                                 f"{str(here['backbone_sha256'])[:12]} here, both {tuple(here['shape'])}")
        else:
            raise _refuse(directory, name, f"it read features of backbone {home['backbone']} "
                                           f"{str(home['backbone_sha256'])[:12]}, but {data.root} has "
                                           f"{here['backbone']} {str(here['backbone_sha256'])[:12]}; if they are "
                                           f"the same kind of features (same backbone and shape), declare it with "
                                           f"--features-compatible (features_compatible = true in a recipe)")
    words = vocabularies(data)
    needed = words["instances"].get(name, []) if cls.has_instances else []
    missing = [w for w in needed if w not in package["vocabulary"]["instances"]]
    if missing and options.new_instances != "train" and not options.finetune:  # fine-tuned: they train with the rest
        raise _refuse(directory, name, f"this data has instance(s) the package lacks: {', '.join(missing)}; "
                                       f"train them alone with --new-instances train (the rest stays frozen), or "
                                       f"import into data without them")
    notes["new_instances"] = missing
    notes["unknown_tokens"] = [w for w in words["tokens"] if w not in package["vocabulary"]["tokens"]]
    notes["unknown_answers"] = [w for w in words["answers"] if w not in package["vocabulary"]["answers"]]
    return notes


def import_module(directory: str | Path, workdir: Workdir, recipe, data: PreparedData,
                  options: ImportOptions = ImportOptions(), say: Callable[[str], None] = log.info,
                  grown_from: str | None = None) -> dict[str, Any]:
    """``modtrain import DIR``: check a package, lay its weights out in this workdir's vocabularies
    and record the import; frozen, the module's card and weights are written to ``modules/``."""
    directory = Path(directory).resolve()
    package, state = read_package(directory)
    name, card = package["name"], package["card"]
    notes = check_package(package, directory, recipe, data, options)
    record_path = imports_dir(workdir) / f"{name}.json"
    existing = workdir.modules / f"{name}.json"
    if existing.exists() and not options.replace and not record_path.exists():
        raise _refuse(directory, name, f"{existing} exists: {name} is trained in this workdir already; pass "
                                       f"--replace to replace it (its card and weights move to "
                                       f"{imports_dir(workdir) / 'replaced'})")
    words = vocabularies(data)
    instances = [*package["vocabulary"]["instances"], *notes["new_instances"]]
    dims = {**card["dimensions"], **{k: v for k, v in data.dims().items() if k in card["dimensions"]}}
    with torch.random.fork_rng(devices=[]):  # new rows start as the module would here, from the recipe's seed
        torch.manual_seed(recipe.seed)
        module = build_module(name, recipe.interface, dims, instances, **card["hyperparameters"])
    axes = vocabulary_axes(name, recipe.interface, dims, instances, card["hyperparameters"])
    home = {"tokens": package["vocabulary"]["tokens"], "answers": package["vocabulary"]["answers"],
            "instances": package["vocabulary"]["instances"]}
    here = {"tokens": words["tokens"], "answers": words["answers"], "instances": instances}
    remapped, new_entries = remap_state(state, module.state_dict(), axes, home, here)
    module.load_state_dict(remapped)
    mode = "finetune" if options.finetune else "new-instances" if notes["new_instances"] else "frozen"
    record = {"name": name, "from": str(directory), "mode": mode, "retrains": RETRAINS[mode],
              "new_instances": notes["new_instances"], "features": notes["features"],
              "unknown_tokens": notes["unknown_tokens"], "unknown_answers": notes["unknown_answers"],
              "home_weights_sha256": card["weights_sha256"], "weights_sha256": state_sha256(remapped),
              "instances": instances, "hyperparameters": card["hyperparameters"],
              "exported": package.get("exported", {}), "home_inputs": card.get("inputs", {}),
              **({"grown_from": grown_from} if grown_from else {}),
              "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    folder = imports_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    if existing.exists() and options.replace:
        replaced = folder / "replaced"
        replaced.mkdir(exist_ok=True)
        for path in (existing, weights_path(workdir.modules, name)):
            if path.exists():
                shutil.move(str(path), replaced / path.name)
    with atomic_path(folder / f"{name}.pt") as tmp:  # the starting point of a fine-tuning, and the frozen weights
        torch.save(remapped, tmp)
    if mode == "new-instances":
        with atomic_path(folder / f"{name}.new.pt") as tmp:
            torch.save(new_entries, tmp)
    if mode == "frozen":
        # the fields that rebuild the module come from it as rebuilt here; metrics, trust, training from home
        rebuilt = set(describe_module(module)) | {"weights_sha256", "created", "modtrain_version"}
        kept = {k: v for k, v in card.items() if k not in rebuilt}
        save_module(workdir.modules, module, {**kept, "imported": card_note(record)})
    elif existing.exists():  # a fine-tuning starts from the import, not from what was trained here
        for path in (existing, weights_path(workdir.modules, name)):
            path.unlink(missing_ok=True)
    write_json(record_path, record)  # last: the import is recorded once everything it names is written
    unknown = [f"{len(notes['unknown_tokens'])} question word(s) it never saw read as <UNK>"
               if notes["unknown_tokens"] else "",
               f"answer(s) it never saw get no say: {', '.join(notes['unknown_answers'][:8])}"
               if notes["unknown_answers"] else ""]
    say(f"{name}: imported from {directory} ({record['retrains']} will train here; features: {notes['features']})"
        + "".join(f"; {u}" for u in unknown if u))
    return record


def card_note(record: dict[str, Any]) -> dict[str, Any]:
    """What an imported module's card says of its origin."""
    return {k: record[k] for k in ("from", "mode", "retrains", "features", "home_weights_sha256", "exported",
                                   "new_instances", "unknown_tokens", "unknown_answers", "home_inputs",
                                   *(("grown_from",) if "grown_from" in record else ()))}


def training_start(workdir: Workdir, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                                          dict[str, torch.Tensor]] | None:
    """For a module imported to be trained here (fine-tuned, or its new instances trained): its
    record, the imported weights it starts from and the masks of its new entries (empty when the
    whole module trains). None for any other module."""
    record = import_record(workdir, name)
    if record is None or record["mode"] == "frozen":
        return None
    folder = imports_dir(workdir)
    state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
    if state_sha256(state) != record["weights_sha256"]:
        raise ModtrainError(f"{folder / name}.pt does not match its record {folder / name}.json (sha256 differs); "
                            f"import {name} again from {record['from']}")
    new_path = folder / f"{name}.new.pt"
    if record["mode"] == "new-instances" and not new_path.exists():
        raise ModtrainError(f"{new_path} not found; import {name} again from {record['from']}")
    masks = torch.load(new_path, map_location="cpu", weights_only=True) if record["mode"] == "new-instances" else {}
    return record, state, masks


def restore_frozen(module: NMNModule, start: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """After a step of a module whose new instances alone train: every other entry back to the import's."""
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if key in masks:
                keep = ~masks[key].to(value.device)
                value[keep] = start[key].to(value.device, value.dtype)[keep]
            elif value.is_floating_point():
                value.copy_(start[key])


def ensure_imports(recipe, workdir: Workdir, data: PreparedData, say: Callable[[str], None] = log.info,
                   grow_from: str | Path | None = None, only: list[str] | None = None) -> list[str]:
    """The imports a run asks for: ``[modules.NAME] from = "DIR"`` in the recipe and, with
    ``grow_from`` (``run --from W``), the modules of the recipe that W trained (``_growing``). An
    import already recorded from the same package and weights is kept as it is. Returns the
    modules imported now."""
    wanted: dict[str, tuple[Path, ImportOptions, str | None]] = {}
    for name in recipe.modules:
        section = recipe.raw.get("modules", {}).get(name, {})
        if "from" in section:
            wanted[name] = (Path(section["from"]), ImportOptions(
                features_compatible=bool(section.get("features_compatible", False)),
                new_instances=section.get("new_instances", "refuse"), finetune=bool(section.get("finetune", False))),
                None)
    if grow_from is not None:
        wanted.update(_growing(recipe, workdir, Path(grow_from), only, set(wanted), say))
    done = []
    for name, (directory, options, grown) in wanted.items():
        record = import_record(workdir, name)
        if record is not None and record["from"] == str(directory.resolve()) and _same_package(directory, record):
            continue
        import_module(directory, workdir, recipe, data,
                      options if record is None else dataclasses.replace(options, replace=True), say, grown)
        done.append(name)
    return done


def _growing(recipe, workdir: Workdir, root: Path, only: list[str] | None, taken: set[str],
             say: Callable[[str], None]) -> dict[str, tuple[Path, ImportOptions, str]]:
    """What ``run --from W`` imports: the modules of the recipe W trained (``only``: those), each
    exported from W. Without ``only``, a module whose job here reads a producer its job in W did
    not (describe and measure in nmn-clevr read relate, which nmn-typed lacks) trains here instead,
    as it would from scratch; imports from W that are no longer chosen are dropped."""
    from modtrain.plan import make_plan

    source = _workdir_data(Workdir(root, root / "data"))
    if not source.modules.is_dir():
        raise ModtrainError(f"--from {root}: not a workdir ({source.modules} not found)")
    trained = {p.stem for p in source.modules.glob("*.json")}
    unknown = sorted(set(only or []) - trained)
    if unknown:
        raise ModtrainError(f"--from-modules: {', '.join(unknown)} not trained in {root}; it has "
                            f"{', '.join(sorted(trained)) or 'none'}")
    resolved = str(root.resolve())
    home_plan = make_plan(_recipe_of(source)) if _recipe_of(source) is not None else None
    plan = make_plan(recipe)
    chosen = {}
    for name in recipe.modules:
        if name not in trained or name in taken or (only is not None and name not in only):
            continue
        if only is None and home_plan is not None and name in [m.name for m in home_plan.modules]:
            new = sorted(set(plan.module(name).consumes) - set(home_plan.module(name).consumes))
            if new:
                say(f"{name}: trained here, not imported from {root}: here its job also reads {', '.join(new)}, "
                    f"which its job there did not (--from-modules imports it anyway)")
                continue
        package = imports_dir(workdir) / "packages" / name
        export_module(source, name, package)
        chosen[name] = (package, ImportOptions(replace=True), resolved)
    for name in recipe.modules:  # imports an earlier 'run --from' made that this one does not choose
        record = import_record(workdir, name)
        if record is not None and record.get("grown_from") == resolved and name not in chosen:
            drop_import(workdir, name)
            say(f"{name}: no longer imported from {root}; it trains here")
    return chosen


def drop_import(workdir: Workdir, name: str) -> None:
    """Forget an import: its record, its weights and, if still the import's, its card."""
    record = import_record(workdir, name)
    if record is not None and frozen_import(workdir, name) is not None:
        for path in (workdir.modules / f"{name}.json", weights_path(workdir.modules, name)):
            path.unlink(missing_ok=True)
    for suffix in (".json", ".pt", ".new.pt"):
        (imports_dir(workdir) / f"{name}{suffix}").unlink(missing_ok=True)


def _recipe_of(source: Workdir):
    from modtrain.recipe import RESOLVED, Recipe

    resolved = source.root / RESOLVED
    return Recipe.load(resolved) if resolved.exists() else None


def _workdir_data(source: Workdir) -> Workdir:
    """A workdir with its data folder as its resolved recipe names it."""
    recipe = _recipe_of(source)
    return source if recipe is None else Workdir.for_recipe(recipe, source.root)


def _same_package(directory: Path, record: dict[str, Any]) -> bool:
    path = Path(directory) / PACKAGE
    return path.exists() and read_json(path, "module package")["card"].get("weights_sha256") == \
        record["home_weights_sha256"]
