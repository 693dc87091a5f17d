import tomllib

import pytest

from modtrain.errors import ModtrainError
from modtrain.recipe import Recipe, parse_override, shipped_recipes
from modtrain.registry import module_class


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_is_valid(name):
    from modtrain.plan import make_plan

    recipe = Recipe.load(name)
    assert recipe.name == name
    if name in ("film", "lnmn", "snmn-gt", "snmn-scratch"):  # the end-to-end systems: one module that answers alone
        only = name.split("-")[0]
        assert recipe.modules == [only] and make_plan(recipe).prior == only
    else:
        assert recipe.modules[:2] == ["encoder", "find"] and {"describe", "measure"} <= set(recipe.modules)
    for module in recipe.modules:
        cls = module_class(module)
        assert set(recipe.module_hparams(module)) <= set(cls.defaults)
    # modular recipes train every attention module through a surrogate; the end-to-end baseline needs none
    plan = make_plan(recipe, end_to_end=name == "e2e")
    for m in plan.modules:
        if m.supervision == "indirect":
            assert (recipe.surrogate(m.name) or ("none",))[0] == ("none" if name == "e2e" else "factorized")
    assert recipe.interface in ("typed", "gradient")


def test_clevr_recipes_cover_every_program():
    for name, interface in (("nmn-clevr", "typed"), ("nmn-clevr-original", "gradient")):
        recipe = Recipe.load(name)
        assert recipe.interface == interface and recipe.data.families == "all"
        assert set(recipe.modules) == {"encoder", "find", "relate", "describe", "measure", "compare"}


def test_shipped_recipes_include_the_three_versions_of_table_2():
    assert {"nmn-typed", "nmn-original", "e2e"} <= set(shipped_recipes())
    assert Recipe.load("e2e").interface == "gradient"
    assert Recipe.load("nmn-typed").interface == "typed"
    assert Recipe.load("nmn-original").interface == "gradient"


def test_overrides_are_typed_and_checked():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("train.amp=false") == (["train", "amp"], False)
    assert parse_override("modules.find.attention=softmax") == (["modules", "find", "attention"], "softmax")
    recipe = Recipe.load("nmn-typed", ["train.lr=3e-4", "modules.find.lr=0.01", "modules.measure.hidden=32"])
    assert recipe.train_config("encoder").lr == 3e-4
    assert recipe.train_config("find").lr == 0.01  # a module's own setting wins
    assert recipe.module_hparams("measure")["hidden"] == 32
    with pytest.raises(ModtrainError, match=r"unknown key train.learning_rate; valid: train.amp, .*train.lr"):
        Recipe.load("nmn-typed", ["train.learning_rate=1"])
    with pytest.raises(ModtrainError, match=r"unknown key modules.find.depth; valid: .*modules.find.attention"):
        Recipe.load("nmn-typed", ["modules.find.depth=2"])
    with pytest.raises(ModtrainError, match="expected key=value"):
        Recipe.load("nmn-typed", ["train.lr"])


def test_unknown_recipe_module_surrogate_and_interface():
    with pytest.raises(ModtrainError, match="unknown recipe 'nmn-fancy'; shipped: e2e, film, lnmn, nmn-clevr, "
                                            "nmn-clevr-original, nmn-original, nmn-typed, nmn-vqa, nmn-vqa-original, "
                                            "snmn-gt, snmn-scratch"):
        Recipe.load("nmn-fancy")
    with pytest.raises(ModtrainError, match="unknown module 'transform'; valid:"):
        Recipe.load("nmn-typed", ["modules.transform.hidden=3"])
    with pytest.raises(ModtrainError, match="unknown surrogate 'oracle'; valid: factorized"):
        Recipe.load("nmn-typed", ["modules.find.surrogate=oracle"])
    with pytest.raises(ModtrainError, match="interface = 'fuzzy': must be one of 'typed', 'gradient'"):
        Recipe.load("nmn-typed", ["interface=fuzzy"])


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr = 'abc': must be a number > 0"),
    ("train.lr=-0.1", "train.lr = -0.1: must be a number > 0"),
    ("train.batch_size=2.5", "train.batch_size = 2.5: must be an integer ≥ 1"),
    ("train.batch_size=0", "train.batch_size = 0: must be an integer ≥ 1"),
    ("train.batch_size=-8", "train.batch_size = -8: must be an integer ≥ 1"),
    ("train.max_epochs=0", "train.max_epochs = 0: must be an integer ≥ 1"),
    ("train.patience=0", "train.patience = 0: must be an integer ≥ 1"),
    ("train.amp=1", "train.amp = 1: must be true or false"),
    ("modules.find.batch_size=-1", "modules.find.batch_size = -1: must be an integer ≥ 1"),
    ("modules.encoder.hidden=abc", "modules.encoder.hidden = 'abc': must be an integer ≥ 1"),
    ("modules.measure.dropout=1.0", "modules.measure.dropout = 1.0: must be a number ≥ 0 and < 1"),
    ("modules.find.attention=mean", "modules.find.attention = 'mean': must be one of 'weighted', 'softmax'"),
    ("surrogates.factorized.rank=0", "surrogates.factorized.rank = 0: must be an integer ≥ 1"),
    ("data.images=0", "data.images = 0: must be an integer ≥ 1"),
    ("data.backbone=vgg", "data.backbone = 'vgg': must be one of 'clevr-cnn', 'resnet101'"),
    ("seed=1.5", "seed = 1.5: must be an integer"),
])
def test_bad_values_name_the_key_the_value_and_what_is_valid(override, message):
    with pytest.raises(ModtrainError) as error:
        Recipe.load("nmn-typed", [override])
    assert str(error.value) == f"--set {override}: {message}"  # blamed on the --set, not the recipe


def test_resolved_recipe_round_trips(tmp_path):
    recipe = Recipe.load("nmn-typed", ["train.lr=0.5", "data.families='exist,count'"])
    path = recipe.write(tmp_path)
    assert tomllib.loads(path.read_text()) == recipe.raw
    again = Recipe.load(path)
    assert again.train_config("encoder").lr == 0.5 and again.data.families == "exist,count"
    assert again.train_config("find").lr == 0.01  # the module's own setting still wins


def test_recipe_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\n[train\n")
    with pytest.raises(ModtrainError, match="bad.toml: invalid TOML"):
        Recipe.load(bad)
    with pytest.raises(ModtrainError, match="recipe file not found"):
        Recipe.load(tmp_path / "none.toml")


# -- split names: data.train_split / data.val_split -----------------------------------------------

KEYS = "--set data.train_split=NAME --set data.val_split=NAME"


@pytest.mark.parametrize("splits, expected", [
    (["train", "val", "test"], ("train", "val")),
    (["train2014", "val2014"], ("train2014", "val2014")),                 # a VQA v1 release
    (["trainA", "valA", "valB", "testA", "testB"], ("trainA", "valA")),   # CLEVR-CoGenT: valB only evaluated
    (["testA", "trainB", "valB"], ("trainB", "valB")),
    (["train", "val2"], ("train", "val2")),                               # no twin: the only val*
])
def test_auto_splits_are_the_folders_train_and_its_val(splits, expected):
    from modtrain.recipe import resolve_splits

    assert resolve_splits("auto", "auto", splits) == expected


@pytest.mark.parametrize("train, val, splits, message", [
    ("auto", "auto", ["trainA", "trainB", "valA", "valB"],
     "the data folder has 2 training splits (trainA, trainB), so data.train_split = 'auto' cannot choose one; "
     f"its splits: trainA, trainB, valA, valB; choose with {KEYS}"),
    ("auto", "auto", ["train", "valA", "valB"],
     "the data folder has 2 validation splits (valA, valB), so data.val_split = 'auto' cannot choose one; "
     f"its splits: train, valA, valB; choose with {KEYS}"),
    ("auto", "auto", ["val", "test"],
     "the data folder has no training split (named train*), so data.train_split = 'auto' cannot choose one; "
     f"its splits: val, test; choose with {KEYS}"),
    ("auto", "auto", ["train", "test"],
     "the data folder has no validation split (named val*), so data.val_split = 'auto' cannot choose one; "
     f"its splits: train, test; choose with {KEYS}"),
    ("bogus", "auto", ["train", "val", "test"],
     "data.train_split = 'bogus': the data folder has no such split; its splits: train, val, test; "
     f"choose with {KEYS}"),
    ("auto", "valC", ["trainA", "valA", "valB"],
     f"data.val_split = 'valC': the data folder has no such split; its splits: trainA, valA, valB; choose with {KEYS}"),
    ("val", "val", ["val", "test"],
     "data.train_split and data.val_split are both 'val': a module stops early on questions it does not train on; "
     f"the data folder's splits: val, test; choose with {KEYS}"),
])
def test_splits_that_cannot_be_chosen_are_one_line_naming_the_keys(train, val, splits, message):
    from modtrain.recipe import resolve_splits

    with pytest.raises(ModtrainError) as error:
        resolve_splits(train, val, splits)
    assert str(error.value) == message and "\n" not in message and "prepare" not in message


def test_named_splits_choose_among_several():
    from modtrain.recipe import resolve_splits

    splits = ["trainA", "trainB", "valA", "valB"]
    assert resolve_splits("trainB", "auto", splits) == ("trainB", "valB")  # the val named like it
    assert resolve_splits("train", "val2", ["train", "val", "val2"]) == ("train", "val2")  # not the twin
    with pytest.raises(ModtrainError, match="would stop early .select. on condition B"):  # CoGenT: never on B
        resolve_splits("trainA", "valB", splits)


def test_a_recipe_resolves_its_splits_against_its_data(tmp_path):
    recipe = Recipe.load("nmn-typed")
    assert recipe.raw.get("data", {}).get("train_split") is None  # auto, unless a recipe names one
    assert (recipe.data.train_split, recipe.data.val_split) == ("train", "val")  # generated: train, val, test
    written = recipe.resolved()
    assert (written.raw["data"]["train_split"], written.raw["data"]["val_split"]) == ("train", "val")
    assert Recipe.load(written.write(tmp_path)).raw["data"]["val_split"] == "val"  # what the workdir records
    assert recipe.with_splits(["trainA", "valA", "valB"]).raw["data"]["train_split"] == "trainA"
    with pytest.raises(ModtrainError, match=r"data.val_split = 'valB': generated data has no such split; its "
                                            r"splits: train, val, test; choose with --set data.train_split=NAME"):
        Recipe.load("nmn-typed", ["data.val_split='valB'"]).resolved()
    with pytest.raises(ModtrainError, match="^--set data.train_split='val' --set data.val_split='val': "
                                            "data.train_split and data.val_split are both 'val'"):
        Recipe.load("nmn-typed", ["data.train_split='val'", "data.val_split='val'"])


def test_a_data_folders_splits_come_from_its_file_names(tmp_path):
    """A CoGenT folder (trainA, valA, testA, valB, testB) resolves to trainA / valA from its question
    files alone, before it is prepared; one with trainA and trainB is refused naming the keys."""
    from modtrain.datasets.generate import generate

    cogent = tmp_path / "cogent"
    generate(cogent, {"train": 3, "val": 2, "test": 1}, 2, "no-relate", combos="A", workers=0)
    generate(cogent, {"val": 2, "test": 1}, 2, "no-relate", combos="B", workers=0)
    recipe = Recipe.load("nmn-typed", [f"data.source='{cogent}'"])
    assert (recipe.data.train_split, recipe.data.val_split) == ("trainA", "valA")
    generate(cogent, {"train": 3}, 2, "no-relate", combos="B", workers=0)
    with pytest.raises(ModtrainError) as error:
        Recipe.load("nmn-typed", [f"data.source='{cogent}'"]).resolved()
    assert str(error.value) == (
        f"data folder {cogent} has 2 training splits (trainA, trainB), so data.train_split = 'auto' cannot choose "
        f"one; its splits: trainA, trainB, valA, valB, testA, testB; choose with {KEYS}")
    # nothing selects on the other condition: stopping early on valB would choose by CoGenT's test condition
    with pytest.raises(ModtrainError, match="data.train_split = 'trainA', data.val_split = 'valB': a module trained "
                                            "on CoGenT condition A would stop early .select. on condition B"):
        Recipe.load("nmn-typed", [f"data.source='{cogent}'", "data.train_split='trainA'",
                                  "data.val_split='valB'"]).resolved()
    assert Recipe.load("nmn-typed", [f"data.source='{cogent}'", "data.train_split='trainB'",
                                     "data.val_split='valB'"]).resolved().data.val_split == "valB"
