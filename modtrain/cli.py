"""The ``modtrain`` command line."""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings

import click

from modtrain import __version__
from modtrain.errors import ModtrainError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
log = logging.getLogger("modtrain")


class _Group(click.Group):
    """A group whose user errors print as one line, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ModtrainError as e:
            raise click.ClickException(str(e)) from None


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
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    warnings.showwarning = _show_warning


@main.group(cls=_Group, context_settings=CONTEXT)
def data() -> None:
    """Make, inspect and prepare data: CLEVR v1.0 folders, features, question arrays."""


@data.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--images", default=1000, show_default=True, help="Training images.")
@click.option("--val-images", type=int, default=None, help="Validation images [default: images/5].")
@click.option("--test-images", type=int, default=None, help="Test images [default: images/5].")
@click.option("--questions-per-image", default=10, show_default=True)
@click.option("--families", default="all", show_default=True,
              help="Comma-separated question families or groups (all, no-relate, compare, relate, same).")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=64, show_default=True, help="Square image side in pixels.")
@click.option("--combos", type=click.Choice(["A", "B"]), default=None,
              help="CoGenT shape-color condition; split names get its letter (trainA, valA, ...).")
@click.option("--force", is_flag=True, help="Replace splits that already exist.")
def generate(directory, images, val_images, test_images, questions_per_image, families, seed,
             image_size, combos, force):
    """Generate a procedural dataset as a CLEVR v1.0 folder in DIRECTORY."""
    from modtrain.datasets.generate import generate as run

    start = time.perf_counter()
    counts = {"train": images,
              "val": images // 5 if val_images is None else val_images,
              "test": images // 5 if test_images is None else test_images}
    summary = run(directory, counts, questions_per_image, families, seed, image_size, combos, force)
    for split, s in summary["splits"].items():
        click.echo(f"{split}: {s['images']} images, {s['questions']} questions")
    click.echo(f"wrote {directory} in {time.perf_counter() - start:.1f}s")


@data.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--backbone", type=click.Choice(["clevr-cnn", "resnet101"]), default="clevr-cnn", show_default=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Local weights file for resnet101 (nothing is downloaded).")
@click.option("--from-h5", default=None,
              help="Use existing clevr-iep features instead: a path, with {split} for several splits.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the clevr-cnn pretraining split.")
@click.option("--retrain", is_flag=True, help="Pretrain clevr-cnn again even if its weights exist.")
@click.option("--pretrain-images", type=int, default=None,
              help="Generated scenes the clevr-cnn pretrains on [default: 2500].")
@click.option("--pretrain-epochs", type=int, default=None, help="[default: 12]")
def features(directory, backbone, weights, from_h5, dtype, batch_size, device, seed, retrain,
             pretrain_images, pretrain_epochs):
    """Extract image features into DIRECTORY/features/{split}.h5."""
    from modtrain.datasets.features import features_command
    from modtrain.device import resolve_device

    start = time.perf_counter()
    pretrain = {k: v for k, v in [("pretrain_images", pretrain_images), ("pretrain_epochs", pretrain_epochs)]
                if v is not None}
    shapes = features_command(directory, backbone, weights, from_h5, dtype, batch_size,
                              resolve_device(device), seed, retrain, **pretrain)
    for split, shape in shapes.items():
        click.echo(f"{split}: features {tuple(shape)}")
    click.echo(f"done in {time.perf_counter() - start:.1f}s")


@data.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where vocab.json and {split}.h5 go [default: DIRECTORY].")
def prepare(directory, out):
    """Build vocabularies on train and write {split}.h5 question arrays."""
    from modtrain.datasets.prepare import prepare as run

    start = time.perf_counter()
    summary = run(directory, out)
    v = summary["vocab"]
    click.echo(f"vocab: {v['question_tokens']} tokens, {v['answers']} answers, {v['layouts']} layouts")
    for split, s in summary["splits"].items():
        click.echo(f"{split}: {s['questions']} questions ({s['unlabelled']} unlabelled)")
    click.echo(f"done in {time.perf_counter() - start:.1f}s")


@data.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(directory, as_json):
    """Counts, answer distribution, depth histogram and layouts per family."""
    from modtrain.datasets.info import data_info, format_info

    result = data_info(directory)
    click.echo(json.dumps(result, indent=2) if as_json else format_info(result))


if __name__ == "__main__":  # pragma: no cover
    main()
