"""The two recorded worlds the replay backend serves, behind one interface.

=============  ======================================  ==========================================
world          what is recorded                        what a replayed LLM answers alone
=============  ======================================  ==========================================
``zeroeval``   the real reply text of 43 LLMs to       its own recorded reply, verbatim
               GSM8K test and 41 to MATH level 5
               (:mod:`.zeroeval`)
``llmrouter``  whether each of 9 LLMs solved each of   a reply written from that outcome in the
               2,295 GSM8K/MATH/MBPP/HumanEval/MMLU    benchmark's natural form (:mod:`.answers`):
               queries, no text (:mod:`.outcomes`)     the gold answer when it solved the query,
                                                       else an invented wrong one
=============  ======================================  ==========================================

What an LLM answers after reading other agents is the collaboration rule's (:mod:`.rules`).
Each world also splits its recorded queries of a task into train, validation and test
(:func:`world_split`), seeded and saved, so that results name the exact ids.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

from masr_graph.benchmarks.data.data_dir import PathLike, resolve_data_dir
from masr_graph.benchmarks.tasks.datasets import Example
from masr_graph.benchmarks.tasks.splits import Split, load_split, save_split, train_val_test_ids

from ..errors import ConfigError, DataError
from . import outcomes, zeroeval
from .answers import synthesize_reply

WORLDS = ("zeroeval", "llmrouter")
"""The recorded worlds, the real-reply one first."""
SPLIT_FRACTIONS = (0.4, 0.2)
"""Train and validation shares of each task's recorded queries (the rest is test)."""


@dataclass(frozen=True)
class RecordedLLMInfo:
    """What a pool member of a recorded world is: model id, prices, description."""

    name: str
    model: str
    price_in: float
    price_out: float
    description: str


class World(Protocol):
    """A recorded world (see the module docstring)."""

    name: str
    tasks: tuple[str, ...]
    max_tokens: int
    """The completion cap that replays every recorded reply whole (the recording's own)."""
    data_checksums: "dict[str, str]"

    def llms(self, task: Optional[str] = None) -> list[str]: ...

    def llm_info(self, name: str) -> RecordedLLMInfo: ...

    def queries(self) -> Sequence["RecordedItem"]: ...

    def examples(self, task: str) -> list[Example]: ...

    def own_reply(self, llm: str, item: "RecordedItem", *, sample_index: int,
                  seed: Optional[int]) -> str: ...

    def describe(self) -> str: ...


RecordedItem = Union[outcomes.RecordedQuery, zeroeval.RecordedQuestion]


class ZeroEvalWorld:
    """The ZeroEval recorded replies as a world."""

    name = "zeroeval"
    max_tokens = 4096

    def __init__(self, data_dir: Optional[PathLike] = None):
        self.table = zeroeval.load_reply_table(data_dir)
        self.tasks = tuple(zeroeval.TASK_FILES)
        self.data_checksums = dict(self.table.data_checksums)
        self.data_dir = self.table.data_dir

    def llms(self, task: Optional[str] = None) -> list[str]:
        if task is None:
            return list(self.table.models)
        return self.table.models_for(task)

    def llm_info(self, name: str) -> RecordedLLMInfo:
        model = self.table.model(name)
        basis = {"list": "list price", "hosted": "typical hosting price for open weights",
                 "uncertain": "price uncertain, priced like its family"}[model.price_basis]
        return RecordedLLMInfo(name, name, model.price_in, model.price_out,
                               f"{model.description} (${model.price_in:g} / "
                               f"${model.price_out:g} per 1M tokens in / out, {basis})")

    def queries(self) -> Sequence[zeroeval.RecordedQuestion]:
        return [q for task in self.tasks for q in self.table.questions(task)]

    def examples(self, task: str) -> list[Example]:
        return [q.example for q in self.table.questions(task)]

    def own_reply(self, llm: str, item: RecordedItem, *, sample_index: int,
                  seed: Optional[int]) -> str:
        try:
            return item.replies[llm]  # type: ignore[union-attr]
        except KeyError:
            self.table.model(llm, item.task)  # raises, naming the models recorded on the task
            raise

    def describe(self) -> str:
        return self.table.describe()


class LLMRouterWorld:
    """LLMRouter's recorded outcomes as a world."""

    name = "llmrouter"
    max_tokens = 512

    def __init__(self, data_dir: Optional[PathLike] = None):
        self.table = outcomes.load_outcome_table(data_dir)
        self.tasks = outcomes.REPLAY_TASKS
        self.data_checksums = dict(self.table.data_checksums)
        self.data_dir = self.table.data_dir

    def llms(self, task: Optional[str] = None) -> list[str]:
        return list(self.table.llm_names)

    def llm_info(self, name: str) -> RecordedLLMInfo:
        llm = self.table.llm(name)
        return RecordedLLMInfo(name, llm.model, llm.price_in, llm.price_out, llm.description)

    def queries(self) -> Sequence[outcomes.RecordedQuery]:
        return self.table.queries

    def examples(self, task: str) -> list[Example]:
        return [q.example for q in self.table.task_queries(task)]

    def own_reply(self, llm: str, item: RecordedItem, *, sample_index: int,
                  seed: Optional[int]) -> str:
        correct = outcomes.recorded_outcome(item, llm, sample_index=sample_index,  # type: ignore[arg-type]
                                            seed=seed)
        return synthesize_reply(item.example, llm, correct)

    def describe(self) -> str:
        return self.table.describe()


@functools.lru_cache(maxsize=4)
def _world(name: str, root: Path) -> World:
    return ZeroEvalWorld(root) if name == "zeroeval" else LLMRouterWorld(root)


def load_world(name: str, data_dir: Optional[PathLike] = None) -> World:
    """The recorded world ``name`` of a data directory (built once per process).

    Raises:
        ConfigError: unknown world.
        DataError: its data is missing or malformed.
    """
    if name not in WORLDS:
        raise ConfigError(f"unknown recorded world {name!r}; worlds: {list(WORLDS)}")
    return _world(name, resolve_data_dir(data_dir))


def world_split(world: World, task: str, *, seed: int = 0,
                split_file: Optional[PathLike] = None) -> Split:
    """The train / validation / test split of ``world``'s recorded queries of ``task``.

    Protocol: :data:`SPLIT_FRACTIONS` of the queries, drawn at random (scikit-learn
    ``train_test_split``, ``random_state=seed``), are train and validation, the rest test. In the
    LLMRouter world train and validation are drawn only from queries *not* scored in LLMRouter's
    ``test.json``, which all stay in test. A saved split file is loaded (and must match the seed
    and the data); otherwise the split is drawn and written there.

    Raises:
        ConfigError: an unknown task, or a split file of another seed or task.
        DataError: a split file drawn from other data.
    """
    if task not in world.tasks:
        raise ConfigError(f"the {world.name} world has no task {task!r}; its tasks: "
                          f"{list(world.tasks)}")
    benchmark = f"replay-{world.name}-{task}"
    if split_file is not None and Path(split_file).exists():
        split = load_split(split_file)
        if split.benchmark != benchmark or split.seed != seed:
            raise ConfigError(f"split file {str(split_file)!r} is the {split.benchmark!r} split "
                              f"with seed {split.seed}, not {benchmark!r} with seed {seed}")
        changed = sorted(name for name, digest in split.data_checksums.items()
                         if world.data_checksums.get(name) != digest)
        if changed:
            raise DataError(f"split file {str(split_file)!r} was drawn from other data: "
                            f"{changed} differ; use the original data or draw a new split")
        return split
    examples = world.examples(task)
    drawable = None
    if isinstance(world, LLMRouterWorld):
        drawable = {q.id for q in world.table.task_queries(task) if not q.in_test_file}
    train, validation, test, how = train_val_test_ids(
        [e.id for e in examples], SPLIT_FRACTIONS, seed, drawable=drawable)
    where = " among the queries outside LLMRouter's test.json" if drawable is not None else ""
    split = Split(
        benchmark=benchmark, seed=seed, train_ids=tuple(train), validation_ids=tuple(validation),
        test_ids=tuple(test),
        protocol=f"{world.describe()}. {task}: {how}{where}",
        data_checksums=world.data_checksums)
    if split_file is not None:
        save_split(split, split_file)
    return split


def split_examples_of(world: World, task: str, split: Split, part: str) -> list[Example]:
    """The examples of one part (``"train"``, ``"validation"``, ``"test"``) of a world split,
    in the split's order."""
    by_id = {example.id: example for example in world.examples(task)}
    return [by_id[example_id] for example_id in split.ids(part)]
