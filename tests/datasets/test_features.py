import json
import sys
import types

import h5py
import numpy as np
import pytest
import torch
from modtrain.datasets.clevr import ATTRIBUTES, ClevrFolder
from modtrain.datasets.features import (
    CLEVR_CNN_MEAN,
    CLEVR_CNN_STD,
    Backbone,
    ClevrCNN,
    cell_targets,
    extract_features,
    features_command,
    features_path,
    load_resnet101_backbone,
    pretrain_clevr_cnn,
    pretrain_condition,
    recolored,
    validate_features,
)
from torch import nn

from modtrain.errors import ModtrainError


def _random_backbone(seed=0):
    torch.manual_seed(seed)
    net = ClevrCNN()
    # non-trivial running statistics, so eval-mode BatchNorm differs from batch statistics
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return Backbone("clevr-cnn", net.eval(), 64, CLEVR_CNN_MEAN, CLEVR_CNN_STD, "0" * 64)


def test_cell_targets_label_the_covering_object():
    objects = [{"color": "blue", "shape": "sphere", "size": "large", "material": "metal",
                "rotation": 0.0, "pixel_coords": [36, 28, 0.0]}]
    targets = cell_targets(objects, 64, 8)
    assert targets.shape == (4, 8, 8)
    # the sphere's centre (36, 28) lies in cell row 3, column 4
    expected = [ATTRIBUTES[a].index(objects[0][a]) + 1 for a in ("color", "shape", "size", "material")]
    assert targets[:, 3, 4].tolist() == expected
    assert targets[:, 0, 0].tolist() == [0, 0, 0, 0]
    assert targets[:, 7, 7].tolist() == [0, 0, 0, 0]
    assert (targets[0] > 0).sum() >= 2  # a large sphere (15 px) spans several 8 px cells


def test_extract_features_rows_shapes_attrs_and_chunks(tiny_clevr, tmp_path):
    folder = ClevrFolder(tiny_clevr)
    paths = [folder.image_path("val", i) for i in range(8)]
    backbone = _random_backbone()
    out = tmp_path / "val.h5"
    shape = extract_features(paths, backbone, out, batch_size=3, extra_attrs={"split": "val"})
    assert shape == (8, 64, 8, 8)
    with h5py.File(out) as f:
        feats = f["features"][:]
        assert f["features"].chunks[0] >= 1 and f["features"].chunks[1:] == (64, 8, 8)
        assert f.attrs["backbone"] == "clevr-cnn" and f.attrs["input_size"] == 64
        assert json.loads(f.attrs["normalization"])["mean"] == list(CLEVR_CNN_MEAN)
        assert f.attrs["schema_version"] == 1 and f.attrs["split"] == "val"
    # row i is image i, whatever the batching (BatchNorm runs on its running statistics)
    single = tmp_path / "one.h5"
    extract_features(paths[5:6], backbone, single, batch_size=1)
    with h5py.File(single) as f:
        np.testing.assert_allclose(f["features"][0], feats[5], rtol=1e-4, atol=1e-5)
    again = tmp_path / "again.h5"
    extract_features(paths, backbone, again, batch_size=8, dtype="float16")
    with h5py.File(again) as f:
        assert f["features"].dtype == np.float16
        np.testing.assert_allclose(f["features"][:].astype(np.float32), feats, rtol=1e-2, atol=1e-2)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


@pytest.mark.slow  # seconds each: the fast loop stays under 30 s on a slower CPU
def test_pretraining_learns_attributes_per_location():
    net, metrics = pretrain_clevr_cnn(image_size=64, num_images=300, epochs=4, seed=0)
    acc = metrics["held_out_cell_accuracy"]
    assert acc["color"] > 0.3 and acc["size"] > 0.4 and acc["floor"] > 0.8
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def _iep_file(path, rows, shape=(4, 2, 2), name="features", dtype="float32"):
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=np.zeros((rows, *shape), dtype))
    return path


def test_validate_features_errors(tmp_path):
    assert validate_features(_iep_file(tmp_path / "ok.h5", 8), 8) == (8, 4, 2, 2)
    with pytest.raises(ModtrainError, match=r"has 7 rows but the split has 8 images"):
        validate_features(_iep_file(tmp_path / "short.h5", 7), 8)
    with pytest.raises(ModtrainError, match=r"no dataset 'features' \(found: feats\)"):
        validate_features(_iep_file(tmp_path / "name.h5", 8, name="feats"), 8)
    with pytest.raises(ModtrainError, match=r"expected \(N_images, C, H, W\)"):
        validate_features(_iep_file(tmp_path / "flat.h5", 8, shape=(4,)), 8)
    with pytest.raises(ModtrainError, match="expected float32 or float16"):
        validate_features(_iep_file(tmp_path / "int.h5", 8, dtype="int32"), 8)
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ModtrainError, match="not a readable HDF5 file"):
        validate_features(tmp_path / "junk.h5")


def test_from_h5_validates_and_links_existing_features(tiny_clevr, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_clevr, data)
    iep = tmp_path / "iep"
    iep.mkdir()
    for split, n in [("train", 30), ("val", 8), ("test", 8)]:
        _iep_file(iep / f"{split}_features.h5", n)
    shapes = features_command(data, from_h5=str(iep / "{split}_features.h5"))
    assert shapes["val"] == (8, 4, 2, 2)
    assert features_path(data, "val").resolve() == (iep / "val_features.h5").resolve()
    _iep_file(iep / "test_features.h5", 5)
    with pytest.raises(ModtrainError, match=r"test_features.h5: 'features' has 5 rows but the split has 8 images"):
        features_command(data, from_h5=str(iep / "{split}_features.h5"))
    with pytest.raises(ModtrainError, match=r"use a pattern with \{split\}"):
        features_command(data, from_h5=str(iep / "val_features.h5"))


def test_resnet101_without_torchvision_or_weights_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ModtrainError, match="needs torchvision"):
        load_resnet101_backbone(tmp_path / "w.pt")


class _FakeResNet(nn.Module):
    """Stands in for torchvision's ResNet-101: same attribute names, tiny layers."""

    def __init__(self, weights=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Conv2d(4, 4, 3, 1, 1)
        self.layer2 = nn.Conv2d(4, 8, 3, 2, 1)
        self.layer3 = nn.Conv2d(8, 16, 3, 2, 1)
        self.layer4 = nn.Conv2d(16, 32, 3, 2, 1)
        self.fc = nn.Linear(32, 10)


def test_resnet101_backbone_stops_at_layer3_in_eval_mode(monkeypatch, tmp_path):
    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(resnet101=_FakeResNet)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    with pytest.raises(ModtrainError, match="needs --weights PATH"):
        load_resnet101_backbone(None)
    weights = tmp_path / "resnet101.pth"
    torch.save(_FakeResNet().state_dict(), weights)
    backbone = load_resnet101_backbone(weights)
    assert backbone.input_size == 224 and backbone.mean == (0.485, 0.456, 0.406)
    assert not backbone.net.training
    out = backbone(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 16, 14, 14)  # layer3 at stride 16, as clevr-iep's 1024×14×14
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ModtrainError, match="not a ResNet-101 state dict"):
        load_resnet101_backbone(tmp_path / "bad.pth")


def test_from_h5_links_all_splits_or_none_and_leaves_the_folders_own_files_alone(tiny_clevr, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(tiny_clevr, data)
    own = data / "features"
    own.mkdir()
    for split, n in [("train", 30), ("val", 8), ("test", 8)]:
        _iep_file(own / f"{split}.h5", n)
    before = {p.name: p.read_bytes() for p in own.iterdir()}
    # pointing at the folder's own files: nothing is replaced (before, each became a link to itself)
    features_command(data, from_h5=str(own / "{split}.h5"))
    assert {p.name: p.read_bytes() for p in own.iterdir()} == before
    assert not any(p.is_symlink() for p in own.iterdir())
    # one bad source split: no split is linked
    iep = tmp_path / "iep"
    iep.mkdir()
    for split, n in [("train", 30), ("val", 8), ("test", 5)]:
        _iep_file(iep / f"{split}_features.h5", n)
    with pytest.raises(ModtrainError, match=r"test_features.h5: 'features' has 5 rows"):
        features_command(data, from_h5=str(iep / "{split}_features.h5"))
    assert {p.name: p.read_bytes() for p in own.iterdir()} == before
    assert not any(p.is_symlink() for p in own.iterdir())


def test_a_cogent_backbone_pretrains_on_its_training_condition_only():
    """CoGenT's protocol: clevr-cnn never sees the colour-shape pairs of the condition it is tested
    on. auto takes the training split's condition; a folder training on both must say which."""
    from modtrain.datasets.scenes import COGENT

    assert pretrain_condition(["trainA", "valA", "valB", "testB"]) == "A"
    assert pretrain_condition(["valB", "testB", "trainB"]) == "B"
    assert pretrain_condition(["train", "val", "test"]) is None
    assert pretrain_condition(["trainA", "valB"], "none") is None and pretrain_condition(["train"], "B") == "B"
    with pytest.raises(ModtrainError, match=r"F has training splits of both CoGenT conditions \(trainA, trainB\)"):
        pretrain_condition(["trainA", "trainB", "valA"], where="F")
    seen = []
    import modtrain.datasets.features as features

    real = features.make_scene

    def recording(*args):
        scene = real(*args)
        seen.extend(scene.objects)
        return scene

    features.make_scene, restore = recording, features.make_scene
    try:
        _, metrics = pretrain_clevr_cnn(image_size=32, num_images=40, epochs=1, seed=0, combos="A")
    finally:
        features.make_scene = restore
    pairs = {(o["shape"], o["color"]) for o in seen}
    assert {s for s, _ in pairs} >= {"cube", "cylinder"}  # both restricted shapes were drawn
    assert all(color in COGENT["A"][shape] for shape, color in pairs if shape in COGENT["A"])
    assert metrics["scenes"] == "CoGenT condition A"


def test_features_of_a_cogent_folder_say_which_condition_their_backbone_saw(tmp_path):
    from modtrain.datasets.generate import generate
    from modtrain.datasets.info import data_info, format_info

    generate(tmp_path, {"train": 3, "val": 2}, 2, "exist", combos="A", workers=0)
    generate(tmp_path, {"val": 2}, 2, "exist", combos="B", workers=0)
    features_command(tmp_path, pretrain_images=8, pretrain_epochs=1)
    card = json.loads((tmp_path / "features" / "clevr-cnn.json").read_text())
    assert card["config"]["combos"] == "A" and card["metrics"]["scenes"] == "CoGenT condition A"
    for split in ("trainA", "valA", "valB"):
        with h5py.File(features_path(tmp_path, split), "r") as f:
            assert f.attrs["backbone_pretrained_on"] == "CoGenT condition A"
    info = data_info(tmp_path)
    assert info["features"]["valB"] == {"backbone": "clevr-cnn", "pretrained_on": "CoGenT condition A"}
    assert "features of trainA, valA, valB: clevr-cnn, pretrained on CoGenT condition A" in format_info(info)
    # asked for every pair, it pretrains again (its config differs) and says so
    features_command(tmp_path, pretrain_images=8, pretrain_epochs=1, pretrain_combos="none")
    card = json.loads((tmp_path / "features" / "clevr-cnn.json").read_text())
    assert "combos" not in card["config"] and card["metrics"]["scenes"] == "every colour-shape pair"
    assert data_info(tmp_path)["features"]["valB"]["pretrained_on"] == "every colour-shape pair"
    # recoloured views for shape, size and material: another backbone, and the files say so
    features_command(tmp_path, pretrain_images=8, pretrain_epochs=1, pretrain_recolor=True)
    card = json.loads((tmp_path / "features" / "clevr-cnn.json").read_text())
    assert card["config"]["combos"] == "A" and card["config"]["recolor"] is True
    assert data_info(tmp_path)["features"]["trainA"]["pretrained_on"] == (
        "CoGenT condition A, shape, size and material learnt on recoloured views")


def test_a_recoloured_view_changes_colours_and_keeps_everything_else():
    """``recolored``: per image, one permutation and gain of the RGB channels for every pixel, so
    pixels of one colour stay of one colour (shapes, sizes, places kept) and colours change."""
    from modtrain.datasets.generate import split_rng
    from modtrain.datasets.scenes import make_scene, render_scene

    rng = split_rng(0, "pretrain")
    prep = Backbone("clevr-cnn", ClevrCNN(), 64, CLEVR_CNN_MEAN, CLEVR_CNN_STD, "")
    x = torch.from_numpy(np.stack([prep.prepare(render_scene(make_scene(rng, "p", i, 64).objects, 64))
                                   for i in range(8)]))
    y = recolored(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    for before, after in zip(x, y):  # same colour before → same colour after, pixel by pixel
        _, groups = torch.unique(before.flatten(1).T, dim=0, return_inverse=True)
        for g in groups.unique()[:20]:
            same = after.flatten(1).T[groups == g]
            assert (same - same[0]).abs().max() < 1e-5
    raw = x * 0.25 + 0.5
    changed = [not torch.allclose(a.mean((1, 2)), b.mean((1, 2)), atol=1e-3) for a, b in zip(raw, y * 0.25 + 0.5)]
    assert sum(changed) >= 6  # colours do change (a gain near 1 and the identity order can leave one)
    assert float(y.min()) >= -2.0 - 1e-5 and float(y.max()) <= 2.0 + 1e-5  # still inside [0, 1] when drawn


def test_a_split_backbone_keeps_colour_apart_and_says_which_channels_serve_what(tmp_path):
    """``--pretrain-split``: clevr-cnn as two bodies; the card says so, every features file names
    the channels of each attribute, and the colour channels do not move when only the form body
    changes (the two bodies share nothing)."""
    from modtrain.datasets.families import value_words
    from modtrain.datasets.features import ColorFormCNN
    from modtrain.datasets.generate import generate

    from modtrain.data import PreparedData

    generate(tmp_path, {"train": 3, "val": 2}, 2, "exist", combos="A", workers=0)
    generate(tmp_path, {"val": 2}, 2, "exist", combos="B", workers=0)
    with pytest.raises(ModtrainError, match="choose one"):
        features_command(tmp_path, pretrain_images=8, pretrain_epochs=1, pretrain_recolor=True, pretrain_split=True)
    features_command(tmp_path, pretrain_images=8, pretrain_epochs=1, pretrain_split=True)
    card = json.loads((tmp_path / "features" / "clevr-cnn.json").read_text())
    assert card["config"]["split"] is True and "colour and form in separate channels" in card["metrics"]["scenes"]
    groups = {"color": [0, 16], "shape": [16, 64], "size": [16, 64], "material": [16, 64]}
    for split in ("trainA", "valA", "valB"):
        with h5py.File(features_path(tmp_path, split), "r") as f:
            assert json.loads(f.attrs["attribute_channels"]) == groups and f["features"].shape[1] == 64
    from modtrain.datasets.prepare import prepare

    prepare(tmp_path)
    dims, tokens = PreparedData(tmp_path).dims(), PreparedData(tmp_path).vocab["question_tokens"]
    assert dims["attribute_channels"] == groups
    # the question words that name a value, by attribute (what a blind encoder reads as one word)
    named = {word: attribute for attribute, ids in dims["attribute_tokens"].items() for word, i in tokens.items()
             if i in ids}
    assert named and all(value_words()[word] == attribute for word, attribute in named.items())
    assert set(value_words()) & set(tokens) == set(named)
    net = ColorFormCNN()
    x = torch.randn(2, 3, 64, 64)
    before = net.eval()(x)
    with torch.no_grad():
        for p in net.form.parameters():
            p.add_(1.0)
    after = net(x)
    assert torch.equal(before[:, :16], after[:, :16]) and not torch.allclose(before[:, 16:], after[:, 16:])
    # the heads read their own body's channels
    assert net.head("color", before).shape[1] == len(ATTRIBUTES["color"]) + 1
    assert net.heads["shape"].in_channels == 48 and net.heads["color"].in_channels == 16


def test_recoloured_objects_keep_their_place_and_form_and_lose_their_named_colour():
    """``recolored_objects``: each object drawn in a random colour of its own, nothing else changed."""
    from modtrain.datasets.features import recolored_objects
    from modtrain.datasets.generate import split_rng
    from modtrain.datasets.scenes import RGB, make_scene, object_id_map, render_scene

    rng = split_rng(0, "pretrain")
    objects = [o for i in range(6) for o in make_scene(rng, "p", i, 64).objects]
    recolored = recolored_objects(objects, np.random.default_rng(0))
    assert [{k: v for k, v in o.items() if k != "rgb"} for o in recolored] == objects
    colours = {o["rgb"] for o in recolored}
    assert len(colours) == len(objects) and not colours & set(RGB.values())
    assert all(0 <= c <= 255 for rgb in colours for c in rgb)
    scene = make_scene(split_rng(1, "pretrain"), "p", 0, 64).objects
    drawn, again = np.asarray(render_scene(scene, 64)), np.asarray(render_scene(recolored_objects(
        scene, np.random.default_rng(1)), 64))
    ids = object_id_map(scene, 64)
    assert (drawn[ids == 0] == again[ids == 0]).all(-1).mean() > 0.95  # the floor as it was (edges blend)
    assert (np.abs(drawn.astype(int) - again.astype(int)).sum(-1)[ids > 0] > 30).mean() > 0.5
