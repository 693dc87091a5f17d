"""The training job of any module, derived from the plan (docs/design.md, "Jobs").

A job trains the modules of a ``JobSpec`` on the questions their wiring can run
(``modtrain.wiring``), through the loop every job runs (``modtrain.train``). Each question runs
its wiring; the root's answer is combined with the encoder's prior as the interface says; a
surrogate reads the module's output the way each question's root would (paper §5.2). A job that
trains the prior's producer alone — the encoder, or a module that answers alone such as FiLM,
Stack-NMN or LNMN — answers from the question (and the image) without a layout, and the module
asks for anything more of its training through its training hooks (``NMNModule``).
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modtrain.cache import EdgeCache, attention_mode, open_cache
from modtrain.card import load_module, save_module
from modtrain.data import H5Rows, PreparedData, set_in_memory_bytes, shuffled_batches
from modtrain.device import FloatBatches, to_device
from modtrain.errors import ModtrainError
from modtrain.execute import Executor, Given, given_name
from modtrain.plan import Plan, make_plan
from modtrain.recipe import Recipe
from modtrain.registry import NMNModule, build_module, reads_features, run_prior, surrogate_class
from modtrain.reuse import card_note, frozen_import, import_record, restore_frozen, training_start
from modtrain.train import TrainingLoop, cards_match
from modtrain.trust import judge, trust_statistics
from modtrain.types import Attended, DataType, Features, get_interface

# the job's specification and wiring, also imported from here
from modtrain.wiring import (  # noqa: F401
    Cut,
    JobSpec,
    Wirer,
    Wiring,
    job_key,
    joint_spec,
    module_spec,
    training_questions,
)
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)


class Job(TrainingLoop):
    """A training job built from a ``JobSpec``: its data wiring, model and card."""

    def __init__(self, workdir: Workdir, recipe: Recipe, device: torch.device, spec: JobSpec,
                 data: PreparedData | None = None, sources: dict[str, Workdir] | None = None,
                 plan: Plan | None = None):
        """``sources``: where a frozen module and its virtual dataset live, if not in ``workdir``."""
        self.workdir, self.recipe, self.device, self.spec = workdir, recipe, device, spec
        self.name = spec.name
        set_in_memory_bytes(recipe.data.in_memory_bytes)
        self.data = data or PreparedData(workdir.data)
        self.plan = plan or make_plan(recipe)
        self.interface = get_interface(recipe.interface)
        self.config = recipe.train_config(spec.name)
        self.seed = recipe.seed
        self.sources = dict(sources or {})
        self.imports: dict[str, tuple] = {}  # modules imported to train here (set when they are built)
        self.key = job_key(spec, recipe, self.data, self.sources, workdir)
        self.wirer = Wirer(spec, self.plan, self.interface)
        self.prior_producer = self.plan.prior
        if self.prior_producer in spec.trainable:
            self.prior_source = "train"
        elif self.prior_producer in spec.frozen and self.interface.train_with_prior():
            self.prior_source = "cache"
        else:
            self.prior_source = None
        # a job that trains only the prior producer answers from the question alone
        self.layout_free = set(spec.trainable) == {self.prior_producer}
        self.float_batches = FloatBatches()  # the CPU's training feature batches (``_load``)

    @classmethod
    def for_module(cls, workdir: Workdir, recipe: Recipe, name: str, device: torch.device,
                   data: PreparedData | None = None) -> "Job":
        """The modular training job of one module of the recipe."""
        if name not in recipe.modules:
            raise ModtrainError(f"recipe {recipe.name} has no module {name!r}; "
                                f"its modules: {', '.join(recipe.modules)}")
        plan = make_plan(recipe)
        return cls(workdir, recipe, device, module_spec(plan, name), data, plan=plan)

    def _source(self, module: str) -> Workdir:
        return self.sources.get(module, self.workdir)

    # -- data --------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        # a module that answers alone is built first: it says what it needs of the data (its initial
        # weights stay the first draws of the training's random stream: the data setup draws none)
        self.modules = self._build_trained() if self.layout_free else {}
        # the two roles, "train" and "val", and the splits that play them
        self.splits = {"train": self.data.split(self.recipe.data.train_split),
                       "val": self.data.split(self.recipe.data.val_split)}
        wirings = [None if self.layout_free else self.wirer.wire(layout) for layout in self.data.layouts]
        self.wirings = wirings
        # each layout id's wired layout, gathered per batch in one call (a list comprehension over a
        # batch's rows was a fifth of a small module's data path)
        self.wired_layouts = np.empty(len(wirings), object)
        self.wired_layouts[:] = [w.layout if w is not None else None for w in wirings]
        self.rows: dict[str, np.ndarray] = {}
        for s, split in self.splits.items():
            keep = split.trainable(self.recipe.data.max_train_depth)
            if not self.layout_free:
                trainable = np.array([w is not None for w in wirings] + [False], bool)
                keep &= trainable[split.layout]  # layout −1 (no program) picks the trailing False
            self.rows[s] = np.flatnonzero(keep)
        self.train_rows, self.val_rows = self.rows["train"], self.rows["val"]
        # what a module that answers alone asks of the data (its question_targets and hold_out)
        self.targets: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.splits}
        self.held_out_rows, self.held_out_batches = self.train_rows[:0], None
        module = self._answering_module()
        if module is not None:  # the prior alone, from the question (and the image, for FiLM)
            self.needs_features, self.runs = reads_features(module), set()
            self.features = {s: split.features() for s, split in self.splits.items()} if self.needs_features else {}
            self.targets = {s: module.question_targets(self.data.root, split) for s, split in self.splits.items()}
            self.held_out_rows = module.hold_out(self.train_rows, self.seed)
            if len(self.held_out_rows):
                self.rows["train"] = self.train_rows = np.setdiff1d(self.train_rows, self.held_out_rows)
                # the batches of them after_step gets: a stream of their own, checkpointed
                self.held_out_batches = np.random.default_rng([self.seed, 8])
            return
        used = [wirings[i] for i in np.unique(np.concatenate([split.layout[self.rows[s]]
                                                              for s, split in self.splits.items()]))]
        self.needs_features = any(self._reads_features(w) for w in used)
        self.runs = {node.module for w in used for node in w.layout.nodes()}  # modules the wirings run
        self.features = {s: split.features() for s, split in self.splits.items()} if self.needs_features else {}
        self._setup_given(used)
        if self.spec.surrogate is not None:
            self.roots = sorted({w.root for w in (wirings[i]
                                                  for i in np.unique(self.splits["train"].layout[self.train_rows]))})
            self.root_types = sorted({w.root_reads for w in used}, key=lambda t: t.name)
            index = {r: i for i, r in enumerate(self.roots)}
            unknown = sorted({w.root for w in used} - set(self.roots))
            if unknown:  # the surrogate has no weights for them: left out of validation, and said
                known = np.array([w is not None and w.root in index for w in wirings] + [False])
                keep = known[self.splits["val"].layout[self.val_rows]]
                log.warning("%s: %d validation questions left out: their root(s) %s never occur in training",
                            self.name, int((~keep).sum()), ", ".join(unknown))
                self.rows["val"] = self.val_rows = self.val_rows[keep]
            kinds = {t: k for k, t in enumerate(self.root_types)}
            self.root_ids = np.array([index.get(w.root, -1) if w else -1 for w in wirings] + [-1])
            self.root_kind = np.array([kinds.get(w.root_reads, -1) if w else -1 for w in wirings] + [-1])
            self.root_answer_log_probs = self._root_answer_log_probs()
        if self.prior_source == "cache":
            self.priors = {s: open_cache(self._source(self.prior_producer), self.plan, self.prior_producer, split.name,
                                         split.fingerprint) for s, split in self.splits.items()}

    def _root_answer_log_probs(self) -> torch.Tensor:
        """(roots, answers): how often each answer follows each root instance in the training
        questions, backed off to the answers' overall frequencies with the weight of one question —
        the best a surrogate can do that reads nothing from the module (gradient interface)."""
        train = self.splits["train"]
        roots, answers = self.root_ids[train.layout[self.train_rows]], train.answer[self.train_rows].astype(np.int64)
        size = self.data.dims()["answers"]
        overall = (np.bincount(answers, minlength=size) + 1.0) / (len(answers) + size)
        counts = np.zeros((len(self.roots), size))
        np.add.at(counts, (roots, answers), 1.0)
        frequencies = (counts + overall) / (counts.sum(1, keepdims=True) + 1.0)
        return torch.from_numpy(np.log(frequencies)).float()

    def _reads_features(self, wiring: Wiring) -> bool:
        if wiring.root_reads is Attended:
            return True
        for node in wiring.layout.nodes():
            if node.module.startswith("given:"):
                continue
            inputs, _ = self.wirer.signature(node.module)
            if Features in inputs:
                return True
            wanted = [t for t in inputs if not t.from_dataset]
            if any(t is Attended and not child.module.startswith("given:") for child, t in zip(node.children, wanted)):
                return True
        return False

    def _setup_given(self, used: list[Wiring]) -> None:
        """Per split and given type: each row's cache edge and cache (a column of a producer's cache)
        for every slot; read batch by batch in ``_given``."""
        self.given_types: dict[str, DataType] = {}
        slots: dict[str, int] = defaultdict(int)
        sources: list[tuple[str, str]] = []  # (owner, column)
        for w in used:
            for cut in w.cuts:
                self.given_types[cut.data_type.name] = cut.data_type
                slots[cut.data_type.name] = max(slots[cut.data_type.name], cut.slot + 1)
                if (cut.owner, cut.column) not in sources:
                    sources.append((cut.owner, cut.column))
        self.given_sources = sources
        self.given_slots = dict(slots)
        owners = sorted({owner for owner, _ in sources})
        self.caches = {s: {o: EdgeCache(self._source(o), self.plan, o, split.name, split.fingerprint) for o in owners}
                       for s, split in self.splits.items()}
        self.given_edges: dict[str, dict[str, np.ndarray]] = {}
        self.given_from: dict[str, dict[str, np.ndarray]] = {}
        for s, split in self.splits.items():
            edges = {t: np.full((len(split), k), -1, np.int64) for t, k in slots.items()}
            origin = {t: np.full((len(split), k), -1, np.int16) for t, k in slots.items()}
            rows = self.rows[s]
            for layout_id in np.unique(split.layout[rows]):
                wiring = self.wirings[layout_id]
                mine = rows[split.layout[rows] == layout_id]
                for cut in wiring.cuts:
                    t = cut.data_type.name
                    edges[t][mine, cut.slot] = self.caches[s][cut.owner].lookup(mine, np.full(len(mine), cut.node))
                    origin[t][mine, cut.slot] = sources.index((cut.owner, cut.column))
            self.given_edges[s], self.given_from[s] = edges, origin
        self.given_whole = {s: self._one_source(s) for s in self.splits}

    def _one_source(self, split: str) -> dict[str, int]:
        """Per given type, the source every slot of every row the split's role uses comes from, where
        there is one (describe reading find's cache): its batches are one read, nothing masked."""
        whole = {}
        for t, origin in self.given_from[split].items():
            used = np.unique(origin[self.rows[split]])
            if len(used) == 1 and used[0] >= 0:
                whole[t] = int(used[0])
        return whole

    def _given(self, split: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        out = {}
        for t, k in self.given_slots.items():
            edges = self.given_edges[split][t][rows]
            one = self.given_whole[split].get(t)
            values = (self._read_one(split, one, edges) if one is not None
                      else self._read_masked(split, t, k, rows, edges))
            if values is not None:
                out[given_name(self.given_types[t])] = to_device(torch.from_numpy(values), self.device)
        return out

    def _read_one(self, split: str, source: int, edges: np.ndarray) -> np.ndarray:
        """Every slot of every row from ``source``: one read, its rows as they come."""
        owner, column = self.given_sources[source]
        read = self.caches[split][owner].column(column).take(edges.reshape(-1))
        return read.reshape(*edges.shape, *read.shape[1:]).astype(np.float32, copy=False)

    def _read_masked(self, split: str, t: str, k: int, rows: np.ndarray, edges: np.ndarray) -> np.ndarray | None:
        """Each slot from the source its row's layout names, zeros where a slot is unused; None
        where no row uses any."""
        origin, values = self.given_from[split][t][rows], None
        for i, (owner, column) in enumerate(self.given_sources):
            mask = origin == i
            if not mask.any():
                continue
            read = self.caches[split][owner].column(column).take(edges[mask])
            if values is None:
                values = np.zeros((len(rows), k, *read.shape[1:]), np.float32)
            values[mask] = read
        return values

    def _sources(self, split: str) -> list[tuple[H5Rows, Callable[[np.ndarray], np.ndarray]]]:
        """Every file ``_load`` reads for ``split``, with what maps question rows to its rows:
        (n, k) row indices, −1 for none."""
        s = self.splits[split]
        sources = []
        if self.needs_features:
            sources.append((self.features[split], lambda rows: s.image_index[rows][:, None]))
        if self.prior_source == "cache":
            sources.append((self.priors[split], lambda rows: np.asarray(rows)[:, None]))
        for i, (owner, column) in enumerate(getattr(self, "given_sources", [])):
            def edges(rows, i=i):
                origin, edges = self.given_from[split], self.given_edges[split]
                return np.concatenate([np.where(origin[t][rows] == i, edges[t][rows], -1) for t in self.given_slots],
                                      axis=1)
            sources.append((self.caches[split][owner].column(column), edges))
        return sources

    def _storage(self):
        sources = self._sources("train")
        if not sources:
            return None
        largest, where = max(sources, key=lambda source: source[0].nbytes)
        read = where(self.train_rows)
        first = read[np.arange(len(read)), np.argmax(read >= 0, axis=1)]  # a row's first read of it, or −1
        blocks = np.where(first >= 0, first // largest.chunk_rows, -1)
        streamed = [(source, where) for source, where in sources if source.streams()]

        def reads(rows):
            out = []
            for source, where in streamed:
                index = where(rows)
                out.append((source, index[index >= 0]))
            return out
        return blocks, reads if streamed else None

    def _load(self, split: str, rows: np.ndarray) -> dict[str, Any]:
        s = self.splits[split]
        batch: dict[str, Any] = {"answer": to_device(torch.from_numpy(s.answer[rows]).long(), self.device)}
        if self.prior_source == "train":
            batch["tokens"] = to_device(torch.from_numpy(s.tokens[rows]).long(), self.device)
            batch["lengths"] = torch.from_numpy(s.lengths[rows]).long()
        elif self.prior_source == "cache":
            batch["prior"] = to_device(torch.from_numpy(self.priors[split].take(rows)), self.device)
        for name, values in self.targets[split].items():
            batch[name] = to_device(torch.from_numpy(values[rows]), self.device)
        if self.needs_features and split == "train" and self.device.type == "cpu":
            # the training batches, on the CPU, into reused buffers: gathered and converted in one pass
            batch["features"] = self.float_batches.take(self.features[split], s.image_index[rows])
        elif self.needs_features:
            # made float on the device: on CUDA half the bytes cross, and the CPU does not convert
            batch["features"] = to_device(torch.from_numpy(self.features[split].take(s.image_index[rows])),
                                          self.device).float()
        if self.layout_free:
            return batch
        layout_ids = s.layout[rows]
        batch["layouts"] = self.wired_layouts[layout_ids].tolist()
        batch["given"] = self._given(split, rows)
        if self.spec.surrogate is not None:
            batch["root"] = to_device(torch.from_numpy(self.root_ids[layout_ids]), self.device)
            batch["part"] = to_device(torch.from_numpy(self.root_kind[layout_ids]), self.device)
        return batch

    def _batches_ended(self) -> None:
        self.float_batches.clear()

    # -- model -------------------------------------------------------------------------------
    def _build_trained(self) -> dict[str, NMNModule]:
        dims, instances = self.data.dims(), self.data.vocab["instances"]
        built = {}
        for m in self.spec.trainable:
            start = training_start(self.workdir, m) if self.spec.training == "modular" else None
            if start is None:
                built[m] = build_module(m, self.interface, dims, instances.get(m, []), **self.recipe.module_hparams(m))
                continue
            record, state, masks = start  # fine-tuned, or its new instances trained: from the import's weights
            module = build_module(m, self.interface, dims, record["instances"],
                                  **record["hyperparameters"])
            module.load_state_dict(state)
            built[m], self.imports[m] = module, start  # (record, the import's weights, its new entries)
        return built

    def _setup_model(self) -> None:
        if not self.modules:  # unless the data setup built them
            self.modules = self._build_trained()
        dims = self.data.dims()
        frozen = {}
        # only the frozen modules a wiring runs (the others come from caches); loading them must
        # not move the training's random stream
        with torch.random.fork_rng(devices=[]):
            for m in sorted(set(self.spec.frozen) & self.runs):
                frozen[m], _ = load_module(self._source(m).modules, m, self.device)
                frozen[m].requires_grad_(False)
        layout_modules = {m: module for m, module in {**frozen, **self.modules}.items() if m != self.prior_producer}
        givens = {given_name(t): Given(t) for t in getattr(self, "given_types", {}).values()}
        hparams = {m: module.hparams for m, module in layout_modules.items()}
        self.attention_mode = attention_mode(hparams)
        self.executor = Executor({**layout_modules, **givens}, self.interface, self.attention_mode)
        self.model = nn.ModuleDict(self.modules)
        self.surrogate = None
        if self.spec.surrogate is not None:
            choice = self.recipe.surrogate(self.spec.surrogate)
            if choice is None:
                raise ModtrainError(f"{self.spec.surrogate} has indirect supervision (paper §3.1): train it through "
                                    f"a surrogate, e.g. 'modtrain train {self.spec.surrogate} --surrogate factorized'")
            parts = [dims["features"] if t is Attended else dims["height"] * dims["width"] for t in self.root_types]
            self.surrogate = surrogate_class(choice[0])(self.interface, parts, dims["answers"], self.roots, **choice[1])
            self.model["surrogate"] = self.surrogate

    def _prior(self, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.prior_source == "train":
            return run_prior(self.modules[self.prior_producer], batch["tokens"], batch["lengths"],
                             batch.get("features"))
        return batch.get("prior")

    def _surrogate_inputs(self, batch: dict[str, Any]):
        output = self.executor.run(batch["layouts"], batch.get("features"), batch["given"])
        source = self.interface.attention
        values = [self.interface.convert(output, source, t, lambda: batch["features"], self.attention_mode).flatten(1)
                  for t in self.root_types]
        return values, batch["part"], batch["root"], batch.get("prior")

    # -- what a module that answers alone asks of its training (NMNModule's training hooks) ----
    def _answering_module(self) -> NMNModule | None:
        """The module a layout-free job trains (FiLM, Stack-NMN, LNMN, the encoder), which answers
        alone: the job calls its training hooks; None in any other job."""
        return self.modules.get(self.prior_producer) if self.layout_free else None

    def _setup_optimizer(self) -> None:
        module = self._answering_module()
        if module is None:
            return super()._setup_optimizer()
        self.optimizer = module.configure_optimizers(self.config.lr, self.config.weight_decay)

    def _training_settings(self) -> dict[str, float]:
        module = self._answering_module()
        return {} if module is None else module.training_settings()

    def _auxiliary_loss(self, batch: dict[str, Any]) -> torch.Tensor | float:
        module = self._answering_module()
        return 0.0 if module is None else module.auxiliary_loss(batch, self.epoch)

    def _after_step(self, epoch: int, batch: int) -> None:
        for m, (_, state, masks) in self.imports.items():
            if masks:  # only the instances the import lacked train: the rest goes back to the import's
                restore_frozen(self.modules[m], state, masks)
        module = self._answering_module()
        if module is None:
            return
        held_out = None
        if self.held_out_batches is not None:
            size = min(len(self.held_out_rows), self.config.batch_size)
            rows = np.sort(self.held_out_batches.choice(self.held_out_rows, size, replace=False))
            held_out = self._load("train", rows)  # the held-out rows are rows of the training split
        module.after_step(held_out)

    def _extra_state(self) -> dict[str, Any]:
        module = self._answering_module()
        if module is None:
            return {}
        return {"module": module.extra_state(),
                **({"held_out_batches": self.held_out_batches.bit_generator.state}
                   if self.held_out_batches is not None else {})}

    def _restore_extra_state(self, saved: dict[str, Any]) -> None:
        module = self._answering_module()
        if module is None:
            return
        module.load_extra_state(saved.get("module", {}))
        if self.held_out_batches is None:
            return
        if "held_out_batches" not in saved:  # a checkpoint of an older modtrain: the stream starts over
            log.warning("%s: the checkpoint holds no stream of held-out batches; it starts over", self.name)
            return
        self.held_out_batches.bit_generator.state = saved["held_out_batches"]

    def _forward(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.layout_free:
            return F.log_softmax(self._prior(batch), dim=-1)
        if self.surrogate is not None:
            return self.surrogate(*self._surrogate_inputs(batch))
        root = self.executor.run(batch["layouts"], batch.get("features"), batch["given"])
        return self.interface.combine(root, self._prior(batch))

    def _validate(self) -> dict[str, float]:
        if self.surrogate is None:
            return super()._validate()
        # MC-dropout validation (§5.3), as the method's reference computes it: the module in eval
        # mode, the surrogate's own dropout alone drawing the samples. Per question: the NLL of the
        # mean prediction and of the baseline, and the two uncertainty statistics.
        self.model.eval()
        nll, baseline, variance, information, correct = [], [], [], [], 0
        with torch.no_grad():
            for rows in shuffled_batches(self.val_rows, self.config.batch_size * 4, None):
                batch = self._load("val", rows)
                result = self.surrogate.mc_predict(*self._surrogate_inputs(batch))
                answer = batch["answer"]
                nll.append(-result.mean_probs.float().gather(1, answer[:, None]).squeeze(1).clamp_min(1e-12).log())
                baseline.append(-self._baseline_log_probs(batch).gather(1, answer[:, None]).squeeze(1))
                variance.append(result.variance)
                information.append(result.mutual_information)
                correct += (result.mean_probs.argmax(1) == answer).sum().item()
        stats = trust_statistics(*(torch.cat(v).cpu().numpy() for v in (nll, baseline, variance, information)),
                                 self.recipe.trust, self.seed)
        return {"val_loss": stats["nll_module"], "val_accuracy": correct / len(self.val_rows),
                **{f"val_{k}": v for k, v in stats.items() if k != "nll_module"}}

    def _baseline_log_probs(self, batch: dict[str, Any]) -> torch.Tensor:
        """What the surrogate could predict reading nothing from the module (``modtrain.trust``):
        the encoder's prior where it adds one (typed), else each root instance's answer frequencies."""
        if self.interface.train_with_prior() and batch.get("prior") is not None:
            return F.log_softmax(batch["prior"].float(), dim=-1)
        return self.root_answer_log_probs.to(batch["root"].device)[batch["root"]]

    def _baseline_name(self) -> str:
        if self.interface.train_with_prior() and self.prior_source == "cache":
            return "the prior"
        return "the answer frequencies of its roots"

    # -- cards -------------------------------------------------------------------------------
    def _surrogate_card(self, best: dict[str, float]) -> dict[str, Any]:
        hparams = self.surrogate.hparams
        stats = {k: best[f"val_{k}"] for k in ("nll_baseline", "gain", "gain_low", "gain_high", "variance",
                                               "mutual_information")}
        stats.update(nll_module=best["val_loss"], questions=best["val_questions"], baseline=self._baseline_name())
        verdict = judge(stats, self.recipe.trust, self.name, stats["baseline"])
        return {"surrogate": {
            "name": self.surrogate.name, "hyperparameters": hparams, "roots": self.roots,
            "parameters": self.surrogate.num_parameters(), "root_parameters": self._root_parameters(),
            "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"],
            "predictive_variance": best["val_variance"], "trust": stats,
            "verdict": {"criterion": verdict.criterion, "trusted": verdict.trusted, "reason": verdict.reason,
                        "settings": dataclasses.asdict(self.recipe.trust)},
            "trustworthy": verdict.trusted,
        }}

    def _root_parameters(self) -> int:
        """Parameters of the root modules the surrogate stands for, for the size comparison."""
        dims, instances = self.data.dims(), self.data.vocab["instances"]
        total = 0
        for name in sorted({root.split("[")[0] for root in self.roots}):
            if name in self.recipe.modules and instances.get(name):
                module = build_module(name, self.interface, dims, instances[name], **self.recipe.module_hparams(name))
                total += sum(p.numel() for p in module.parameters())
        return total

    def _save(self, key_hash: str, state: dict) -> dict[str, Any]:
        fields = {**self._card_fields(key_hash, state), "inputs": self.key["inputs"], "training": self.spec.training}
        if self.surrogate is not None:
            fields.update(self._surrogate_card(state["best_metrics"]))
        cards = {name: save_module(self.workdir.modules, module, {**fields, **(
                     {"imported": card_note(self.imports[name][0])} if name in self.imports else {})})
                 for name, module in self.modules.items()}
        if len(cards) == 1:
            return next(iter(cards.values()))
        return {"name": self.name, "modules": cards, "metrics": fields["metrics"], "timings": fields["timings"]}


def train_module(workdir: Workdir, recipe: Recipe, name: str, device: torch.device,
                 data: PreparedData | None = None) -> dict[str, Any]:
    """``modtrain train NAME``: train one module as its own job, as the plan says; return its card.
    A module imported frozen is never trained here: that is refused, saying how to go on."""
    record = import_record(workdir, name)
    if record is not None and record["mode"] == "frozen":
        state = "is" if frozen_import(workdir, name) else "was"
        raise ModtrainError(f"{name} {state} imported frozen from {record['from']} ({workdir.root / 'imports' / name}"
                            f".json): it is not trained here. To retrain it from the import: 'modtrain import "
                            f"{record['from']} --workdir {workdir.root} --finetune'; to train it from scratch here, "
                            f"remove {workdir.root / 'imports' / name}.json")
    return Job.for_module(workdir, recipe, name, device, data).run()


def is_up_to_date(recipe: Recipe, name: str, data: PreparedData, workdir: Workdir) -> bool:
    """Whether ``modules/NAME`` was trained with this recipe, data and producers, or imported frozen."""
    if frozen_import(workdir, name) is not None:
        return True
    spec = module_spec(make_plan(recipe), name)
    return cards_match(workdir.modules, [name], job_key(spec, recipe, data, {}, workdir))
