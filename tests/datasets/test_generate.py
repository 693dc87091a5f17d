import hashlib
import math
from collections import Counter, defaultdict

import numpy as np
import pytest
from modtrain.datasets.clevr import ATTRIBUTES, FUNCTIONS, ClevrFolder
from modtrain.datasets.executor import execute, program_depth
from modtrain.datasets.families import FAMILIES, GROUPS, select_families
from modtrain.datasets.generate import (
    AnswerBalancer,
    DepthBalancer,
    generate,
    parse_depth_range,
    sample_questions,
    split_rng,
)
from modtrain.datasets.scenes import BOUND, COGENT, HALF_SIZE, make_scene, render_scene

from modtrain.errors import ModtrainError


@pytest.fixture(scope="module")
def sampled():
    """~4000 questions on 400 in-memory scenes, every family, one balancer (as a split)."""
    rng = np.random.default_rng(11)
    balancer = AnswerBalancer()
    out = []
    for i in range(400):
        scene = make_scene(rng, "train", i, 64)
        for family, program, text, answer in sample_questions(rng, scene, list(FAMILIES), 10, balancer):
            out.append((family, program, text, answer, scene))
    return out


def test_answers_are_balanced_within_each_family(sampled):
    counts = defaultdict(Counter)
    for family, _, _, answer, _ in sampled:
        counts[family.name][answer] += 1
    assert set(counts) == {f.name for f in FAMILIES}
    for name, c in counts.items():
        (top, n_top), (_, n_second) = c.most_common(2)
        assert n_top <= 1.1 * n_second + 2, (name, c.most_common(3))


def test_families_use_every_clevr_function(sampled):
    used = {node.function for _, program, _, _, _ in sampled for node in program}
    assert used == set(FUNCTIONS)


def test_answers_come_from_the_executor_and_depths_reach_12(sampled):
    for _, program, _, answer, scene in sampled[:500]:
        assert execute(program, scene) == answer
    depths = Counter(program_depth(p) for _, p, _, _, _ in sampled)
    assert sum(n for d, n in depths.items() if d >= 12) >= 20


def test_no_relate_group_leaves_out_relate_same_and_compare(sampled):
    basic = set(GROUPS["no-relate"])
    assert {"exist", "count", "query_color", "count_union", "exist_intersect"} <= basic
    for family, program, _, _, _ in sampled:
        if family.name in basic:
            for node in program:
                assert not node.function.startswith(("relate", "same_", "equal_", "less", "greater")), family.name


def test_select_families_rejects_unknown_names():
    assert [f.name for f in select_families("exist,count")] == ["exist", "count"]
    with pytest.raises(ModtrainError, match="unknown question family 'bogus'; valid groups: all, no-relate"):
        select_families("exist,bogus")


def test_balancer_rule():
    b = AnswerBalancer(ratio=1.1, slack=2)
    for _ in range(20):
        b.add(0, "yes")
    for _ in range(10):
        b.add(0, "no")
    assert not b.accepts(0, "yes")
    assert b.accepts(0, "no")
    assert b.accepts(1, "anything")  # families are balanced separately


def test_depth_balancer_rule():
    b = DepthBalancer(3, 5, ratio=1.2, slack=3)
    assert b.accepts(4)  # nothing seen: the slack lets the first few through
    for depth, n in ((3, 10), (4, 13), (5, 14)):
        for _ in range(n):
            b.add(depth)
    assert not b.accepts(4) and not b.accepts(5)  # 14 > max(1.2 × 10, 10 + 3)
    assert b.accepts(3) and b.accepts(2) and b.accepts(9)  # the rarest, and depths outside the range
    b.add(9)
    assert 9 not in b.counts  # outside the range: not counted, never the floor


@pytest.mark.slow  # seconds each: the fast loop stays under 30 s on a slower CPU
def test_depth_balanced_split_has_every_depth_about_equally(tmp_path):
    """The nmn-clevr data settings (300 val images, 3-12): ≥ 200 questions at every depth 3..12 of
    val, the depth experiment's evaluation set; unbalanced, depths 11 and 12 have a fraction of that."""
    counts = {}
    for balance in ("3-12", None):
        rng, balancer = split_rng(0, "val"), AnswerBalancer()
        depths = DepthBalancer(*parse_depth_range(balance)) if balance else None
        found = Counter()
        for i in range(300):
            scene = make_scene(rng, "val", i, 64)
            for _, program, _, _ in sample_questions(rng, scene, list(FAMILIES), 10, balancer, depths=depths):
                found[program_depth(program)] += 1
        counts[balance] = found
    assert sum(counts["3-12"].values()) >= 2900  # still about 10 questions per image
    assert min(counts["3-12"][d] for d in range(3, 13)) >= 200, counts["3-12"]
    assert max(counts["3-12"][d] for d in range(3, 13)) <= 1.2 * min(counts["3-12"][d] for d in range(3, 13)) + 3
    assert counts[None][12] < 100 and counts[None][6] > 4 * counts[None][12]


def test_depth_range_is_checked():
    assert parse_depth_range("3-12") == (3, 12) and parse_depth_range("none") is None
    for bad in ("12-3", "3", "a-b", "0-4"):
        with pytest.raises(ModtrainError, match="must be LOW-HIGH with 1 ≤ LOW ≤ HIGH"):
            parse_depth_range(bad)


def test_scenes_have_no_overlaps_and_relations_follow_positions():
    rng = split_rng(5, "train")
    for i in range(50):
        scene = make_scene(rng, "train", i, 64)
        objs = scene.objects
        assert 3 <= len(objs) <= 10
        for a in range(len(objs)):
            for b in range(a + 1, len(objs)):
                (xa, ya, _), (xb, yb, _) = objs[a]["pixel_coords"], objs[b]["pixel_coords"]
                ra = HALF_SIZE[objs[a]["size"]] * 64 * BOUND[objs[a]["shape"]]
                rb = HALF_SIZE[objs[b]["size"]] * 64 * BOUND[objs[b]["shape"]]
                assert math.hypot(xa - xb, ya - yb) >= ra + rb  # pixel rounding eats at most the margin
        for i_obj, row in enumerate(scene.relationships["left"]):
            for j in row:
                assert objs[j]["3d_coords"][0] < objs[i_obj]["3d_coords"][0]
                assert i_obj in scene.relationships["right"][j]
        for i_obj, row in enumerate(scene.relationships["front"]):
            for j in row:
                assert objs[j]["3d_coords"][1] > objs[i_obj]["3d_coords"][1]


def test_rendering_shows_each_object_in_its_color():
    scene = make_scene(np.random.default_rng(2), "train", 0, 64)
    image = np.asarray(render_scene(scene.objects, 64)).astype(int)
    from modtrain.datasets.scenes import RGB
    for obj in scene.objects:
        if obj["material"] == "rubber" and obj["shape"] != "cylinder":
            x, y = obj["pixel_coords"][:2]
            assert np.abs(image[y, x] - np.array(RGB[obj["color"]])).max() <= 2


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "generate.json"):
        data = path.read_bytes()
        if path.suffix == ".json":  # the info block carries today's date
            import json
            obj = json.loads(data)
            obj.pop("info")
            data = json.dumps(obj, sort_keys=True).encode()
        h.update(path.relative_to(root).as_posix().encode() + data)
    return h.hexdigest()


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    counts = {"train": 6, "val": 2}
    generate(tmp_path / "a", counts, 4, seed=1)
    generate(tmp_path / "b", counts, 4, seed=1)
    generate(tmp_path / "c", counts, 4, seed=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_val_does_not_depend_on_train_size(tmp_path):
    generate(tmp_path / "a", {"train": 3, "val": 2}, 3, seed=1)
    generate(tmp_path / "b", {"train": 7, "val": 2}, 3, seed=1)
    qa = ClevrFolder(tmp_path / "a").load_questions("val")
    qb = ClevrFolder(tmp_path / "b").load_questions("val")
    assert [q.question for q in qa] == [q.question for q in qb]


def test_cogent_condition_restricts_cube_and_cylinder_colors(tmp_path):
    generate(tmp_path, {"train": 25}, 2, families="exist", seed=0, combos="A")
    folder = ClevrFolder(tmp_path)
    assert folder.splits() == ["trainA"]
    seen = defaultdict(set)
    for scene in folder.load_scenes("trainA"):
        for obj in scene.objects:
            seen[obj["shape"]].add(obj["color"])
    assert seen["cube"] <= set(COGENT["A"]["cube"])
    assert seen["cylinder"] <= set(COGENT["A"]["cylinder"])
    assert len(seen["sphere"]) > 4
    assert (tmp_path / "images" / "trainA" / "CLEVR_trainA_000000.png").is_file()


def test_existing_split_needs_force_and_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    generate(tmp_path, {"train": 2}, 2, seed=0)
    before = (tmp_path / "questions" / "CLEVR_train_questions.json").read_bytes()
    with pytest.raises(ModtrainError, match="already holds split\\(s\\) train; pass --fresh"):
        generate(tmp_path, {"train": 2}, 2, seed=1)
    import modtrain.datasets.generate as gen

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(gen, "write_questions", crash)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, {"train": 2}, 2, seed=1, force=True)
    # the old split is untouched: the staging folder never moved into place
    assert (tmp_path / "questions" / "CLEVR_train_questions.json").read_bytes() == before
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == 2


def test_attribute_vocabulary_is_clevrs():
    assert len(ATTRIBUTES["color"]) == 8 and len(ATTRIBUTES["shape"]) == 3
    assert len(ATTRIBUTES["size"]) == 2 and len(ATTRIBUTES["material"]) == 2
