"""Question families for the procedural dataset: CLEVR programs with template text.

Each family samples a program for a scene (choosing referring expressions that make every
``unique`` valid), and renders its text from one of a few phrasings. Answers always come
from the executor, never from the family. Together the families use every CLEVR v1.0
function; ``relate_query`` chains up to three relate hops, which reaches depth ≥ 12.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from modtrain.datasets.clevr import ATTRIBUTES, RELATIONS, ProgramNode, Scene

from modtrain.errors import ModtrainError

ORDER = ("size", "color", "material", "shape")  # CLEVR's filter order: <Z> <C> <M> <S>
MATERIAL_WORDS = {"rubber": ("rubber", "matte"), "metal": ("metal", "metallic", "shiny")}
SHAPE_WORDS = {"cube": ("cube", "block"), "sphere": ("sphere", "ball"), "cylinder": ("cylinder",)}
RELATION_WORDS = {"left": "left of", "right": "right of", "front": "in front of", "behind": "behind"}
SAME_WORDS = {"color": "the same color as", "shape": "the same shape as",
              "size": "the same size as", "material": "the same material as"}

Description = dict[str, str]


def value_words() -> dict[str, str]:
    """Every word the questions name an attribute value with (its synonyms and plural too: ``balls``
    names a sphere) → the attribute."""
    synonyms = {"shape": SHAPE_WORDS, "material": MATERIAL_WORDS}
    words = {}
    for attribute, values in ATTRIBUTES.items():
        for value in values:
            for word in synonyms.get(attribute, {}).get(value, (value,)):
                words[word] = words[word + "s"] = attribute
    return words


class _Program:
    def __init__(self) -> None:
        self.nodes: list[ProgramNode] = []

    def add(self, function: str, inputs: tuple[int, ...] = (), values: tuple[str, ...] = ()) -> int:
        self.nodes.append(ProgramNode(function, list(inputs), list(values)))
        return len(self.nodes) - 1

    def filters(self, start: int, desc: Description) -> int:
        node = start
        for attr in ORDER:
            if attr in desc:
                node = self.add(f"filter_{attr}", (node,), (desc[attr],))
        return node

    def unique(self, start: int, desc: Description) -> int:
        return self.add("unique", (self.filters(start, desc),))

    def scene(self) -> int:
        return self.add("scene")


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def noun_phrase(rng: np.random.Generator, desc: Description, plural: bool = False) -> str:
    """``large red metal cube``, ``small things``, ``shiny balls``."""
    words = []
    for attr in ("size", "color"):
        if attr in desc:
            words.append(desc[attr])
    if "material" in desc:
        words.append(_pick(rng, MATERIAL_WORDS[desc["material"]]))
    if "shape" in desc:
        noun = _pick(rng, SHAPE_WORDS[desc["shape"]])
    else:
        noun = _pick(rng, ("thing", "object"))
    words.append(noun + ("s" if plural else ""))
    return " ".join(words)


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def unique_description(rng: np.random.Generator, scene: Scene, target: int, candidates,
                       exclude: tuple[str, ...] = ()) -> Description | None:
    """Attributes of ``target`` that single it out among ``candidates`` (None if none do)."""
    obj = scene.objects[target]
    attrs = [a for a in ORDER if a not in exclude]
    rng.shuffle(attrs)
    remaining = set(candidates)
    desc: Description = {}
    for attr in attrs:
        if remaining == {target}:
            break
        desc[attr] = obj[attr]
        remaining = {c for c in remaining if scene.objects[c][attr] == obj[attr]}
    if remaining != {target}:
        return None
    spare = [a for a in attrs if a not in desc]
    if spare and rng.random() < 0.3:  # a redundant attribute now and then, as people say them
        desc[spare[0]] = obj[spare[0]]
    return desc


def set_description(rng: np.random.Generator, scene: Scene, allow_empty: bool = False) -> Description:
    """A random filter set: half the time a subset of a real object's attributes."""
    n_min = 0 if allow_empty else 1
    n = int(rng.integers(n_min, 4))
    attrs = list(ORDER)
    rng.shuffle(attrs)
    chosen = attrs[:n]
    if rng.random() < 0.5:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        return {a: obj[a] for a in chosen}
    return {a: _pick(rng, ATTRIBUTES[a]) for a in chosen}


def _referent(rng, scene, exclude=()) -> tuple[int, Description] | None:
    target = int(rng.integers(len(scene.objects)))
    desc = unique_description(rng, scene, target, range(len(scene.objects)), exclude)
    return None if desc is None else (target, desc)


def _relate_chain(rng, scene, program: _Program, hops: int, final_exclude=()):
    """``the X [that is] left of the Y …``: program node of the final unique object and its text."""
    found = _referent(rng, scene, () if hops else final_exclude)
    if found is None:
        return None
    current, desc = found
    node = program.unique(program.scene(), desc)
    text = "the " + noun_phrase(rng, desc)
    for hop in range(hops):
        relation = _pick(rng, RELATIONS)
        related = scene.relationships[relation][current]
        if not related:
            return None
        nxt = int(related[int(rng.integers(len(related)))])
        desc = unique_description(rng, scene, nxt, related, final_exclude if hop == hops - 1 else ())
        if desc is None:
            return None
        node = program.unique(program.add("relate", (node,), (relation,)), desc)
        link = _pick(rng, ("that is ", "", "which is "))
        text = f"the {noun_phrase(rng, desc)} {link}{RELATION_WORDS[relation]} {text}"
        current = nxt
    return node, text


Sampler = Callable[[np.random.Generator, Scene], "tuple[list[ProgramNode], str] | None"]


@dataclass(frozen=True)
class Family:
    """A question family: its index in the CLEVR ``question_family_index`` sense."""

    index: int
    name: str
    functions: frozenset[str]  # CLEVR functions this family may use beyond scene/filter/unique
    sample: Sampler


def _exist(rng, scene):
    p = _Program()
    desc = set_description(rng, scene)
    p.add("exist", (p.filters(p.scene(), desc),))
    np_ = noun_phrase(rng, desc, plural=True)
    text = _pick(rng, (f"Are there any {np_}?", f"Is there {_a(noun_phrase(rng, desc))}?",
                       f"Are any {np_} visible?"))
    return p.nodes, text


def _count(rng, scene):
    p = _Program()
    desc = set_description(rng, scene, allow_empty=True)
    p.add("count", (p.filters(p.scene(), desc),))
    np_ = noun_phrase(rng, desc, plural=True)
    text = _pick(rng, (f"How many {np_} are there?", f"What number of {np_} are there?",
                       f"How many {np_} are in the picture?"))
    return p.nodes, text


def _query(attr: str) -> Sampler:
    phrasings = {
        "color": ("What color is {x}?", "What is the color of {x}?", "The {n} is what color?"),
        "shape": ("What shape is {x}?", "What is the shape of {x}?", "The {n} has what shape?"),
        "size": ("What size is {x}?", "How big is {x}?", "The {n} is what size?"),
        "material": ("What material is {x}?", "What is {x} made of?", "The {n} is made of what material?"),
    }[attr]

    def sample(rng, scene):
        found = _referent(rng, scene, exclude=(attr,))
        if found is None:
            return None
        _, desc = found
        p = _Program()
        p.add(f"query_{attr}", (p.unique(p.scene(), desc),))
        n = noun_phrase(rng, desc)
        return p.nodes, _pick(rng, phrasings).format(x="the " + n, n=n)

    return sample


def _two_sets(rng, scene, combine: str, root: str):
    p = _Program()
    a, b = set_description(rng, scene), set_description(rng, scene)
    if a == b:
        return None
    s = p.scene()
    fa, fb = p.filters(s, a), p.filters(s, b)
    p.add(root, (p.add(combine, (fa, fb)),))
    return p.nodes, a, b


def _union(root: str) -> Sampler:
    def sample(rng, scene):
        built = _two_sets(rng, scene, "union", root)
        if built is None:
            return None
        nodes, a, b = built
        na, nb = noun_phrase(rng, a, True), noun_phrase(rng, b, True)
        if root == "count":
            text = _pick(rng, (f"How many things are {na} or {nb}?",
                               f"What number of objects are either {na} or {nb}?"))
        else:
            text = _pick(rng, (f"Are there any {na} or {nb}?",
                               f"Is there anything that is either {_a(noun_phrase(rng, a))} "
                               f"or {_a(noun_phrase(rng, b))}?"))
        return nodes, text
    return sample


def _intersect(root: str) -> Sampler:
    def sample(rng, scene):
        built = _two_sets(rng, scene, "intersect", root)
        if built is None:
            return None
        nodes, a, b = built
        sa, sb = noun_phrase(rng, a), noun_phrase(rng, b)
        if root == "count":
            text = _pick(rng, (f"How many things are both {_a(sa)} and {_a(sb)}?",
                               f"What number of objects are {_a(sa)} and also {_a(sb)}?"))
        else:
            text = _pick(rng, (f"Is there anything that is both {_a(sa)} and {_a(sb)}?",
                               f"Are there any objects that are {_a(sa)} and also {_a(sb)}?"))
        return nodes, text
    return sample


def _compare_integer(root: str) -> Sampler:
    def sample(rng, scene):
        p = _Program()
        a, b = set_description(rng, scene), set_description(rng, scene)
        if a == b:
            return None
        s = p.scene()
        ca = p.add("count", (p.filters(s, a),))
        cb = p.add("count", (p.filters(s, b),))
        p.add(root, (ca, cb))
        na, nb = noun_phrase(rng, a, True), noun_phrase(rng, b, True)
        text = _pick(rng, {
            "equal_integer": (f"Are there the same number of {na} and {nb}?",
                              f"Is the number of {na} the same as the number of {nb}?"),
            "less_than": (f"Are there fewer {na} than {nb}?",
                          f"Is the number of {na} less than the number of {nb}?"),
            "greater_than": (f"Are there more {na} than {nb}?",
                             f"Is the number of {na} greater than the number of {nb}?"),
        }[root])
        return p.nodes, text
    return sample


def _compare_attribute(rng, scene):
    attr = _pick(rng, ORDER)
    first = _referent(rng, scene, exclude=(attr,))
    second = _referent(rng, scene, exclude=(attr,))
    if first is None or second is None or first[0] == second[0]:
        return None
    p = _Program()
    s = p.scene()
    qa = p.add(f"query_{attr}", (p.unique(s, first[1]),))
    qb = p.add(f"query_{attr}", (p.unique(s, second[1]),))
    p.add(f"equal_{attr}", (qa, qb))
    x, y = "the " + noun_phrase(rng, first[1]), "the " + noun_phrase(rng, second[1])
    text = _pick(rng, (f"Is {x} {SAME_WORDS[attr]} {y}?", f"Does {x} have the same {attr} as {y}?",
                       f"Do {x} and {y} have the same {attr}?"))
    return p.nodes, text


def _relate_query(rng, scene):
    attr = _pick(rng, ORDER)
    p = _Program()
    built = _relate_chain(rng, scene, p, hops=int(rng.integers(1, 4)), final_exclude=(attr,))
    if built is None:
        return None
    node, x = built
    p.add(f"query_{attr}", (node,))
    text = _pick(rng, {
        "color": (f"What color is {x}?", f"What is the color of {x}?"),
        "shape": (f"What shape is {x}?", f"What is the shape of {x}?"),
        "size": (f"What size is {x}?", f"How big is {x}?"),
        "material": (f"What material is {x}?", f"What is {x} made of?"),
    }[attr])
    return p.nodes, text


def _set_question(rng, root: str, desc: Description, tail: str, other: bool = False) -> str:
    """``How many [other] cubes are <tail>?`` or ``Is there a[nother] cube <tail>?``."""
    many, one = noun_phrase(rng, desc, True), noun_phrase(rng, desc)
    if root == "count":
        lead = "other " if other else ""
        return _pick(rng, (f"How many {lead}{many} are {tail}?", f"What number of {lead}{many} are {tail}?"))
    return _pick(rng, (f"Is there {'another ' + one if other else _a(one)} {tail}?",
                       f"Are there any {'other ' if other else ''}{many} {tail}?"))


def _relate_set(root: str) -> Sampler:
    def sample(rng, scene):
        p = _Program()
        built = _relate_chain(rng, scene, p, hops=int(rng.integers(0, 2)))
        if built is None:
            return None
        node, x = built
        relation = _pick(rng, RELATIONS)
        desc = set_description(rng, scene, allow_empty=True)
        p.add(root, (p.filters(p.add("relate", (node,), (relation,)), desc),))
        return p.nodes, _set_question(rng, root, desc, f"{RELATION_WORDS[relation]} {x}")
    return sample


def _relate_intersect(rng, scene):
    p = _Program()
    first, second = _referent(rng, scene), _referent(rng, scene)
    if first is None or second is None or first[0] == second[0]:
        return None
    r1, r2 = _pick(rng, RELATIONS), _pick(rng, RELATIONS)
    s = p.scene()
    ra = p.add("relate", (p.unique(s, first[1]),), (r1,))
    rb = p.add("relate", (p.unique(s, second[1]),), (r2,))
    desc = set_description(rng, scene, allow_empty=True)
    p.add("count", (p.filters(p.add("intersect", (ra, rb)), desc),))
    n = noun_phrase(rng, desc, True)
    x, y = "the " + noun_phrase(rng, first[1]), "the " + noun_phrase(rng, second[1])
    text = _pick(rng, (f"How many {n} are {RELATION_WORDS[r1]} {x} and {RELATION_WORDS[r2]} {y}?",
                       f"What number of {n} are both {RELATION_WORDS[r1]} {x} and {RELATION_WORDS[r2]} {y}?"))
    return p.nodes, text


def _same(root: str) -> Sampler:
    def sample(rng, scene):
        attr = _pick(rng, ORDER)
        found = _referent(rng, scene, exclude=(attr,))
        if found is None:
            return None
        p = _Program()
        same = p.add(f"same_{attr}", (p.unique(p.scene(), found[1]),))
        x = "the " + noun_phrase(rng, found[1])
        if root == "query":
            others = [o for o in range(len(scene.objects)) if o != found[0]
                      and scene.objects[o][attr] == scene.objects[found[0]][attr]]
            if not others:
                return None
            target = int(others[int(rng.integers(len(others)))])
            query = _pick(rng, [a for a in ORDER if a != attr])
            desc = unique_description(rng, scene, target, others, exclude=(query,))
            if desc is None:
                return None
            p.add(f"query_{query}", (p.unique(same, desc),))
            text = f"What {query} is the other {noun_phrase(rng, desc)} that is {SAME_WORDS[attr]} {x}?"
            return p.nodes, text
        desc = set_description(rng, scene, allow_empty=True)
        p.add(root, (p.filters(same, desc),))
        tail = _pick(rng, (f"{SAME_WORDS[attr]} {x}", f"with the same {attr} as {x}"))
        return p.nodes, _set_question(rng, root, desc, tail, other=True)
    return sample


def _fam(index, name, functions, sample) -> Family:
    return Family(index, name, frozenset(functions), sample)


FAMILIES: tuple[Family, ...] = (
    _fam(0, "exist", {"exist"}, _exist),
    _fam(1, "count", {"count"}, _count),
    _fam(2, "query_color", {"query_color"}, _query("color")),
    _fam(3, "query_shape", {"query_shape"}, _query("shape")),
    _fam(4, "query_size", {"query_size"}, _query("size")),
    _fam(5, "query_material", {"query_material"}, _query("material")),
    _fam(6, "exist_union", {"exist", "union"}, _union("exist")),
    _fam(7, "count_union", {"count", "union"}, _union("count")),
    _fam(8, "exist_intersect", {"exist", "intersect"}, _intersect("exist")),
    _fam(9, "count_intersect", {"count", "intersect"}, _intersect("count")),
    _fam(10, "compare_integer_equal", {"count", "equal_integer"}, _compare_integer("equal_integer")),
    _fam(11, "compare_integer_less", {"count", "less_than"}, _compare_integer("less_than")),
    _fam(12, "compare_integer_greater", {"count", "greater_than"}, _compare_integer("greater_than")),
    _fam(13, "compare_attribute", {f"query_{a}" for a in ORDER} | {f"equal_{a}" for a in ORDER},
         _compare_attribute),
    _fam(14, "relate_query", {"relate"} | {f"query_{a}" for a in ORDER}, _relate_query),
    _fam(15, "relate_exist", {"relate", "exist"}, _relate_set("exist")),
    _fam(16, "relate_count", {"relate", "count"}, _relate_set("count")),
    _fam(17, "relate_intersect", {"relate", "intersect", "count"}, _relate_intersect),
    _fam(18, "same_count", {"count"} | {f"same_{a}" for a in ORDER}, _same("count")),
    _fam(19, "same_exist", {"exist"} | {f"same_{a}" for a in ORDER}, _same("exist")),
    _fam(20, "same_query", {f"same_{a}" for a in ORDER} | {f"query_{a}" for a in ORDER}, _same("query")),
)

_ADVANCED = ("relate", "same_", "equal_", "less_than", "greater_than")


def _is_basic(family: Family) -> bool:
    return not any(f.startswith(p) for f in family.functions for p in _ADVANCED)


GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(f.name for f in FAMILIES),
    # without relate/same/compare: the modules of the NMN (find, and/or, describe, measure)
    "no-relate": tuple(f.name for f in FAMILIES if _is_basic(f)),
    "compare": tuple(f.name for f in FAMILIES if f.name.startswith("compare")),
    "relate": tuple(f.name for f in FAMILIES if f.name.startswith("relate")),
    "same": tuple(f.name for f in FAMILIES if f.name.startswith("same")),
}


def select_families(spec: str) -> list[Family]:
    """Families named by a comma-separated list of family and group names."""
    by_name = {f.name: f for f in FAMILIES}
    names: list[str] = []
    for part in (s.strip() for s in spec.split(",")):
        if part in GROUPS:
            names.extend(GROUPS[part])
        elif part in by_name:
            names.append(part)
        else:
            raise ModtrainError(
                f"unknown question family {part!r}; valid groups: {', '.join(GROUPS)}; "
                f"families: {', '.join(by_name)}"
            )
    if not names:
        raise ModtrainError("no question family selected")
    return [by_name[n] for n in dict.fromkeys(names)]
