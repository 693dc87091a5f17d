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
    with pytest.raises(ModtrainError, match="unknown recipe 'nmn-fancy'; shipped: e2e, film, lnmn, nmn-clevr, nmn-clevr-original, nmn-original, nmn-typed, nmn-vqa, nmn-vqa-original, snmn-gt, snmn-scratch"):
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
    assert str(error.value) == f"recipe nmn-typed: {message}"


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
