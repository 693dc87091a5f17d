"""``modtrain data features``: images → frozen backbone → ``features/{split}.h5``.

The file layout is clevr-iep's: one HDF5 file per split with a dataset ``features`` of
shape (N_images, C, H, W), row i holding image index i, chunked per block of images.
Backbones:

- ``clevr-cnn``: a small CNN built in, pretrained by this command on a separate generated
  split with per-location attribute targets from the scene files, then frozen. It stands
  in for ImageNet pretraining, which cannot be downloaded here.
- ``resnet101``: torchvision's ResNet-101 up to layer3 at 224² in eval mode (1024×14×14,
  as clevr-iep), from a local weights file; needs torchvision.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from modtrain.datasets.clevr import ATTRIBUTES
from modtrain.datasets.scenes import make_scene, object_id_map, render_scene
from PIL import Image
from torch import nn

from modtrain.card import state_sha256
from modtrain.errors import ModtrainError
from modtrain.io import atomic_path, default_workers, sha256_file, write_json
from modtrain.progress import progress

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
BACKBONES = ("clevr-cnn", "resnet101")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLEVR_CNN_MEAN, CLEVR_CNN_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
ATTRIBUTE_ORDER = ("color", "shape", "size", "material")
CHUNK_BYTES = 1 << 20
# 2500 scenes × 12 epochs: ~90% per-cell shape accuracy, ~98% for the other attributes, ~25 s on 2 CPU cores.
PRETRAIN_IMAGES, PRETRAIN_EPOCHS = 2500, 12


def features_path(data_dir: str | Path, split: str) -> Path:
    """Where a split's features live inside a data folder."""
    return Path(data_dir) / "features" / f"{split}.h5"


class ClevrCNN(nn.Module):
    """Small stride-8 CNN for the procedural scenes; ``heads`` are used only in pretraining."""

    def __init__(self, channels: int = 64):
        super().__init__()

        def block(cin, cout, kernel, stride):
            return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                    nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(*block(3, 32, 5, 2), *block(32, 64, 3, 2),
                                  *block(64, 64, 3, 2), *block(64, channels, 3, 1))
        # One linear read-out per attribute, background class first: pretraining makes
        # every attribute linearly decodable at every location, which is what find needs.
        self.heads = nn.ModuleDict({a: nn.Conv2d(channels, len(ATTRIBUTES[a]) + 1, 1)
                                    for a in ATTRIBUTE_ORDER})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    # which channels each attribute's head reads: all of them (ColorFormCNN: its own body's)
    attribute_channels: dict[str, list[int]] | None = None

    def head(self, attribute: str, features: torch.Tensor) -> torch.Tensor:
        """Pretraining's read-out of ``attribute`` from features of every channel."""
        if self.attribute_channels is not None:
            start, stop = self.attribute_channels[attribute]
            features = features[:, start:stop]
        return self.heads[attribute](features)


class ColorFormCNN(ClevrCNN):
    """clevr-cnn in two bodies that share nothing: a colour body (the first quarter of the channels)
    pretrained on the scenes as drawn to tell colour, and a form body (the rest) pretrained on the
    same scenes with every object recoloured at random (``recolored_objects``) to tell shape, size
    and material. In CoGenT's condition A a cube's colour tells it from a cylinder; the form body
    never sees a colour that goes with a shape, and the colour body is asked nothing but colour.
    The features say which channels serve which attribute (``attribute_channels``, kept in every
    features file), and find and describe read only their attribute's channels (issue 29)."""

    def __init__(self, channels: int = 64):
        nn.Module.__init__(self)
        color = channels // 4
        self.color, self.form = ClevrCNN(color).body, ClevrCNN(channels - color).body
        self.heads = nn.ModuleDict({a: nn.Conv2d(color if a == "color" else channels - color,
                                                 len(ATTRIBUTES[a]) + 1, 1) for a in ATTRIBUTE_ORDER})
        self.attribute_channels = {a: [0, color] if a == "color" else [color, channels] for a in ATTRIBUTE_ORDER}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.color(images), self.form(images)], 1)


def prepare_image(image: Image.Image, size: int, mean, std) -> np.ndarray:
    """(3, size, size) float32 input: RGB, resized (bicubic) where needed, normalized."""
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.array(mean, np.float32)) / np.array(std, np.float32)
    return array.transpose(2, 0, 1)


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded and prepared for a backbone: what DataLoader workers read in parallel
    with the backbone's compute (holds no network, so it pickles cheaply to the workers)."""

    def __init__(self, paths: list[Path], size: int, mean, std):
        self.paths, self.size, self.mean, self.std = list(paths), size, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        try:
            with Image.open(self.paths[i]) as image:
                return prepare_image(image, self.size, self.mean, self.std)
        except (OSError, ValueError) as e:
            raise ModtrainError(f"cannot read image {self.paths[i]}: {e}") from None


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays))


@dataclass
class Backbone:
    """A frozen feature extractor and how images are prepared for it."""

    name: str
    net: nn.Module
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str
    pretrained_on: str = ""  # what it learnt from, in words: kept in its features' attributes

    def prepare(self, image: Image.Image) -> np.ndarray:
        """(3, S, S) float32 normalized input for one PIL image."""
        return prepare_image(image, self.input_size, self.mean, self.std)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)

    def attrs(self) -> dict[str, str | int]:
        attrs = {"backbone": self.name, "input_size": self.input_size,
                 "normalization": json.dumps({"mean": self.mean, "std": self.std}),
                 "backbone_sha256": self.weights_sha256, "schema_version": SCHEMA_VERSION,
                 "backbone_pretrained_on": self.pretrained_on}
        groups = getattr(self.net, "attribute_channels", None)
        if groups is not None:  # which channels serve which attribute: what find and describe read
            attrs["attribute_channels"] = json.dumps(groups)
        return attrs


def cell_owners(objects: list[dict], image_size: int, grid: int, min_cover: float = 0.15) -> np.ndarray:
    """(grid, grid) int64: per cell, 1 + the index of the object covering most of it, when that
    object covers at least ``min_cover`` of the cell; 0 for the floor."""
    ids = object_id_map(objects, image_size).astype(np.int64)
    cell = image_size // grid
    blocks = ids[:grid * cell, :grid * cell].reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(grid, grid, cell * cell)
    counts = np.stack([(blocks == k).sum(-1) for k in range(len(objects) + 1)], -1)
    counts[..., 0] = 0
    return np.where(counts.max(-1) >= min_cover * cell * cell, counts.argmax(-1), 0)


def cell_targets(objects: list[dict], image_size: int, grid: int, min_cover: float = 0.15) -> np.ndarray:
    """(4, grid, grid) int64 targets: per cell, each attribute's value index + 1, 0 for floor:
    the attributes of the cell's owner (``cell_owners``)."""
    owner = cell_owners(objects, image_size, grid, min_cover)
    targets = np.zeros((len(ATTRIBUTE_ORDER), grid, grid), np.int64)
    for a, attr in enumerate(ATTRIBUTE_ORDER):
        values = np.array([0] + [ATTRIBUTES[attr].index(o[attr]) + 1 for o in objects])
        targets[a] = values[owner]
    return targets


def pretrain_clevr_cnn(image_size: int = 64, num_images: int = PRETRAIN_IMAGES, epochs: int = PRETRAIN_EPOCHS,
                       seed: int = 0, channels: int = 64, batch_size: int = 64,
                       device: torch.device | str = "cpu", combos: str | None = None,
                       recolor: bool = False, split: bool = False) -> tuple[ClevrCNN, dict]:
    """Train ClevrCNN on freshly generated scenes (the ``pretrain`` split) to predict every
    cell's attributes; return the network in eval mode and held-out per-attribute accuracy.
    With a CoGenT condition (``combos``) its scenes keep that condition's colour-shape pairs: a
    CoGenT backbone must never see the pairs of the condition it is tested on. With ``recolor``
    the shape, size and material heads learn on ``recolored`` views of the same images (colour on
    the images as drawn): in CoGenT's condition A an object's colour tells a cube from a cylinder,
    and a backbone pretrained on A alone learns shape partly through colour (bench_cogent.py). With
    ``split`` the network is a ``ColorFormCNN``: colour learnt by its colour body on the scenes as
    drawn, the rest by its form body on a fresh ``recolored_objects`` rendering every epoch."""
    from modtrain.datasets.generate import split_rng

    if image_size % 8:
        raise ModtrainError(f"the clevr-cnn backbone needs an image size divisible by 8, got {image_size}")
    if recolor and split:
        raise ModtrainError("pretrain recolouring and the split clevr-cnn are two remedies for the same thing; "
                            "choose one (--pretrain-recolor or --pretrain-split)")
    torch.manual_seed(seed)
    rng = split_rng(seed, "pretrain")
    grid = image_size // 8
    scenes = [make_scene(rng, "pretrain", i, image_size, combos) for i in range(num_images)]
    net = ColorFormCNN(channels) if split else ClevrCNN(channels)
    prep = Backbone("clevr-cnn", net, image_size, CLEVR_CNN_MEAN, CLEVR_CNN_STD, "")

    def rendered(recolor_rng: np.random.Generator | None = None) -> torch.Tensor:
        return torch.from_numpy(np.stack([prep.prepare(render_scene(
            recolored_objects(s.objects, recolor_rng) if recolor_rng else s.objects, image_size)) for s in scenes]))

    images = rendered()
    recolor_rng = np.random.default_rng([seed, 29])
    targets = torch.from_numpy(np.stack([cell_targets(s.objects, image_size, grid) for s in scenes]))
    n_val = max(1, num_images // 10)
    train_x, train_y, val_x, val_y = images[n_val:], targets[n_val:], images[:n_val], targets[:n_val]
    net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    with progress(range(steps), label="pretrain clevr-cnn") as bar:
        it = iter(bar)
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(train_x), generator=generator)
            views = rendered(recolor_rng)[n_val:] if split else None
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                x, y = train_x[idx].to(device), train_y[idx].to(device)
                if split:
                    loss = loss_fn(net.heads["color"](net.color(x)), y[:, ATTRIBUTE_ORDER.index("color")])
                    form = net.form(views[idx].to(device))
                    loss = loss + sum(loss_fn(net.heads[a](form), y[:, k])
                                      for k, a in enumerate(ATTRIBUTE_ORDER) if a != "color")
                else:
                    feats = net(x)
                    seen = net(recolored(x, generator)) if recolor else feats
                    loss = sum(loss_fn(net.heads[a](feats if a == "color" else seen), y[:, k])
                               for k, a in enumerate(ATTRIBUTE_ORDER))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                next(it, None)
    net.eval()
    with torch.no_grad():
        feats = net(val_x.to(device))
        object_cells = val_y[:, 0] > 0
        accuracy = {}
        for k, attr in enumerate(ATTRIBUTE_ORDER):
            pred = net.head(attr, feats).argmax(1).cpu()
            accuracy[attr] = float((pred == val_y[:, k])[object_cells].float().mean())
        accuracy["floor"] = float((net.head("color", feats).argmax(1).cpu() == 0)[~object_cells].float().mean())
    net.requires_grad_(False)
    return net.cpu(), {"images": num_images, "epochs": epochs, "seed": seed,
                       "scenes": scenes_seen(combos, recolor, split), "held_out_cell_accuracy": accuracy}


def recolored_objects(objects: list[dict], rng: np.random.Generator) -> list[dict]:
    """The objects, each drawn in a colour of its own drawn at random (any hue, saturation 0.2–1,
    value 0.25–1; not one of CLEVR's eight names): a view in which colour says nothing of shape."""
    out = []
    for obj in objects:
        hue, saturation, value = rng.random(), 0.2 + 0.8 * rng.random(), 0.25 + 0.75 * rng.random()
        out.append({**obj, "rgb": tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))})
    return out


def recolored(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Prepared clevr-cnn inputs with each image's colours changed at random, the same way for every
    pixel of the image: its RGB channels permuted and each scaled by a gain in [0.6, 1.4]. Objects
    keep their shape, size, material and place; their colours (and the floor's) become others."""
    mean = torch.tensor(CLEVR_CNN_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLEVR_CNN_STD, device=x.device).view(1, 3, 1, 1)
    n = len(x)
    order = torch.argsort(torch.rand(n, 3, generator=generator), dim=1).to(x.device)
    gains = (0.6 + 0.8 * torch.rand(n, 3, 1, 1, generator=generator)).to(x.device)
    raw = torch.gather(x * std + mean, 1, order[:, :, None, None].expand_as(x))
    return ((raw * gains).clamp(0, 1) - mean) / std


def scenes_seen(combos: str | None, recolor: bool = False, split: bool = False) -> str:
    """What a clevr-cnn's pretraining scenes were, in words (its card, its features' attributes)."""
    seen = f"CoGenT condition {combos}" if combos else "every colour-shape pair"
    if split:
        return seen + ", colour and form in separate channels, form learnt on objects recoloured at random"
    return seen + (", shape, size and material learnt on recoloured views" if recolor else "")


def pretrain_condition(splits: list[str], choice: str = "auto", where: str = "the data folder") -> str | None:
    """The CoGenT condition clevr-cnn pretrains on: ``choice`` A or B, none for every pair, or auto:
    the condition of the folder's training split(s) (trainA → A; CoGenT trains on A and tests on
    both), none where no split is named for a condition."""
    from modtrain.datasets.scenes import COGENT, cogent_condition

    if choice != "auto":
        if choice != "none" and choice not in COGENT:
            raise ModtrainError(f"--pretrain-combos {choice!r}; valid: auto, A, B, none")
        return None if choice == "none" else choice
    training = sorted(s for s in splits if s.startswith("train") and cogent_condition(s))
    conditions = sorted({cogent_condition(s) for s in training})
    if len(conditions) > 1:
        raise ModtrainError(f"{where} has training splits of both CoGenT conditions ({', '.join(training)}), so "
                            f"clevr-cnn cannot tell which one it may see: give --pretrain-combos A (CoGenT trains "
                            f"on A and tests on A and B) or B")
    return conditions[0] if conditions else None


def clevr_cnn_config(image_size: int, seed: int, pretrain_images: int = PRETRAIN_IMAGES,
                     pretrain_epochs: int = PRETRAIN_EPOCHS, combos: str | None = None,
                     pretrain_recolor: bool = False, pretrain_split: bool = False) -> dict[str, int | str]:
    """What a pretrained clevr-cnn depends on (recorded in ``features/clevr-cnn.json``); a CoGenT
    condition, recolouring and the split network only when there are, so that the backbones of other
    folders stay valid."""
    config: dict[str, int | str] = {"image_size": image_size, "seed": seed, "images": pretrain_images,
                                    "epochs": pretrain_epochs}
    if combos:
        config["combos"] = combos
    if pretrain_recolor:
        config["recolor"] = True
    if pretrain_split:
        config["split"] = True
    return config


def load_clevr_cnn_backbone(data_dir: Path, image_size: int, seed: int, device, retrain: bool = False,
                            pretrain_images: int = PRETRAIN_IMAGES, pretrain_epochs: int = PRETRAIN_EPOCHS,
                            combos: str | None = None, pretrain_recolor: bool = False,
                            pretrain_split: bool = False) -> Backbone:
    """The pretrained clevr-cnn of a data folder, trained now if missing, asked to, or pretrained
    with other settings (a CoGenT condition among them)."""
    weights = data_dir / "features" / "clevr-cnn.pt"
    card = weights.with_suffix(".json")
    config = clevr_cnn_config(image_size, seed, pretrain_images, pretrain_epochs, combos, pretrain_recolor,
                              pretrain_split)
    net = ColorFormCNN() if pretrain_split else ClevrCNN()
    reuse = weights.exists() and card.exists() and not retrain
    if reuse:
        saved = json.loads(card.read_text())
        reuse = saved.get("config") == config
    if reuse:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        log.info("reusing pretrained clevr-cnn %s", weights)
    else:
        net, metrics = pretrain_clevr_cnn(image_size, pretrain_images, pretrain_epochs, seed, device=device,
                                          combos=combos, recolor=pretrain_recolor, split=pretrain_split)
        with atomic_path(weights) as tmp:
            torch.save(net.state_dict(), tmp)
        write_json(card, {"config": config, "metrics": metrics})
        log.info("pretrained clevr-cnn: held-out cell accuracy %s", metrics["held_out_cell_accuracy"])
    net.eval().requires_grad_(False)
    # the hash of the tensors, not of the file: torch.save writes other bytes for the same weights
    return Backbone("clevr-cnn", net, image_size, CLEVR_CNN_MEAN, CLEVR_CNN_STD, state_sha256(net.state_dict()),
                    scenes_seen(combos, pretrain_recolor, pretrain_split))


def load_resnet101_backbone(weights: str | Path | None) -> Backbone:
    """torchvision ResNet-101 truncated after layer3, from a local state-dict file."""
    try:
        import torchvision
    except ImportError:
        raise ModtrainError(
            "backbone resnet101 needs torchvision, which is not installed; install a "
            "torchvision build matching your torch, or use --backbone clevr-cnn"
        ) from None
    if weights is None or not Path(weights).is_file():
        raise ModtrainError(
            f"backbone resnet101 needs --weights PATH to a local ResNet-101 state dict "
            f"(nothing is downloaded at run time); got {weights}"
        )
    model = torchvision.models.resnet101(weights=None)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, KeyError, ValueError) as e:
        raise ModtrainError(f"{weights}: not a ResNet-101 state dict ({str(e).splitlines()[0]})") from None
    net = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool,
                        model.layer1, model.layer2, model.layer3)
    net.eval().requires_grad_(False)  # BatchNorm must use its running statistics here
    return Backbone("resnet101", net, 224, IMAGENET_MEAN, IMAGENET_STD, sha256_file(weights), "ImageNet")


def _chunk_rows(n_images: int, bytes_per_image: int) -> int:
    return max(1, min(n_images, CHUNK_BYTES // max(1, bytes_per_image)))


def extract_features(image_paths: list[Path], backbone: Backbone, out_path: Path,
                     dtype: str = "float32", batch_size: int = 64,
                     device: torch.device | str = "cpu", extra_attrs: dict | None = None,
                     label: str = "features", image_ids: np.ndarray | None = None,
                     workers: int | None = None) -> tuple[int, ...]:
    """Run the backbone over images (row i = image i) into an HDF5 file, atomically; ``image_ids``
    (a VQA split's ids in row order) are kept beside them as the dataset ``image_ids``. ``workers``
    processes decode the images while the backbone computes. Default: on CUDA one per other core;
    on the CPU none, since the backbone's own threads already use every core (measured on 2 cores:
    a decoding worker made extraction 0.79× as fast, bench/results/workers.json)."""
    if dtype not in ("float32", "float16"):
        raise ModtrainError(f"--dtype {dtype!r} is not supported; valid: float32, float16")
    if not image_paths:
        raise ModtrainError(f"no images to extract features from for {out_path}")
    net = backbone.net.to(device).eval()
    if workers is None:
        workers = default_workers() if torch.device(device).type == "cuda" else 0
    n = len(image_paths)
    loader = torch.utils.data.DataLoader(
        ImageFiles(image_paths, backbone.input_size, backbone.mean, backbone.std), batch_size=batch_size,
        num_workers=workers if n > 2 * batch_size else 0, pin_memory=torch.device(device).type == "cuda",
        collate_fn=_stack)
    digest = hashlib.sha256()  # of the values, as written: what a consumer's fingerprint names
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        dataset = None
        batches = iter(loader)
        with progress(range(0, n, batch_size), label=label) as bar:
            for start in bar:
                try:
                    batch = next(batches)
                except ModtrainError as e:  # from a worker: its message without the worker's traceback
                    text = str(e)
                    raise ModtrainError(text.rsplit("ModtrainError: ", 1)[-1].strip()) from None
                with torch.no_grad():
                    feats = net(batch.to(device, non_blocking=True)).float().cpu().numpy().astype(dtype)
                if dataset is None:
                    per_image = int(np.prod(feats.shape[1:])) * feats.dtype.itemsize
                    dataset = f.create_dataset(
                        "features", shape=(n, *feats.shape[1:]), dtype=dtype,
                        chunks=(_chunk_rows(n, per_image), *feats.shape[1:]), fletcher32=True)
                dataset[start:start + len(feats)] = feats
                digest.update(np.ascontiguousarray(feats).tobytes())
        if image_ids is not None:
            f.create_dataset("image_ids", data=np.asarray(image_ids, np.int64))
        for key, value in {**backbone.attrs(), **(extra_attrs or {}), "features_sha256": digest.hexdigest()}.items():
            f.attrs[key] = value
        shape = dataset.shape
    return shape


def validate_features(path: str | Path, num_images: int | None = None,
                      image_ids: np.ndarray | None = None, split: str | None = None) -> tuple[int, ...]:
    """Check a clevr-iep layout file: dataset ``features`` (N, C, H, W) of floats, N = images;
    where the file keeps its rows' ``image_ids`` (a VQA split), that they are ``image_ids``; and
    where it names its split (an attribute ``split``, as modtrain writes), that it is ``split``."""
    path = Path(path)
    if not path.is_file():
        raise ModtrainError(f"features file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise ModtrainError(f"{path}: no dataset 'features' (found: {', '.join(f.keys()) or 'nothing'})")
            shape, kind = f["features"].shape, f["features"].dtype.kind
            stored_ids = f["image_ids"][()] if "image_ids" in f else None
            stored_split = f.attrs.get("split")
    except OSError as e:
        raise ModtrainError(f"{path}: not a readable HDF5 file ({e})") from None
    if isinstance(stored_split, bytes):
        stored_split = stored_split.decode()
    if split is not None and stored_split is not None and str(stored_split) != split:
        raise ModtrainError(f"{path}: its attribute split = {str(stored_split)!r}, but it would stand for split "
                            f"{split!r}; give each split its own file (a pattern with {{split}})")
    if len(shape) != 4:
        raise ModtrainError(f"{path}: 'features' has shape {shape}; expected (N_images, C, H, W)")
    if kind != "f":
        raise ModtrainError(f"{path}: 'features' holds {kind!r} values; expected float32 or float16")
    if num_images is not None and shape[0] != num_images:
        raise ModtrainError(
            f"{path}: 'features' has {shape[0]} rows but the split has {num_images} images; "
            f"row i must hold image index i"
        )
    if image_ids is not None and stored_ids is not None and not np.array_equal(stored_ids, image_ids):
        first = int(np.flatnonzero(stored_ids != image_ids)[0]) if len(stored_ids) == len(image_ids) else 0
        raise ModtrainError(f"{path}: row {first} holds image_id {int(stored_ids[first])}, but the split's row {first} "
                            f"is image_id {int(image_ids[first])}; the features were extracted for other questions: "
                            f"run 'modtrain data features' again")
    return shape


def features_command(data_dir: str | Path, backbone: str = "clevr-cnn", weights: str | None = None,
                     from_h5: str | None = None, dtype: str = "float32", batch_size: int = 64,
                     device: torch.device | str = "cpu", seed: int = 0, retrain: bool = False,
                     pretrain_images: int = PRETRAIN_IMAGES, pretrain_epochs: int = PRETRAIN_EPOCHS,
                     splits: list[str] | None = None, workers: int | None = None,
                     pretrain_combos: str = "auto", pretrain_recolor: bool = False,
                     pretrain_split: bool = False) -> dict[str, tuple[int, ...]]:
    """Features for every split of a CLEVR or VQA folder; returns each split's array shape.
    ``workers`` processes decode the images (default: see ``extract_features``). clevr-cnn pretrains
    on the CoGenT condition ``pretrain_combos`` gives (``pretrain_condition``; auto: the training
    split's, for a CLEVR-CoGenT folder)."""
    from modtrain.datasets.folders import open_folder

    folder = open_folder(data_dir)
    splits = splits or folder.splits()
    shapes: dict[str, tuple[int, ...]] = {}
    if from_h5 is not None:
        if "{split}" not in from_h5 and len(splits) > 1:
            raise ModtrainError(
                f"--from-h5 {from_h5!r} names one file but the data has splits {', '.join(splits)}; "
                f"use a pattern with {{split}}, e.g. /data/{{split}}_features.h5"
            )
        sources = {split: Path(from_h5.replace("{split}", split)).resolve() for split in splits}
        for split, source in sources.items():  # every split checked before any is linked: all or none
            shapes[split] = validate_features(source, folder.num_images(split),
                                              folder.image_ids(split) if folder.kind == "vqa" else None, split)
        for split, source in sources.items():
            target = features_path(data_dir, split)
            if target.exists() and target.resolve() == source:
                continue  # already that file (the folder's own, or linked before): nothing to replace
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                tmp.unlink()
                os.symlink(source, tmp)
        return shapes
    if backbone not in BACKBONES:
        raise ModtrainError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if backbone == "clevr-cnn" and weights is not None:
        raise ModtrainError(f"--weights {weights}: clevr-cnn keeps its own weights "
                            f"({Path(data_dir) / 'features' / 'clevr-cnn.pt'}, pretrained by this command; --retrain "
                            f"pretrains it again); --weights is for --backbone resnet101")
    image_size = _image_size(folder.image_paths(splits[0])[0])
    if backbone == "clevr-cnn" and not (Path(data_dir) / "generate.json").exists():
        warnings.warn(f"{data_dir}: modtrain did not generate these images, and clevr-cnn is pretrained on its own "
                      f"procedural scenes: on another generator's shapes a linear probe of its features recognised "
                      f"shape only 67% of the time (colour 96%), so expect a weak stand-in. Use --backbone resnet101 "
                      f"--weights PATH, or --from-h5 with features extracted elsewhere", stacklevel=2)
    if backbone == "clevr-cnn":
        combos = pretrain_condition(folder.splits(), pretrain_combos, f"data folder {data_dir}")
        net = load_clevr_cnn_backbone(Path(data_dir), image_size, seed, device, retrain,
                                      pretrain_images, pretrain_epochs, combos, pretrain_recolor, pretrain_split)
    else:
        net = load_resnet101_backbone(weights)
    for split in splits:
        ids = folder.image_ids(split) if folder.kind == "vqa" else None
        shapes[split] = extract_features(folder.image_paths(split), net, features_path(data_dir, split), dtype,
                                         batch_size, device, {"split": split}, label=f"features {split}", image_ids=ids,
                                         workers=workers)
    return shapes


def _image_size(path: Path) -> int:
    if not path.is_file():
        raise ModtrainError(f"image not found: {path}")
    with Image.open(path) as image:
        width, height = image.size
    return min(width, height) // 8 * 8
