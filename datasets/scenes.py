"""Procedural 2-D scenes in the CLEVR vocabulary, and their rendering to PNG.

Objects are drawn from above on a plain floor: cubes as (rotated) squares, spheres as
discs, cylinders as upright cans with a lit top; rubber is matte, metal has a dark rim
and a specular highlight. Objects never overlap, so every attribute stays visible.
Relations are computed from positions as CLEVR does: object j is ``left`` of object i
when it lies further along the left direction by more than a margin.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from modtrain.datasets.clevr import ATTRIBUTES, COLORS, RELATIONS, Scene, image_filename
from PIL import Image, ImageDraw

from modtrain.errors import ModtrainError

# CLEVR's own RGB values for its eight colours.
RGB = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215),
    "green": (29, 105, 20), "brown": (129, 74, 25), "purple": (129, 38, 192),
    "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
BACKGROUND = (178, 178, 170)
# Half-size of an object as a fraction of the image side.
HALF_SIZE = {"small": 0.062, "large": 0.11}
# Bounding-circle radius of each shape in half-sizes (a rotated square reaches √2).
BOUND = {"cube": math.sqrt(2), "sphere": 1.0, "cylinder": 1.25}
# Image-plane directions of CLEVR's relations, seen from above: front is towards the viewer.
DIRECTIONS = {"left": (-1.0, 0.0, 0.0), "right": (1.0, 0.0, 0.0),
              "front": (0.0, 1.0, 0.0), "behind": (0.0, -1.0, 0.0),
              "above": (0.0, 0.0, 1.0), "below": (0.0, 0.0, -1.0)}
# CoGenT (Johnson et al., 2017): condition A restricts cubes and cylinders to disjoint colours, B swaps them.
COGENT = {
    "A": {"cube": ("gray", "blue", "brown", "yellow"), "cylinder": ("red", "green", "purple", "cyan")},
    "B": {"cube": ("red", "green", "purple", "cyan"), "cylinder": ("gray", "blue", "brown", "yellow")},
}
WORLD = 6.0  # scene width in CLEVR world units, for 3d_coords


def cogent_condition(split: str) -> str | None:
    """The CoGenT condition a split's name gives, as CLEVR-CoGenT names them (trainA → A, valB → B),
    or None."""
    for base in ("train", "val", "test"):
        if split.startswith(base) and split[len(base):] in COGENT:
            return split[len(base):]
    return None


def allowed_colors(shape: str, combos: str | None) -> tuple[str, ...]:
    """Colours a shape may take under a CoGenT condition (all colours without one)."""
    if combos is None:
        return COLORS
    if combos not in COGENT:
        raise ModtrainError(f"unknown CoGenT condition {combos!r}; valid: A, B")
    return COGENT[combos].get(shape, COLORS)


def sample_objects(rng: np.random.Generator, image_size: int, combos: str | None = None,
                   min_objects: int = 3, max_objects: int = 10) -> list[dict[str, Any]]:
    """3–10 non-overlapping objects with CLEVR attributes and coordinates."""
    target = int(rng.integers(min_objects, max_objects + 1))
    margin = 1.0
    objects: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float]] = []  # x, y, bounding radius in pixels
    attempts = 0
    while len(objects) < target and attempts < 60 * target:
        attempts += 1
        shape = str(rng.choice(ATTRIBUTES["shape"]))
        size = str(rng.choice(ATTRIBUTES["size"]))
        radius = HALF_SIZE[size] * image_size * BOUND[shape]
        x = rng.uniform(radius + margin, image_size - radius - margin)
        y = rng.uniform(radius + margin, image_size - radius - margin)
        if any(math.hypot(x - px, y - py) < radius + pr + margin for px, py, pr in placed):
            continue
        color = str(rng.choice(allowed_colors(shape, combos)))
        material = str(rng.choice(ATTRIBUTES["material"]))
        rotation = float(rng.uniform(0, 360))
        placed.append((x, y, radius))
        objects.append({
            "color": color, "size": size, "rotation": round(rotation, 3), "shape": shape,
            "3d_coords": [round(x / image_size * WORLD - WORLD / 2, 4),
                          round(y / image_size * WORLD - WORLD / 2, 4),
                          round(HALF_SIZE[size] * WORLD, 4)],
            "material": material,
            "pixel_coords": [int(round(x)), int(round(y)), 0.0],
        })
    if len(objects) < min_objects:
        raise ModtrainError(
            f"could not place {min_objects} objects in a {image_size}px image; use a larger --image-size"
        )
    return objects


def compute_relationships(objects: list[dict[str, Any]], eps: float = 0.05) -> dict[str, list[list[int]]]:
    """``relationships[r][i]``: objects j with (coords_j − coords_i) · direction_r > eps."""
    out: dict[str, list[list[int]]] = {}
    for relation in RELATIONS:
        direction = DIRECTIONS[relation]
        rows = []
        for i, a in enumerate(objects):
            related = []
            for j, b in enumerate(objects):
                if i == j:
                    continue
                diff = [bj - aj for aj, bj in zip(a["3d_coords"], b["3d_coords"])]
                if sum(d * k for d, k in zip(diff, direction)) > eps:
                    related.append(j)
            rows.append(related)
        out[relation] = rows
    return out


def make_scene(rng: np.random.Generator, split: str, index: int, image_size: int,
               combos: str | None = None) -> Scene:
    """A random scene with CLEVR's scene-file fields."""
    objects = sample_objects(rng, image_size, combos)
    return Scene(
        split=split, image_index=index, image_filename=image_filename(split, index),
        objects=objects, relationships=compute_relationships(objects),
        directions={k: list(v) for k, v in DIRECTIONS.items()},
    )


def _shade(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color)


def _outline(shape: str, x: float, y: float, half: float, rotation: float) -> list[tuple[float, float]] | None:
    if shape != "cube":
        return None
    angle = math.radians(rotation % 90)
    corners = []
    for k in range(4):
        a = angle + math.pi / 4 + k * math.pi / 2
        corners.append((x + half * math.sqrt(2) * math.cos(a), y + half * math.sqrt(2) * math.sin(a)))
    return corners


def _draw_object(draw: ImageDraw.ImageDraw, obj: dict[str, Any], scale: float, image_size: int,
                 fill: Any | None = None) -> None:
    """Draw one object; with ``fill`` given, draw its silhouette in that single value."""
    x, y = obj["pixel_coords"][0] * scale, obj["pixel_coords"][1] * scale
    half = HALF_SIZE[obj["size"]] * image_size * scale
    base = tuple(obj["rgb"]) if "rgb" in obj else RGB[obj["color"]]  # rgb: a recoloured view (pretraining)
    metal = obj["material"] == "metal"
    body = fill if fill is not None else (_shade(base, 0.62) if metal else base)
    shape = obj["shape"]

    def shape_at(h: float, color: Any) -> None:
        if shape == "cube":
            draw.polygon(_outline(shape, x, y, h, obj["rotation"]), fill=color)
        elif shape == "sphere":
            draw.ellipse([x - h, y - h, x + h, y + h], fill=color)
        else:  # cylinder: an upright can, 1.5 half-sizes wide, 2 tall, with elliptic ends
            w, cap = 0.75 * h, 0.3 * h
            draw.rectangle([x - w, y - h + cap, x + w, y + h - cap], fill=color)
            draw.ellipse([x - w, y + h - 2 * cap, x + w, y + h], fill=color)
            draw.ellipse([x - w, y - h, x + w, y - h + 2 * cap], fill=color)

    shape_at(half, body)
    if fill is not None:
        return
    if metal:  # brighter core and a specular highlight
        shape_at(half * 0.72, _shade(base, 1.12))
        r = half * 0.28
        hx, hy = x - half * 0.35, y - half * 0.35
        draw.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(250, 250, 250))
    if shape == "cylinder":  # the lit top face
        w, cap = 0.75 * half, 0.3 * half
        top = _shade(base, 1.35) if not metal else (235, 235, 235)
        draw.ellipse([x - w * 0.85, y - half + cap * 0.3, x + w * 0.85, y - half + cap * 1.7], fill=top)


def render_scene(objects: list[dict[str, Any]], image_size: int, supersample: int = 4) -> Image.Image:
    """The scene as an RGB image, drawn at ``supersample``× and box-filtered down (anti-aliased)."""
    big = image_size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in sorted(objects, key=lambda o: o["pixel_coords"][1]):
        _draw_object(draw, obj, supersample, image_size)
    return image.resize((image_size, image_size), Image.Resampling.BOX)


def object_id_map(objects: list[dict[str, Any]], image_size: int) -> np.ndarray:
    """(S, S) uint8 map: 0 for the floor, i + 1 where object i covers the pixel."""
    image = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(image)
    for i, obj in enumerate(objects):
        _draw_object(draw, obj, 1.0, image_size, fill=i + 1)
    return np.asarray(image, dtype=np.uint8)
