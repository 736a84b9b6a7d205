"""Seeded, saved train/test splits that follow the MasRouter protocol where the data allows.

==========  ===========================================================  =========================
benchmark   protocol                                                     sizes (train / test)
==========  ===========================================================  =========================
gsm8k       seeded random 20 % / 80 % of the GSM8K test set              263 / 1,056
humaneval   seeded random 20 % / 80 % of the 164 problems                32 / 132
mbpp        the standard MBPP split by task id: train 601-974,           374 / 500
            test 11-510 (seed unused)
math        MATH-500 (a representative subset of the 5,000 MATH test     100 / 400
            problems), split 20 % / 80 % stratified by subject x level
mmlu        train: all of dev + val (every subject); test: a seeded      1,816 / 1,000
            sample of the test set stratified by subject (proportional)
==========  ===========================================================  =========================

Random draws use scikit-learn's ``train_test_split`` with ``random_state=seed``; within each part
ids keep dataset order. A :class:`Split` records the benchmark, seed, protocol text, both id
lists and the sha256 of every data file it was drawn from; :func:`save_split` writes it as JSON so
results can carry the exact ids next to them, and :func:`split_examples` refuses to rebuild a split
from data whose checksums differ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from masr_graph.errors import ConfigError, DataError

from ..data.data_dir import PathLike, data_file, files_sha256, resolve_data_dir
from .datasets import Example
from .registry import load_benchmark

SPLIT_FORMAT_VERSION = 2
"""Version 2 added ``validation_ids``; version-1 files (train and test only) are still read."""
TRAIN_FRACTION = 0.2
"""Share of the pool used for training where the protocol draws at random (GSM8K, HumanEval,
MATH)."""
MMLU_TEST_SIZE = 1000
"""Test questions drawn from MMLU's 14,042, stratified by subject."""
PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class Split:
    """A train / (validation) / test partition of one benchmark's examples, by id.

    Args:
        benchmark: task name.
        seed: seed of the random draw (recorded even where the protocol is fixed).
        train_ids: ids of the training examples, in dataset order.
        test_ids: ids of the test examples, in dataset order.
        validation_ids: ids of the validation examples (model selection), in dataset order;
            empty for protocols without one.
        protocol: human-readable description of how the ids were chosen.
        data_checksums: sha256 of each data file (MMLU: of each folder's files concatenated in
            name order) keyed by its path relative to the data directory.
    """

    benchmark: str
    seed: int
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    protocol: str
    data_checksums: Mapping[str, str] = field(default_factory=dict)
    validation_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for part in PARTS:
            object.__setattr__(self, f"{part}_ids", tuple(getattr(self, f"{part}_ids")))
        object.__setattr__(self, "data_checksums", dict(self.data_checksums))
        for first, second in (("train", "test"), ("train", "validation"), ("validation", "test")):
            overlap = set(self.ids(first)) & set(self.ids(second))
            if overlap:
                raise ConfigError(
                    f"split of {self.benchmark!r} has {len(overlap)} id(s) in both {first} and "
                    f"{second}, e.g. {sorted(overlap)[:3]}"
                )

    def ids(self, part: str) -> tuple[str, ...]:
        """``train_ids``, ``validation_ids`` or ``test_ids``.

        Raises:
            ConfigError: ``part`` is not one of :data:`PARTS`.
        """
        if part not in PARTS:
            raise ConfigError(f"unknown split part {part!r}; choose one of {list(PARTS)}")
        return getattr(self, f"{part}_ids")


@dataclass(frozen=True)
class _Protocol:
    sources: tuple[str, ...]  # loader splits the ids are drawn from
    data_files: tuple[str, ...]  # relative paths or globs, fingerprinted in the split
    choose: Callable[[list[Example], int], tuple[list[str], list[str], str]]


def _train_test_split(*arrays: Any, **options: Any) -> list[Any]:
    # Imported on first use: scikit-learn takes about 1.5 s to import, which every
    # `import masr_graph.benchmarks` (CLI start-up included) would otherwise pay.
    from sklearn.model_selection import train_test_split

    return train_test_split(*arrays, **options)


def train_val_test_ids(
    ids: list[str], fractions: tuple[float, float], seed: int, *,
    drawable: Optional[set[str]] = None,
) -> tuple[list[str], list[str], list[str], str]:
    """Draw ``fractions = (train, validation)`` shares of ``ids`` at random (the rest is test),
    each part in the order of ``ids``; only ids in ``drawable`` (default: all) may go to train
    or validation. Returns the three id lists and a protocol sentence.

    Raises:
        ConfigError: the fractions are not positive with a sum below 1, or ``drawable`` holds
            too few ids for them.
    """
    train_share, validation_share = fractions
    if not (train_share > 0 and validation_share > 0 and train_share + validation_share < 1):
        raise ConfigError(f"train and validation fractions must be > 0 with a sum < 1 "
                          f"(got {fractions})")
    pool = [i for i in ids if drawable is None or i in drawable]
    wanted_train = round(train_share * len(ids))
    wanted_validation = round(validation_share * len(ids))
    if wanted_train + wanted_validation > len(pool):
        raise ConfigError(f"{wanted_train} train and {wanted_validation} validation ids are "
                          f"needed but only {len(pool)} may be drawn; lower the fractions")
    chosen, _ = (_train_test_split(pool, train_size=wanted_train + wanted_validation,
                                   random_state=seed, shuffle=True)
                 if wanted_train + wanted_validation < len(pool) else (list(pool), []))
    train, validation = _train_test_split(chosen, train_size=wanted_train, random_state=seed,
                                          shuffle=True)
    train_set, validation_set = set(train), set(validation)
    return (
        [i for i in ids if i in train_set],
        [i for i in ids if i in validation_set],
        [i for i in ids if i not in train_set and i not in validation_set],
        (f"seeded random {train_share:.0%} train / {validation_share:.0%} validation / "
         f"{1 - train_share - validation_share:.0%} test of the {len(ids)} queries "
         f"(scikit-learn train_test_split, random_state={seed})"),
    )


def _random_fraction(examples: list[Example], seed: int) -> tuple[list[str], list[str], str]:
    ids = [example.id for example in examples]
    train, test = _train_test_split(ids, train_size=TRAIN_FRACTION, random_state=seed, shuffle=True)
    return (
        train,
        test,
        (
            f"seeded random {TRAIN_FRACTION:.0%} / {1 - TRAIN_FRACTION:.0%} split of the "
            f"{len(ids)} problems (scikit-learn train_test_split, random_state={seed})"
        ),
    )


def _mbpp_standard(examples: list[Example], seed: int) -> tuple[list[str], list[str], str]:
    task_ids = {example.id: int(example.id.rpartition("/")[2]) for example in examples}
    train = [example_id for example_id, number in task_ids.items() if 601 <= number <= 974]
    test = [example_id for example_id, number in task_ids.items() if 11 <= number <= 510]
    return train, test, "standard MBPP split by task id: train 601-974, test 11-510 (seed unused)"


def _math_stratified(examples: list[Example], seed: int) -> tuple[list[str], list[str], str]:
    ids = [example.id for example in examples]
    strata = [f"{example.meta['type']}|{example.meta['level']}" for example in examples]
    train, test = _train_test_split(
        ids, train_size=TRAIN_FRACTION, random_state=seed, shuffle=True, stratify=strata
    )
    return (
        train,
        test,
        (
            f"MATH-500 (OpenAI's representative 500-problem subset of the MATH test set), split "
            f"{TRAIN_FRACTION:.0%} / {1 - TRAIN_FRACTION:.0%} stratified by subject x level "
            f"({len(set(strata))} strata; scikit-learn train_test_split, random_state={seed})"
        ),
    )


def _mmlu_dev_val_and_test_sample(
    examples: list[Example], seed: int
) -> tuple[list[str], list[str], str]:
    train = [example.id for example in examples if not example.id.startswith("mmlu/test/")]
    pool = [example for example in examples if example.id.startswith("mmlu/test/")]
    _, test = _train_test_split(
        [example.id for example in pool],
        test_size=MMLU_TEST_SIZE,
        random_state=seed,
        shuffle=True,
        stratify=[example.meta["subject"] for example in pool],
    )
    return (
        train,
        test,
        (
            f"train: all MMLU dev + val questions ({len(train)}); test: {MMLU_TEST_SIZE} of the "
            f"{len(pool)} test questions, sampled in proportion to subject (scikit-learn "
            f"train_test_split stratified by subject, random_state={seed})"
        ),
    )


_PROTOCOLS: dict[str, _Protocol] = {
    "gsm8k": _Protocol(("test",), ("gsm8k/test.jsonl",), _random_fraction),
    "humaneval": _Protocol(("test",), ("humaneval/HumanEval.jsonl.gz",), _random_fraction),
    "mbpp": _Protocol(("all",), ("mbpp/mbpp.jsonl",), _mbpp_standard),
    "math": _Protocol(
        ("math500",), ("math/test.jsonl", "math/math500_test.jsonl"), _math_stratified
    ),
    "mmlu": _Protocol(
        ("dev", "val", "test"),
        ("mmlu/dev/*_dev.csv", "mmlu/val/*_val.csv", "mmlu/test/*_test.csv"),
        _mmlu_dev_val_and_test_sample,
    ),
}


def _protocol(name: str) -> _Protocol:
    try:
        return _PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"no split protocol for benchmark {name!r}; protocols exist for {sorted(_PROTOCOLS)}"
        ) from None


def data_checksums(name: str, data_dir: Optional[PathLike] = None) -> dict[str, str]:
    """sha256 of each data file the split protocol of ``name`` reads (globs: the matching files
    concatenated in name order).

    Raises:
        ConfigError: no protocol for ``name``.
        DataError: a file is missing or a glob matches nothing.
    """
    root = resolve_data_dir(data_dir)
    checksums = {}
    for pattern in _protocol(name).data_files:
        if "*" in pattern:
            paths = sorted(root.glob(pattern))
            if not paths:
                raise DataError(f"no benchmark data files match {str(root / pattern)!r}")
        else:
            paths = [data_file(pattern, root)]
        checksums[pattern] = files_sha256(paths)
    return checksums


def _pool(name: str, data_dir: Optional[PathLike], **load_options: Any) -> list[Example]:
    return [
        example
        for source in _protocol(name).sources
        for example in load_benchmark(name, source, data_dir, **load_options)
    ]


def make_split(name: str, seed: int = 0, data_dir: Optional[PathLike] = None) -> Split:
    """Draw the protocol split of benchmark ``name`` (see the module docstring).

    Raises:
        ConfigError: no protocol for ``name``.
        DataError: data files missing or malformed.
    """
    protocol = _protocol(name)
    checksums = data_checksums(name, data_dir)
    examples = _pool(name, data_dir)
    train, test, description = protocol.choose(examples, seed)
    order = {example.id: index for index, example in enumerate(examples)}
    return Split(
        benchmark=name,
        seed=seed,
        train_ids=tuple(sorted(train, key=order.__getitem__)),
        test_ids=tuple(sorted(test, key=order.__getitem__)),
        protocol=f"{name}: {description}",
        data_checksums=checksums,
    )


def save_split(split: Split, path: PathLike) -> Path:
    """Write ``split`` as JSON to ``path`` (parent folders are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": SPLIT_FORMAT_VERSION,
        "benchmark": split.benchmark,
        "seed": split.seed,
        "protocol": split.protocol,
        "data_checksums": dict(split.data_checksums),
        "train_ids": list(split.train_ids),
        "validation_ids": list(split.validation_ids),
        "test_ids": list(split.test_ids),
    }
    target.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return target


def load_split(path: PathLike) -> Split:
    """Read a split written by :func:`save_split`.

    Raises:
        DataError: the file is missing, not JSON, or lacks a field.
    """
    source = Path(path)
    try:
        payload = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"split file {str(source)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"split file {str(source)!r} is not valid JSON: {exc}") from exc
    fields = (
        "format_version",
        "benchmark",
        "seed",
        "protocol",
        "data_checksums",
        "train_ids",
        "test_ids",
    )
    missing = [name for name in fields if name not in payload]
    if missing:
        raise DataError(f"split file {str(source)!r} lacks field(s) {missing}")
    if payload["format_version"] not in (1, SPLIT_FORMAT_VERSION):
        raise DataError(
            f"split file {str(source)!r} has format_version {payload['format_version']!r}; "
            f"this version reads 1 and {SPLIT_FORMAT_VERSION}"
        )
    return Split(
        benchmark=payload["benchmark"],
        seed=int(payload["seed"]),
        train_ids=tuple(payload["train_ids"]),
        validation_ids=tuple(payload.get("validation_ids", ())),
        test_ids=tuple(payload["test_ids"]),
        protocol=payload["protocol"],
        data_checksums=payload["data_checksums"],
    )


def check_split_data(split: Split, data_dir: Optional[PathLike] = None) -> None:
    """Make sure the data on disk is the data ``split`` was drawn from.

    Raises:
        DataError: a file's checksum differs (the message names the file and both checksums).
    """
    current = data_checksums(split.benchmark, data_dir)
    for pattern, recorded in split.data_checksums.items():
        if current.get(pattern) != recorded:
            raise DataError(
                f"benchmark data {pattern!r} under {str(resolve_data_dir(data_dir))!r} has sha256 "
                f"{current.get(pattern)}, but the split was drawn from data with sha256 "
                f"{recorded}; "
                "use the original data or draw a new split"
            )


def split_examples(
    split: Split,
    part: str,
    data_dir: Optional[PathLike] = None,
    *,
    verify_data: bool = True,
    **load_options: Any,
) -> list[Example]:
    """The examples of one part of ``split``, in the split's id order.

    Args:
        part: ``"train"``, ``"validation"`` or ``"test"``.
        verify_data: first check the data checksums (:func:`check_split_data`).
        **load_options: passed to the loader (MBPP: ``show_tests``).

    Raises:
        ConfigError: unknown ``part`` or loader option.
        DataError: data changed since the split was drawn, or an id is not in the data.
    """
    wanted = split.ids(part)
    if verify_data:
        check_split_data(split, data_dir)
    by_id = {example.id: example for example in _pool(split.benchmark, data_dir, **load_options)}
    absent = [example_id for example_id in wanted if example_id not in by_id]
    if absent:
        raise DataError(
            f"{len(absent)} {split.benchmark} id(s) of the split are not in the data, "
            f"e.g. {absent[:3]}"
        )
    return [by_id[example_id] for example_id in wanted]
