"""Module packages from the CLI: export, import (frozen, fine-tuned, new instances), run --from and
[modules.NAME] from, and every refusal as one line (modtrain.reuse; docs/reuse.md)."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

from modtrain.card import state_sha256
from modtrain.cli import main
from modtrain.data import PreparedData
from modtrain.registry import build_module
from modtrain.reuse import vocabulary_axes

pytestmark = pytest.mark.slow  # reads a trained tiny run


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def settings(tiny_run, recipe: str = "nmn-typed") -> list[str]:
    """The options that make another workdir run tiny_run's recipe (or ``recipe``) on tiny_run's data."""
    _, wd, _, _ = tiny_run
    out = ["--recipe", recipe, "--data", str(wd.data)]
    for item in ("train.max_epochs=20", "train.patience=5", "train.lr=0.005", "train.device='cpu'"):
        out += ["--set", item]
    return out


@pytest.fixture(scope="module")
def packages(tiny_run, tmp_path_factory):
    _, wd, _, _ = tiny_run
    root = tmp_path_factory.mktemp("packages")
    for name in ("encoder", "find", "describe", "measure"):
        result = invoke("export", name, "--workdir", wd.root, "--out", root / name)
        assert result.exit_code == 0, result.output
    return root


def test_a_package_holds_what_the_module_needs_to_move(packages, tiny_run):
    _, wd, _, _ = tiny_run
    package = json.loads((packages / "describe" / "package.json").read_text())
    card = json.loads((wd.modules / "describe.json").read_text())
    assert package["card"]["weights_sha256"] == card["weights_sha256"]
    vocab = PreparedData(wd.data).vocab
    assert package["vocabulary"]["instances"] == card["instances"]
    assert package["vocabulary"]["answers"] == sorted(vocab["answers"], key=vocab["answers"].get)
    assert package["features"]["backbone"] == "clevr-cnn" and len(package["features"]["shape"]) == 3
    assert package["exported"]["recipe"] == "nmn-typed"
    trust = json.loads((packages / "find" / "package.json").read_text())["card"]["surrogate"]["trust"]
    assert trust["gain"] == json.loads((wd.modules / "find.json").read_text())["surrogate"]["trust"]["gain"]


def test_growing_from_a_workdir_trains_nothing_it_has(tiny_run, packages, tmp_path):
    """run --from W imports W's modules frozen; with describe from a package through the recipe
    (``[modules.describe] from``), nothing is left to train: the run caches and assembles, and its
    accuracy is the one W reported on the same data."""
    _, wd, report, _ = tiny_run
    here = tmp_path / "grown"
    from_recipe = f"modules.describe.from='{packages / 'describe'}'"
    result = invoke("run", "--workdir", here, *settings(tiny_run), "--from", wd.root,
                    "--from-modules", "encoder,find,measure", "--set", from_recipe)
    assert result.exit_code == 0, result.output
    for name in ("encoder", "find", "measure"):
        assert f"train {name}: imported from {here / 'imports' / 'packages' / name} (frozen" in result.output
    assert f"train describe: imported from {packages / 'describe'}" in result.output
    assert not re.search(r"train \w+ \.\.\.", result.output)  # no training job started
    grown = json.loads((here / "reports" / "assemble.json").read_text())
    for split in ("val", "test"):
        assert grown["splits"][split]["accuracy"] == report["splits"][split]["accuracy"]
    card = json.loads((here / "modules" / "find.json").read_text())
    assert card["imported"]["mode"] == "frozen" and card["imported"]["grown_from"] == str(wd.root.resolve())
    assert card["imported"]["features"] == "same backbone"
    # the plan, status and modules say where each module came from
    for command, expected in (("plan", "find: imported from"), ("status", "imported"),
                              ("modules", "imported from")):
        result = invoke(command, "--workdir", here)
        assert result.exit_code == 0 and expected in result.output, result.output
    status = json.loads(invoke("status", "--workdir", here, "--json").output)
    assert {m["name"]: m["state"] for m in status["modules"]}["find"] == "imported"
    assert status["next"] == [{"job": "assemble", "why": "always: evaluates the assembled network"}]
    # a frozen import is never trained here
    result = invoke("train", "find", "--workdir", here)
    assert result.exit_code == 1 and "imported frozen" in result.output and "--finetune" in result.output


def tampered(packages, tmp_path, name: str, change) -> str:
    """A copy of a package, changed by ``change(package, state)``."""
    folder = tmp_path / f"{name}-changed-{len(list(tmp_path.glob(f'{name}-changed-*')))}"
    shutil.copytree(packages / name, folder)
    package = json.loads((folder / "package.json").read_text())
    state = torch.load(folder / "weights.pt", weights_only=True)
    change(package, state)
    torch.save(state, folder / "weights.pt")
    (folder / "package.json").write_text(json.dumps(package))
    return str(folder)


def without_instance(package: dict, state: dict, word: str) -> None:
    """The package as if its module had never had instance ``word`` (its rows removed)."""
    card = package["card"]
    axes = vocabulary_axes(package["name"], card["interface"], card["dimensions"], card["instances"],
                           card["hyperparameters"])
    keep = [i for i, w in enumerate(card["instances"]) if w != word]
    for key, found in axes.items():
        for axis, (kind, _) in found.items():
            if kind == "instances":
                state[key] = state[key].index_select(axis, torch.tensor(keep))
    card["instances"] = package["vocabulary"]["instances"] = [card["instances"][i] for i in keep]
    card["weights_sha256"] = state_sha256(state)


def test_every_refusal_is_one_line(tiny_run, packages, tmp_path):
    here = ["--workdir", tmp_path / "w", *settings(tiny_run)]
    card = json.loads((packages / "describe" / "package.json").read_text())["card"]
    word = card["instances"][0]

    def refused(*args) -> str:
        result = invoke("import", *args, *here)
        assert result.exit_code == 1, result.output
        line = result.output.strip()
        assert line.startswith("Error: ") and "\n" not in line and "Traceback" not in line
        return line

    # the interface: typed modules mean other things in the gradient interface
    result = invoke("import", packages / "describe", "--workdir", tmp_path / "g", *settings(tiny_run, "nmn-original"))
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert "typed interface" in line and "gradient" in line
    # a signature that is not the module's here (another output type)
    other_type = tampered(packages, tmp_path, "describe", lambda p, s: p["card"]["signature"].update(output="Prior"))
    assert "signature" in refused(other_type) and "Prior" in refused(other_type)
    # weights that are not the card's
    changed = tampered(packages, tmp_path, "describe", lambda p, s: s["bias"].add_(1.0))
    assert "does not match the card" in refused(changed)
    # features of another backbone: refused unless declared compatible, and then the card says so
    other = tampered(packages, tmp_path, "find", lambda p, s: p["features"].update(backbone_sha256="0" * 64))
    line = refused(other)
    assert "--features-compatible" in line and "000000000000" in line
    result = invoke("import", other, "--features-compatible", *here)
    assert result.exit_code == 0, result.output
    note = json.loads((tmp_path / "w" / "modules" / "find.json").read_text())["imported"]
    assert note["features"].startswith("declared compatible by the user")
    # features of another shape: refused whatever is declared (measure reads find's maps, sized H × W)
    smaller = tampered(packages, tmp_path, "measure", lambda p, s: p["features"].update(shape=[64, 4, 4]))
    line = refused(smaller, "--features-compatible")
    assert "(64, 4, 4)" in line and "do not fit" in line
    # an instance the package lacks: refused, listing it, or trained alone
    lacking = tampered(packages, tmp_path, "describe", lambda p, s: without_instance(p, s, word))
    line = refused(lacking)
    assert f"lacks: {word};" in line and "--new-instances train" in line
    # a module trained here already is not replaced silently; with --replace it moves aside
    _, wd, _, _ = tiny_run
    trained = tmp_path / "trained"
    shutil.copytree(wd.modules, trained / "modules")
    result = invoke("import", packages / "measure", "--workdir", trained, *settings(tiny_run))
    assert result.exit_code == 1 and "--replace" in result.output and "trained in this workdir" in result.output
    result = invoke("import", packages / "measure", "--replace", "--workdir", trained, *settings(tiny_run))
    assert result.exit_code == 0, result.output
    assert (trained / "imports" / "replaced" / "measure.json").exists()


def test_new_instances_train_alone_and_finetune_retrains_everything(tiny_run, packages, tmp_path):
    card = json.loads((packages / "describe" / "package.json").read_text())["card"]
    word = card["instances"][0]
    lacking = tampered(packages, tmp_path, "describe", lambda p, s: without_instance(p, s, word))
    home = torch.load(f"{lacking}/weights.pt", weights_only=True)
    here = ["--workdir", tmp_path / "w", *settings(tiny_run)]
    result = invoke("import", lacking, "--new-instances", "train", *here)
    assert result.exit_code == 0, result.output
    assert "its new instances alone will train here" in result.output
    # the rest frozen from the packages; run trains describe alone, and only the new instance's rows move
    for name in ("encoder", "find", "measure"):
        result = invoke("import", packages / name, *here)
        assert result.exit_code == 0, result.output
    result = invoke("run", *here, "--set", "modules.describe.max_epochs=2")
    assert result.exit_code == 0, result.output
    assert "train describe ..." in result.output and "train find ..." not in result.output
    trained = torch.load(tmp_path / "w" / "modules" / "describe.pt", weights_only=True)
    new = json.loads((tmp_path / "w" / "modules" / "describe.json").read_text())
    assert new["imported"]["mode"] == "new-instances" and new["imported"]["new_instances"] == [word]
    row = new["instances"].index(word)
    for key in ("weight", "bias"):
        old_rows = [i for i in range(len(new["instances"])) if i != row]
        assert torch.equal(trained[key][old_rows], home[key]), key
        assert not torch.equal(trained[key][row], torch.zeros_like(trained[key][row]))
    start = torch.load(tmp_path / "w" / "imports" / "describe.pt", weights_only=True)
    assert not torch.equal(trained["weight"][row], start["weight"][row])  # the new instance trained
    # --finetune: the whole module retrains from the imported weights (a new job key: it trains again)
    result = invoke("import", packages / "describe", "--finetune", "--replace", *here)
    assert result.exit_code == 0, result.output
    result = invoke("run", *here, "--set", "modules.describe.max_epochs=1")
    assert result.exit_code == 0, result.output
    assert "train describe ..." in result.output and "train measure ..." not in result.output
    tuned = torch.load(tmp_path / "w" / "modules" / "describe.pt", weights_only=True)["weight"]
    imported = torch.load(packages / "describe" / "weights.pt", weights_only=True)["weight"]
    fresh = build_module("describe", "typed", card["dimensions"], card["instances"]).weight.detach()
    assert not torch.equal(tuned, imported)  # it trained, from the import: nearer it than a fresh start is
    assert (tuned - imported).norm() < 0.5 * (fresh - imported).norm()
    assert json.loads((tmp_path / "w" / "modules" / "describe.json").read_text())["imported"]["mode"] == "finetune"
