"""The ``modtrain`` command line."""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings

import click

from modtrain import __version__
from modtrain.errors import ModtrainError, io_error_line

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
log = logging.getLogger("modtrain")


def _close_hdf5_at_exit() -> None:
    """After an error: close every HDF5 file still open when the process exits, before h5py's
    finalizers run, which can crash the interpreter's exit after a failed write (a full disk)."""
    import atexit

    atexit.unregister(_close_hdf5)
    atexit.register(_close_hdf5)


def _close_hdf5() -> None:
    """Close every HDF5 file this process still has open."""
    if "h5py" not in sys.modules:
        return
    import h5py

    for file_id in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            h5py.File(file_id).close()  # and every dataset and group of it
        except Exception:  # noqa: BLE001, S110 - closing what can be closed; the error is what is reported
            pass


class _Group(click.Group):
    """A group whose user errors print as one line, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModtrainError as e:
            _close_hdf5_at_exit()
            raise click.ClickException(str(e)) from None
        except (OSError, RuntimeError) as e:
            line = io_error_line(e)
            if line is None:
                raise
            _close_hdf5_at_exit()
            raise click.ClickException(line) from None
        except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, and one line
            click.echo("\ninterrupted; what was finished is kept: the same command resumes", err=True)
            raise click.exceptions.Exit(130) from None


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="modtrain")
@click.option("-v", "--verbose", count=True, help="More output: -v for progress notes, -vv for debugging.")
def main(verbose: int) -> None:
    """Train neural module networks module by module.

    Each module (encoder, find, describe, measure, ...) trains as its own job, through a
    surrogate gradient module where it has no loss of its own, from cached virtual
    datasets where its input comes from another module.

    \b
    Shell completion of commands and options: add to ~/.bashrc
      eval "$(_MODTRAIN_COMPLETE=bash_source modtrain)"
    (zsh: zsh_source in ~/.zshrc; fish: _MODTRAIN_COMPLETE=fish_source modtrain | source).
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    warnings.showwarning = _show_warning


@main.group(cls=_Group, context_settings=CONTEXT, short_help="Make, inspect and prepare data folders.")
def data() -> None:
    """Make, inspect and prepare data: generate (a CLEVR v1.0 or VQA v1 folder), features,
    prepare (question arrays), info."""


@data.command(context_settings=CONTEXT, short_help="Generate a procedural CLEVR (or VQA) folder.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--images", type=click.IntRange(min=1), default=1000, show_default=True, help="Training images.")
@click.option("--val-images", type=click.IntRange(min=1), default=None, help="Validation images [default: images/5].")
@click.option("--test-images", type=click.IntRange(min=1), default=None, help="Test images [default: images/5].")
@click.option("--questions-per-image", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--families", default=None,
              help="Comma-separated question families or groups (all, no-relate, compare, relate, same) "
                   "[default: all; with --format vqa: no-relate].")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=64, show_default=True, help="Square image side in pixels.")
@click.option("--combos", type=click.Choice(["A", "B"]), default=None,
              help="CoGenT shape-color condition; split names get its letter (trainA, valA, ...).")
@click.option("--fresh", is_flag=True, help="Replace splits that already exist.")
@click.option("--force", "force_alias", is_flag=True, hidden=True)  # the old spelling of --fresh
@click.option("--balance-depth", default=None, metavar="LOW-HIGH|none",
              help="Keep program depths LOW..HIGH about equally common in every split (the depth experiment "
                   "needs questions at every depth); none: as the families fall [default: 3-12; with --format "
                   "vqa: none].")
@click.option("--format", "format_", type=click.Choice(["clevr", "vqa"]), default="clevr", show_default=True,
              help="Write a CLEVR v1.0 folder, or the same data as a VQA v1 folder (questions, annotations with "
                   "ten answers each, NMN .sps2 parses).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes that render images beside this one [default: one per other core; 0: none].")
def generate(directory, images, val_images, test_images, questions_per_image, families, seed,
             image_size, combos, fresh, force_alias, balance_depth, format_, workers):
    """Generate a procedural dataset as a CLEVR v1.0 (or VQA v1) folder in DIRECTORY."""
    from modtrain.datasets.generate import generate as run

    fresh = fresh or _renamed("--force", "--fresh", force_alias)

    start = time.perf_counter()
    vqa = format_ == "vqa"
    families = families or ("no-relate" if vqa else "all")
    balance_depth = balance_depth or ("none" if vqa else "3-12")
    counts = {"train": images,
              "val": images // 5 if val_images is None else val_images,
              "test": images // 5 if test_images is None else test_images}
    summary = run(directory, counts, questions_per_image, families, seed, image_size, combos, fresh,
                  balance_depth, format_, workers)
    for split, s in summary["splits"].items():
        click.echo(f"{split}: {s['images']} images, {s['questions']} questions")
    click.echo(f"wrote {directory} in {time.perf_counter() - start:.1f}s")


@data.command(context_settings=CONTEXT, short_help="Extract image features.")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--backbone", type=click.Choice(["clevr-cnn", "resnet101"]), default="clevr-cnn", show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Local weights file for resnet101 (nothing is downloaded).")
@click.option("--from-h5", default=None,
              help="Use existing clevr-iep features instead: a path, with {split} for several splits.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the clevr-cnn pretraining split.")
@click.option("--retrain", is_flag=True, help="Pretrain clevr-cnn again even if its weights exist.")
@click.option("--pretrain-images", type=click.IntRange(min=1), default=None,
              help="Generated scenes the clevr-cnn pretrains on [default: 2500].")
@click.option("--pretrain-epochs", type=click.IntRange(min=1), default=None, help="[default: 12]")
@click.option("--pretrain-combos", type=click.Choice(["auto", "A", "B", "none"]), default="auto", show_default=True,
              help="The CoGenT condition whose colour-shape pairs clevr-cnn pretrains on; auto: the training "
                   "split's (trainA: A), none where no split is named for one.")
@click.option("--pretrain-recolor", is_flag=True,
              help="clevr-cnn's shape, size and material heads learn on recoloured views of its scenes, so that "
                   "its features cannot tell shape by colour (CoGenT: in condition A colour tells a cube from a "
                   "cylinder).")
@click.option("--pretrain-split", is_flag=True,
              help="clevr-cnn in two bodies: colour in the first quarter of the channels, learnt on the scenes as "
                   "drawn, shape, size and material in the rest, learnt on scenes whose objects are recoloured at "
                   "random; find and describe then read only their attribute's channels (CoGenT).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes that decode images while the backbone computes [default: on CUDA one per other core; "
                   "on the CPU none: the backbone's threads use every core].")
def features(directory, backbone, weights, from_h5, dtype, batch_size, device, seed, retrain,
             pretrain_images, pretrain_epochs, pretrain_combos, pretrain_recolor, pretrain_split, workers):
    """Extract image features into DIRECTORY/features/{split}.h5."""
    from modtrain.datasets.features import features_command
    from modtrain.device import resolve_device

    start = time.perf_counter()
    pretrain = {k: v for k, v in [("pretrain_images", pretrain_images), ("pretrain_epochs", pretrain_epochs)]
                if v is not None}
    shapes = features_command(directory, backbone, weights, from_h5, dtype, batch_size,
                              resolve_device(device), seed, retrain, **pretrain, workers=workers,
                              pretrain_combos=pretrain_combos, pretrain_recolor=pretrain_recolor,
                              pretrain_split=pretrain_split)
    for split, shape in shapes.items():
        click.echo(f"{split}: features {tuple(shape)}")
    click.echo(f"done in {time.perf_counter() - start:.1f}s")


@data.command(context_settings=CONTEXT, short_help="Build vocabularies and question arrays.")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where vocab.json and {split}.h5 go [default: DIRECTORY].")
@click.option("--vocab-split", default=None,
              help="The split the vocabularies are built on [default: the first named train*, e.g. trainA].")
@click.option("--format", "format_", type=click.Choice(["clevr", "vqa"]), default=None,
              help="The folder's format [default: detected].")
@click.option("--answers", default=1000, show_default=True,
              help="VQA: the answer set is this many most frequent training answers (others: evaluated, not trained).")
@click.option("--min-instance-count", default=3, show_default=True,
              help="VQA: a parse word seen fewer times in training becomes the <UNK> module instance.")
def prepare(directory, out, vocab_split, format_, answers, min_instance_count):
    """Build vocabularies on the training split and write {split}.h5 question arrays (CLEVR or VQA)."""
    from modtrain.datasets.prepare import prepare as run

    start = time.perf_counter()
    summary = run(directory, out, vocab_split, answers, min_instance_count, format_)
    v = summary["vocab"]
    click.echo(f"vocab (built on {v['split']}): {v['question_tokens']} tokens, {v['answers']} answers, "
               f"{v['layouts']} layouts")
    for split, s in summary["splits"].items():
        vqa = (f"; {s['no_parse']} without a parse, {s['answer_outside_set']} with an answer outside the set, "
               f"{s['unknown_word']} with a <UNK> word" if "no_parse" in s else "")
        click.echo(f"{split}: {s['questions']} questions ({s['unlabelled']} unlabelled{vqa})")
    click.echo(f"done in {time.perf_counter() - start:.1f}s")


@data.command(context_settings=CONTEXT, short_help="What a data folder holds, split by split.")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(directory, as_json):
    """Counts, answer distribution, depth histogram and layouts per family."""
    from modtrain.datasets.info import data_info, format_info

    result = data_info(directory)
    click.echo(json.dumps(result, indent=2) if as_json else format_info(result))


def _renamed(old: str, new: str, value):
    """The value given to an option's old spelling (kept hidden), said once to be renamed."""
    if value:
        click.echo(f"warning: {old} is now {new}", err=True)
    return value


def recipe_options(fn=None, *, device: bool = True):
    """--recipe, --workdir, --data, --set, --max-train-depth and (``device``) --device, shared by the
    commands that load a recipe."""
    def decorate(fn):
        if device:
            fn = click.option("--device", default=None,
                              help="auto, cpu, cuda or cuda:N [default: the recipe's train.device].")(fn)
        fn = click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
                          help="An existing data folder (prepared, or to prepare) instead of the recipe's "
                               "data.source; the same as --set data.source=DIR. Its train*/val* splits are "
                               "found by name (data.train_split, data.val_split).")(fn)
        fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe key, e.g. --set train.lr=3e-4 (repeatable).")(fn)
        fn = click.option("--max-train-depth", type=int, default=None, expose_value=False, metavar="D",
                          callback=lambda ctx, _, value: ctx.meta.__setitem__("max_train_depth", value),
                          help="Train and stop early only on questions of program depth ≤ D (paper §5.6); the "
                               "reported splits are never filtered. The same as --set data.max_train_depth=D.")(fn)
        fn = click.option("--workdir", type=click.Path(file_okay=False), default=None,
                          help="Experiment folder [default: runs/<recipe name>].")(fn)
        fn = click.option("--recipe", default=None,
                          help="Shipped recipe name (see 'modtrain recipes') or path to a .toml [default: the "
                               "workdir's recipe.toml].")(fn)
        return fn
    return decorate(fn) if fn is not None else decorate


def _load(recipe, workdir, overrides, data_dir=None, strict: bool = True):
    """The command's recipe, its split names resolved against its data, and its workdir. Not
    ``strict``: a recipe that names its splits is taken as it is when its data cannot be read."""
    from pathlib import Path

    from modtrain.recipe import AUTO, load_for_workdir
    from modtrain.workdir import Workdir

    if data_dir is not None:
        overrides = [*overrides, f"data.source={str(Path(data_dir).resolve())!r}"]
    depth = click.get_current_context().meta.get("max_train_depth")
    if depth is not None:
        overrides = [*overrides, f"data.max_train_depth={depth}"]
    loaded, root = load_for_workdir(recipe, workdir, list(overrides))
    try:
        loaded = loaded.resolved()
    except ModtrainError:
        named = loaded.raw.get("data", {})
        if strict or AUTO in (named.get("train_split", AUTO), named.get("val_split", AUTO)):
            raise
    return loaded, Workdir.for_recipe(loaded, root)


def _context(recipe, workdir, overrides, device, data_dir=None):
    from modtrain.device import resolve_device

    loaded, wd = _load(recipe, workdir, overrides, data_dir)
    return loaded, wd, resolve_device(device or loaded.train_config("encoder").device)


def _check_splits(names, folder, option: str = "--split", given=()) -> None:
    """Every split named by ``option`` is one of the data folder's, else one error listing them;
    an option ``given`` that names none (``--split ''``) is an error too."""
    from modtrain.data import folder_splits

    known = folder_splits(folder)
    if given and not names:
        raise ModtrainError(f"{option} {given[0]!r} names no split; {folder}'s splits: {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ModtrainError(f"{option} {unknown[0]}: {folder} has no such split; its splits: {', '.join(known)}")


def _with_splits(recipe_name, overrides, data_dir=None) -> list[str]:
    """``overrides`` and the split names of the data a report will use (``--data``, else the recipe's
    data.source), for the reports that build their recipes themselves from a name and overrides."""
    from pathlib import Path

    from modtrain.recipe import Recipe

    base = Recipe.load(recipe_name, list(overrides))
    if data_dir is not None:
        base = base.with_overrides([f"data.source={str(Path(data_dir).resolve())!r}"])
    d = base.resolved().data
    return [*overrides, f"data.train_split={d.train_split!r}", f"data.val_split={d.val_split!r}"]


def address_option(without: str):
    """--address, spelled and explained the same in every command that can run on Ray."""
    return click.option("--address", default=None, metavar="local|auto|HOST:PORT",
                        help=f"The Ray cluster to run on: local (a Ray started here), auto (the cluster this "
                             f"machine is part of) or HOST:PORT [default: none: {without}].")


def gpus_option(what: str):
    """--gpus-per-job, the same in every command that places jobs on Ray."""
    return click.option("--gpus-per-job", type=float, default=None,
                        help=f"GPUs per {what} on Ray [default: 1 where the cluster has GPUs, else 0].")


@main.command(context_settings=CONTEXT, short_help="Print the dependency table and the job graph.")
@recipe_options(device=False)
def plan(recipe, workdir, overrides, data_dir):
    """Print the dependency table (paper Table 1) and the job graph.

    With prepared data in the workdir, the table also says how many training questions each
    module's job has."""
    from modtrain.card import card_path
    from modtrain.data import PreparedData
    from modtrain.job import training_questions
    from modtrain.plan import format_plan, make_plan
    from modtrain.reuse import imported_sources

    loaded, wd = _load(recipe, workdir, overrides, data_dir)
    trained = {m for m in loaded.modules if card_path(wd.modules, m).exists()}
    plan_ = make_plan(loaded, trained)
    questions = None
    if (wd.data / "vocab.json").exists():
        questions = training_questions(plan_, loaded, PreparedData(wd.data))
    click.echo(format_plan(plan_, questions, imported_sources(wd, loaded.modules)))


@main.command(context_settings=CONTEXT, short_help="Train one module as its own job.")
@click.argument("module")
@click.option("--surrogate", default=None,
              help="Train through this surrogate (for modules without a loss of their own).")
@click.option("--impl", default=None,
              help="The module's implementation, for a module that has several (find: linear, or cell: a learnable "
                   "LNMN cell); kept in the workdir's recipe, so assemble and the caches use it.")
@recipe_options
def train(module, surrogate, impl, recipe, workdir, overrides, data_dir, device):
    """Train one MODULE as its own job; writes modules/MODULE.pt and its card."""
    from modtrain.job import train_module

    loaded, wd, dev = _context(recipe, workdir, overrides, device, data_dir)
    if surrogate is not None:
        from modtrain.plan import make_plan

        if make_plan(loaded).module(module).supervision == "direct":
            raise ModtrainError(f"--surrogate {surrogate}: {module} has a loss of its own (direct supervision, "
                                f"paper §3.1) and trains without a surrogate; drop --surrogate")
        loaded = loaded.with_surrogate(module, surrogate)
    if impl is not None:
        loaded = loaded.with_implementation(module, impl)
    with wd.lock():
        loaded.write(wd.root)
        card = train_module(wd, loaded, module, dev)
    m = card["metrics"]
    click.echo(f"{module}: val accuracy {m['val_accuracy']:.1%}, val loss {m['val_loss']:.4f} "
               f"(best epoch {m['best_epoch']} of {m['epochs']}, {card['timings']['train_seconds']:.1f}s)")
    if "surrogate" in card:
        s = card["surrogate"]
        v = s["verdict"]
        click.echo(f"surrogate {s['name']}: {s['parameters']} parameters (the root modules it stands for: "
                   f"{s['root_parameters']}); {'trusted' if v['trusted'] else 'NOT TRUSTED'} "
                   f"({v['criterion']}): {v['reason']}; predictive variance {s['trust']['variance']:.5f}, "
                   f"mutual information {s['trust']['mutual_information']:.4f}")
    click.echo(f"wrote {wd.modules / (module + '.json')}")


@main.command(context_settings=CONTEXT, short_help="Write a module's virtual dataset (its cache).")
@click.argument("module")
@click.option("--allow-untrusted", is_flag=True,
              help="Cache a module its surrogate does not trust (see [trust] in the recipe).")
@recipe_options
def cache(module, allow_untrusted, recipe, workdir, overrides, data_dir, device):
    """Write MODULE's virtual dataset (caches/MODULE/{split}.h5) for every split."""
    from modtrain.cache import write_caches
    from modtrain.data import PreparedData, set_in_memory_bytes
    from modtrain.plan import make_plan

    loaded, wd, dev = _context(recipe, workdir, overrides, device, data_dir)
    set_in_memory_bytes(loaded.data.in_memory_bytes)
    data = PreparedData(wd.data)
    with wd.lock():
        write_caches(wd, make_plan(loaded), module, data, dev, allow_untrusted=allow_untrusted, trust=loaded.trust)
    click.echo(f"wrote {', '.join(str(wd.cache(module, s)) for s in data.splits())}")


@main.command(context_settings=CONTEXT, short_help="Compose the trained modules and report accuracy.")
@click.option("--split", "splits", multiple=True,
              help="Split(s) to evaluate, repeated or comma-separated; merged into reports/assemble.json "
                   "[default: all but the training split].")
@recipe_options
def assemble(splits, recipe, workdir, overrides, data_dir, device):
    """Compose the trained modules per question and report accuracy."""
    from modtrain.assemble import assemble as run
    from modtrain.assemble import format_report

    loaded, wd, dev = _context(recipe, workdir, overrides, device, data_dir)
    names = [name.strip() for item in splits for name in item.split(",") if name.strip()]
    _check_splits(names, wd.data, given=splits)
    with wd.lock():  # it writes caches and reports/assemble.json: one command at a time in a workdir
        report = run(wd, loaded, dev, names or None)
    click.echo(format_report(report))
    click.echo(f"\nwrote {wd.reports / 'assemble.json'}")


@main.command(context_settings=CONTEXT, short_help="The whole pipeline, resumable.")
@address_option("the jobs run in this process, without Ray")
@gpus_option("training job")
@click.option("--cpus-per-job", type=click.IntRange(min=1), default=None, help="CPUs per job on Ray [default: 1].")
@click.option("--allow-untrusted", is_flag=True,
              help="Cache and use a module its surrogate does not trust (see [trust] in the recipe).")
@click.option("--dry-run", is_flag=True,
              help="Print the jobs run would do next, and why (as 'modtrain status' does); do nothing.")
@click.option("--from", "grow_from", type=click.Path(exists=True, file_okay=False), default=None, metavar="WORKDIR",
              help="Grow another experiment: import every module of the recipe that WORKDIR trained, frozen, "
                   "and train only what the recipe adds (see 'modtrain import').")
@click.option("--from-modules", default=None, metavar="NAMES",
              help="With --from: import only these modules (comma-separated); the others train here.")
@recipe_options
def run(address, gpus_per_job, cpus_per_job, allow_untrusted, dry_run, grow_from, from_modules, recipe, workdir,
        overrides, data_dir, device):
    """The whole pipeline: data, plan, train and cache each module, assemble.

    Every step whose result is up to date is skipped, so an interrupted run resumes where it
    stopped; --dry-run says which steps would run."""
    from modtrain.assemble import format_report
    from modtrain.pipeline import run_pipeline

    if address is None and (gpus_per_job is not None or cpus_per_job is not None):
        raise click.UsageError("--gpus-per-job and --cpus-per-job size the jobs on Ray: give --address too "
                               "(without it the jobs run in this process)")
    if address is not None and device is not None:
        raise click.UsageError("--device chooses the device of a run in this process; on Ray (--address) "
                               "--gpus-per-job does")
    if from_modules is not None and grow_from is None:
        raise click.UsageError("--from-modules chooses what --from imports: give --from WORKDIR too")
    only = None if from_modules is None else [m.strip() for m in from_modules.split(",") if m.strip()]
    loaded, wd, dev = _context(recipe, workdir, overrides, device, data_dir)
    if dry_run:
        from modtrain.status import workdir_status

        click.echo(_format_next(workdir_status(loaded, wd, allow_untrusted)))
        return
    start = time.perf_counter()
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    if address is not None:
        from modtrain.distributed import run_pipeline_on_ray

        report = run_pipeline_on_ray(loaded, wd, address, say, gpus_per_job, cpus_per_job or 1, allow_untrusted,
                                     grow_from, only)
    else:
        report = run_pipeline(loaded, wd, dev, say=say, allow_untrusted=allow_untrusted, grow_from=grow_from,
                              grow_only=only)
    click.echo(format_report(report))
    click.echo(f"\nworkdir {wd.root}; total {time.perf_counter() - start:.0f}s")


@main.command("export", context_settings=CONTEXT, short_help="Write a trained module as a package.")
@click.argument("module")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), required=True,
              help="The experiment that trained it.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="The package folder (new, empty, or an earlier package of this module).")
def export(module, workdir, out):
    """Write MODULE's package: weights, card, the vocabularies it was trained with (as words), the
    identity of its features and its trust statistics, for 'modtrain import' in another workdir."""
    from pathlib import Path

    from modtrain.recipe import RESOLVED, Recipe
    from modtrain.reuse import export_module
    from modtrain.workdir import Workdir

    resolved = Path(workdir) / RESOLVED
    recipe = Recipe.load(resolved) if resolved.exists() else None
    wd = Workdir.for_recipe(recipe, workdir) if recipe is not None else Workdir(Path(workdir), Path(workdir) / "data")
    package = export_module(wd, module, out, recipe.name if recipe is not None else None)
    card = package["card"]
    click.echo(f"exported {module} ({card['interface']}, {len(card['instances'])} instance(s), val accuracy "
               f"{card['metrics']['val_accuracy']:.1%}) to {out}")


@main.command("import", context_settings=CONTEXT, short_help="Bring a module package into a workdir.")
@click.argument("package", type=click.Path(exists=True, file_okay=False))
@click.option("--features-compatible", is_flag=True,
              help="Declare this data's features the same kind as the package's (same backbone and shape) when "
                   "their backbones' hashes differ; the card says so.")
@click.option("--new-instances", type=click.Choice(["refuse", "train"]), default="refuse", show_default=True,
              help="Instances this data has and the package lacks: refuse (listing them), or train them alone "
                   "(new rows; the rest stays frozen).")
@click.option("--finetune", is_flag=True, help="Retrain the whole module here, starting from the imported weights.")
@click.option("--replace", is_flag=True, help="Replace a module this workdir trained already.")
@recipe_options(device=False)
def import_(package, features_compatible, new_instances, finetune, replace, recipe, workdir, overrides, data_dir):
    """Import a module PACKAGE (from 'modtrain export') into a workdir. Frozen by default: the
    planner treats it as trained, its job never runs, and modules after it train on it."""
    from modtrain.data import PreparedData
    from modtrain.reuse import ImportOptions, import_module

    loaded, wd = _load(recipe, workdir, overrides, data_dir)
    if not (wd.data / "vocab.json").exists():
        raise ModtrainError(f"{wd.data} is not prepared yet: import maps the module to its vocabularies; run "
                            f"'modtrain run --recipe {loaded.name} --workdir {wd.root} --dry-run' to see the data "
                            f"steps, or prepare it first")
    options = ImportOptions(features_compatible, new_instances, finetune, replace)
    with wd.lock():
        loaded.write(wd.root)
        record = import_module(package, wd, loaded, PreparedData(wd.data), options, say=click.echo)
    click.echo(f"wrote {wd.root / 'imports' / (record['name'] + '.json')}")


@main.command(context_settings=CONTEXT, short_help="Train the NMN end to end (the baseline).")
@recipe_options
def e2e(recipe, workdir, overrides, data_dir, device):
    """Train the recipe's NMN end to end (the baseline), then assemble and report."""
    from modtrain.assemble import format_report
    from modtrain.pipeline import run_end_to_end

    loaded, wd, dev = _context(recipe, workdir, overrides, device, data_dir)
    start = time.perf_counter()
    report = run_end_to_end(loaded, wd, dev, say=lambda text: click.echo(text, err=True))
    click.echo(format_report(report))
    click.echo(f"\nworkdir {wd.root}; total {time.perf_counter() - start:.0f}s")


@main.group(cls=_Group, context_settings=CONTEXT, short_help="Reports that test the method.")
def report() -> None:
    """Reports that test the method: compare, correlation, hpo, depth, cells."""


@report.command(context_settings=CONTEXT, short_help="Modular vs end to end: accuracy and time.")
@click.option("--recipe", "recipe_name", default="nmn-typed", show_default=True,
              help="The NMN compared: its modules trained end to end (gradient), modular (gradient) and modular "
                   "with data types (typed), e.g. nmn-clevr for every CLEVR program.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds per version.")
@click.option("--workdir", type=click.Path(file_okay=False), default="runs/compare", show_default=True,
              help="Holds the shared data, one folder per version and seed, and reports/.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="An already prepared data folder to use instead of generating one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of every version's recipe, e.g. --set train.max_epochs=10.")
@click.option("--device", default="auto", show_default=True)
@click.option("--fresh", is_flag=True, help="Train every version and seed again instead of reusing trained runs.")
@click.option("--tune", "trials", type=click.IntRange(min=0), default=0, show_default=True,
              help="Search every version's hyperparameters with N trials per module (N for the whole network end "
                   "to end) before training the seeds; 0: every version on one shared set of defaults.")
@click.option("--system", "systems", multiple=True, metavar="NAME",
              help="Add an end-to-end system on the same data, seeds and protocol (repeatable): FiLM, "
                   "'Stack-NMN (ground truth)', 'Stack-NMN (scratch)', LNMN, or the compared NMN typed and "
                   "trained end to end: 'end-to-end + data types'.")
def compare(recipe_name, seeds, workdir, data_dir, overrides, device, fresh, trials, systems):
    """Modular vs end-to-end: accuracy (Table 2), training time (Fig. 10), retraining cost."""
    from pathlib import Path

    from modtrain.device import resolve_device
    from modtrain.reports.compare import format_markdown, run_compare

    overrides = _with_splits(recipe_name, overrides, data_dir)
    summary = run_compare(workdir, seeds, resolve_device(device), list(overrides), data_dir,
                          say=lambda text: click.echo(text, err=True), fresh=fresh, recipe_name=recipe_name,
                          tune=trials, systems=list(systems))
    click.echo(format_markdown(summary))
    reports = Path(workdir) / "reports"
    click.echo(f"wrote {reports / 'compare.json'}, {reports / 'compare.md'}, {reports / 'compare_time.png'}")


@report.command(context_settings=CONTEXT, short_help="Error per program depth, seen vs unseen.")
@click.option("--max-train-depth", "max_depth", type=int, default=5, show_default=True,
              help="Train every system on questions of program depth ≤ D only; evaluate on every depth.")
@click.option("--recipe", "recipe_name", default="nmn-clevr", show_default=True,
              help="The NMN whose modular and end-to-end versions, typed and gradient, are measured.")
@click.option("--system", "systems", multiple=True, metavar="NAME",
              help="Only these systems (repeatable): modular typed, modular gradient, end-to-end typed, "
                   "end-to-end gradient, FiLM, 'Stack-NMN (ground truth)', 'Stack-NMN (scratch)', LNMN "
                   "[default: the first five].")
@click.option("--reference", is_flag=True, help="Also train every system on every depth (its reference curve).")
@click.option("--workdir", type=click.Path(file_okay=False), default="runs/depth", show_default=True,
              help="Holds the shared data, one folder per system and depth limit, and reports/.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="An already prepared data folder to use instead of generating one.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key of every system's recipe, e.g. --set train.max_epochs=10.")
@click.option("--min-questions", type=click.IntRange(min=1), default=100, show_default=True,
              help="Depths with fewer questions are drawn but not averaged (too noisy).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Train every system this many times (seeds 0..N-1): means with 95% intervals.")
@click.option("--device", default="auto", show_default=True)
@click.option("--fresh", is_flag=True, help="Train every system again instead of reusing trained runs.")
def depth(max_depth, recipe_name, systems, reference, workdir, data_dir, overrides, min_questions, seeds, device,
          fresh):
    """Generalization by program depth: error per depth, seen vs unseen (paper Fig. 13/14)."""
    from pathlib import Path

    from modtrain.device import resolve_device
    from modtrain.reports.depth import format_markdown, run_depth

    overrides = _with_splits(recipe_name, overrides, data_dir)
    summary = run_depth(workdir, max_depth, resolve_device(device), recipe_name, list(systems), reference,
                        list(overrides), data_dir, say=lambda text: click.echo(text, err=True), fresh=fresh,
                        min_questions=min_questions, seeds=seeds)
    click.echo(format_markdown(summary))
    reports = Path(workdir) / "reports"
    click.echo(f"wrote {reports / 'depth.json'}, {reports / 'depth.md'}, {reports / 'depth.png'}")


@main.command(context_settings=CONTEXT, short_help="Search a module's hyperparameters on Ray Tune.")
@click.argument("module")
@click.option("--samples", default=50, show_default=True, help="Trials (paper §5.4: 50 per module).")
@click.option("--scheduler", type=click.Choice(["fifo", "asha"]), default="fifo", show_default=True)
@click.option("--search", type=click.Choice(["random", "optuna"]), default="random", show_default=True)
@address_option("as local, since the trials run on Ray Tune")
@click.option("--storage", default=None, help="Absolute path for Tune's files [default: WORKDIR/tune].")
@click.option("--cpus-per-job", type=click.IntRange(min=1), default=None, help="CPUs per trial [default: 1].")
# the old spelling
@click.option("--cpus-per-trial", "cpus_alias", type=click.IntRange(min=1), default=None, hidden=True)
@gpus_option("trial")
@click.option("--gpus-per-trial", "gpus_alias", type=float, default=None, hidden=True)  # the old spelling
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Retries of a crashed trial.")
@click.option("--fresh", is_flag=True, help="Discard an earlier search of this module instead of resuming it.")
@recipe_options(device=False)
def tune(module, samples, scheduler, search, address, storage, cpus_per_job, cpus_alias, gpus_per_job, gpus_alias,
         retries, fresh, recipe, workdir, overrides, data_dir):
    """Search MODULE's hyperparameters on Ray Tune (or 'e2e' for the whole network).

    Each trial is one training job, placed by Ray (--cpus-per-job, --gpus-per-job)."""
    from modtrain.tune import tune_module

    cpus = cpus_per_job if cpus_per_job is not None else _renamed("--cpus-per-trial", "--cpus-per-job", cpus_alias)
    gpus = gpus_per_job if gpus_per_job is not None else _renamed("--gpus-per-trial", "--gpus-per-job", gpus_alias)
    loaded, wd = _load(recipe, workdir, overrides, data_dir)
    summary = tune_module(loaded, wd, module, samples, scheduler, search, address or "local", storage,
                          cpus if cpus is not None else 1, gpus, retries, fresh,
                          say=lambda text: click.echo(text, err=True))
    best = summary["best"]
    done = sum(t["status"] == "done" for t in summary["trials"])
    click.echo(f"{module}: {done} of {len(summary['trials'])} trials finished in {summary['search_seconds']:.0f}s; "
               f"best trusted trial: validation accuracy {best['kept_accuracy']:.4f} with {best['config']}")
    click.echo(f"wrote {wd.root / 'tune' / module}/best.toml, recipe.toml, trials.json"
               + (f"; best card {summary['best_card']}" if summary["best_card"] else ""))


@report.command(context_settings=CONTEXT, short_help="Every search evaluation, and search time.")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--e2e-workdir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Another workdir holding the end-to-end search (tune e2e), if not this one.")
def hpo(workdir, e2e_workdir):
    """Every search evaluation per module (Fig. 9/12) and search time vs end-to-end (Fig. 10)."""
    from modtrain.reports.hpo import hpo_report

    report = hpo_report(workdir, e2e_workdir)
    for module, r in report["modules"].items():
        click.echo(f"{module:<9} {r['trials']:>3} trials  best {r['best_score']:.4f}  failed {r['failed']}  "
                   f"untrusted {r['untrustworthy']}  trial time {r['trial_seconds']:.0f}s")
        for t in r["trust"]:
            if t["reason"] is not None:
                accuracy = "-" if t["kept_accuracy"] is None else f"{t['kept_accuracy']:.4f}"
                click.echo(f"  trial {t['trial_id']}: val accuracy {accuracy}, "
                           f"{'trusted' if t['trusted'] else 'NOT TRUSTED'}: {t['reason']}")
    click.echo(f"wrote {workdir}/reports/hpo.json, hpo_accuracy.png, hpo_time.png")


@report.command(context_settings=CONTEXT, short_help="What an LNMN's cells learned.")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), required=True,
              help="A workdir holding a trained LNMN (modtrain e2e --recipe lnmn).")
@click.option("--split", "split_name", default=None, help="[default: the validation split, data.val_split]")
@click.option("--questions", "limit", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Questions evaluated per setting.")
def cells(workdir, split_name, limit):
    """What an LNMN's cells learned: σ(α) heatmaps, expressions, attributions, operations removed."""
    from pathlib import Path

    from modtrain.recipe import RESOLVED, Recipe
    from modtrain.reports.cells import cells_report, format_cells
    from modtrain.workdir import Workdir

    recipe = Recipe.load(Path(workdir) / RESOLVED)
    wd = Workdir.for_recipe(recipe, Path(workdir))
    split_name = split_name or recipe.data.val_split
    _check_splits([split_name], wd.data)
    report = cells_report(wd, split_name, limit)
    click.echo(format_cells(report))
    click.echo(f"wrote {Path(workdir) / 'reports'}/cells.{{json,md}}, cells_alpha.png")


@report.command(context_settings=CONTEXT, short_help="Surrogate vs final loss, and trust statistics.")
@click.option("--recipe", default="nmn-typed", show_default=True, help="Recipe whose module and surrogate are studied.")
@click.option("--module", default="find", show_default=True,
              help="The module studied (one trained through a surrogate).")
@click.option("--modules", "n_modules", default=40, show_default=True, help="Candidates trained with random settings.")
@click.option("--select", "k_select", default=20, show_default=True, help="Modules transplanted into the full NMN.")
@click.option("--max-epochs", default=20, show_default=True, help="Random epochs are drawn from 1..this.")
@click.option("--seed", default=0, show_default=True, help="Seeds every candidate's own generator.")
@click.option("--workdir", type=click.Path(file_okay=False), default="runs/correlation", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--device", default="auto", show_default=True)
@address_option("the trainings run in this process, without Ray")
@click.option("--transplant", type=click.Choice(["spread", "all"]), default="spread", show_default=True,
              help="spread: the selected modules and up to as many discarded ones; all: every candidate.")
@click.option("--nulls", default=3, show_default=True,
              help="Modules that learned nothing (lr 1e-7, one epoch), transplanted: their final loss is the plateau.")
@click.option("--margin", default=0.05, show_default=True,
              help="A module is good when its final loss is below the plateau by more than this share of it.")
def correlation(recipe, module, n_modules, k_select, max_epochs, seed, workdir, overrides, device, address,
                transplant, nulls, margin):
    """Surrogate vs final loss, and which trust statistic tells good modules from bad (paper §5.3, Fig. 7, 8)."""
    from pathlib import Path

    from modtrain.device import resolve_device
    from modtrain.reports.correlation import format_markdown, run_correlation

    overrides = _with_splits(recipe, overrides)
    result = run_correlation(workdir, recipe, n_modules, k_select, resolve_device(device), list(overrides), seed,
                             max_epochs, say=lambda text: click.echo(text, err=True), address=address, module=module,
                             transplant=transplant, nulls=nulls, margin=margin)
    click.echo(format_markdown(result))
    click.echo(f"wrote {Path(workdir) / 'reports'}/correlation.{{json,csv,md}}, correlation_variance.png, "
               f"correlation_loss.png")


@main.command(context_settings=CONTEXT, short_help="Draw each module's attention for some questions.")
@click.argument("questions", nargs=-1, type=int, required=True)
@click.option("--split", default=None, help="[default: the validation split, data.val_split]")
@recipe_options
def explain(questions, split, recipe, workdir, overrides, data_dir, device):
    """Draw each module's attention for QUESTIONS (question indices) as one PNG each."""
    from modtrain.reports.explain import explain as run

    loaded, wd, dev = _context(recipe, workdir, overrides, device, data_dir)
    split = split or loaded.data.val_split
    _check_splits([split], wd.data)
    for path in run(wd, loaded, dev, list(questions), split):
        click.echo(f"wrote {path}")


@main.command(context_settings=CONTEXT, short_help="List registered modules and trained cards.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Also list the modules trained here.")
def modules(workdir):
    """List registered modules and surrogates, and the trained module cards of a workdir."""
    from pathlib import Path

    from modtrain.card import trained_cards
    from modtrain.registry import MODULES, SURROGATES, load_entries

    load_entries()
    click.echo("registered modules:")
    for name in sorted(MODULES):
        cls = MODULES[name]
        hp = ", ".join(f"{k}={v}" for k, v in cls.defaults.items()) or "-"
        click.echo(f"  {name:<9} ({', '.join(cls.inputs)}) -> {cls.output}"
                   f"{'  [instances]' if cls.has_instances else ''}   {hp}")
    click.echo("registered surrogates:")
    for name in sorted(SURROGATES):
        click.echo(f"  {name:<9} " + ", ".join(f"{k}={v}" for k, v in SURROGATES[name].defaults.items()))
    if workdir is not None:
        from modtrain.recipe import RESOLVED, Recipe
        from modtrain.trust import TrustSection, card_verdict

        cards = trained_cards(Path(workdir) / "modules")
        resolved = Path(workdir) / RESOLVED
        settings = Recipe.load(resolved).trust if resolved.exists() else TrustSection()
        click.echo(f"trained in {workdir}:" if cards else f"no trained modules in {workdir}")
        for c in cards:
            verdict = card_verdict(c, settings)
            trust = "" if verdict is None else \
                f"\n            {'trusted' if verdict.trusted else 'NOT TRUSTED'}: {verdict.reason}"
            origin = f"\n            imported from {c['imported']['from']} ({c['imported']['mode']}; features " \
                     f"{c['imported']['features']})" if c.get("imported") else ""
            click.echo(f"  {c['name']:<9} {c['interface']:<9} val accuracy {c['metrics']['val_accuracy']:.1%}  "
                       f"{len(c['instances'])} instances  {c['parameters']} parameters  {c['created']}{trust}{origin}")


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _trust_text(trust) -> str:
    if trust is None:
        return "-"
    value = trust["value"]
    shown = "" if value is None else f" {_percent(value)}" if trust["criterion"] == "gain" else f" {value:.5f}"
    return f"{'trusted' if trust['trusted'] else 'NOT TRUSTED'} ({trust['criterion']}{shown})"


def _format_next(status) -> str:
    """What run would do next, one job a line with why (``run --dry-run``, the end of ``status``)."""
    if status["data"]["problem"] is not None:
        return f"run would stop at the data: {status['data']['problem']}"
    jobs = status["next"]
    width = max([len(j["job"]) for j in jobs] + [4])
    lines = ["run would do next:"] + [f"  {j['job']:<{width}}  {j['why']}" for j in jobs]
    if [j["job"] for j in jobs] == ["assemble"]:
        lines.append("every module is trained and cached: run would only assemble")
    return "\n".join(lines)


def _format_status(status) -> str:
    d = status["data"]
    if d["problem"] is not None:
        data = f"data: {d['problem']}"
    else:
        data = (f"data: {d['folder']}, {'up to date' if not d['steps'] else 'needs ' + ', '.join(d['steps'])}"
                + (f"; splits {', '.join(d['splits'])}" if d["splits"] else ""))
    lines = [f"workdir {status['workdir']} (recipe {status['recipe']})", data,
             f"trains on {d['train_split']}, stops early on {d['val_split']} (data.train_split, data.val_split)", ""]
    rows = [("module", "state", "val accuracy", "trust", "cache")]
    for m in status["modules"]:
        cache = "-" if m["cache"] is None else m["cache"]["state"]
        rows.append((m["name"], m["state"], _percent(m["val_accuracy"]), _trust_text(m["trust"]), cache))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    why = [(m["name"], w) for m in status["modules"] if m["state"] == "stale" for w in m["why"]]
    why += [(m["name"], f"cache: {m['cache']['why']}") for m in status["modules"]
            if m["cache"] is not None and m["cache"]["state"] in ("stale", "missing")]
    if why:
        lines += ["", "why:"] + [f"  {name}: {text}" for name, text in why]
    imported = [(m["name"], m["imported"]) for m in status["modules"] if m.get("imported")]
    if imported:
        lines += ["", "imported:"] + [f"  {name}: {text}" for name, text in imported]
    return "\n".join(lines + ["", _format_next(status)])


@main.command(context_settings=CONTEXT, short_help="Where a workdir stands, and what run does next.")
@click.option("--allow-untrusted", is_flag=True, help="Judge the next jobs as 'run --allow-untrusted' would.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@recipe_options(device=False)
def status(allow_untrusted, as_json, recipe, workdir, overrides, data_dir):
    """Per module: trained, stale (and which input changed) or untrained; trusted; cached; its
    validation accuracy. Then the jobs 'modtrain run' would do next (what 'run --dry-run' prints).

    Reads the workdir (and its data folder) only: nothing is trained or written. --set shows
    what a changed setting would make stale."""
    from modtrain.status import workdir_status

    loaded, wd = _load(recipe, workdir, overrides, data_dir, strict=False)
    result = workdir_status(loaded, wd, allow_untrusted)
    click.echo(json.dumps(result, indent=2) if as_json else _format_status(result))


@main.command(context_settings=CONTEXT, short_help="List the shipped recipes, or print one.")
@click.argument("name", required=False)
def recipes(name):
    """List the shipped recipes with their descriptions; with NAME, print that recipe's file
    (copy it to start your own: --recipe takes a path to a .toml)."""
    import importlib.resources
    import tomllib

    from modtrain.recipe import shipped_recipes

    names = shipped_recipes()
    folder = importlib.resources.files("modtrain.recipes")
    if name is not None:
        if name not in names:
            raise ModtrainError(f"unknown recipe {name!r}; shipped: {', '.join(names)}")
        click.echo((folder / f"{name}.toml").read_text(encoding="utf-8"), nl=False)
        return
    width = max(len(n) for n in names)
    for n in names:
        description = tomllib.loads((folder / f"{n}.toml").read_text(encoding="utf-8")).get("description", "")
        click.echo(f"{n:<{width}}  {description}")


if __name__ == "__main__":  # pragma: no cover
    main()
