"""Loaders, data-directory resolution, splits and the public-copy writer, against the real data in
the shared data directory (skipped, with the reason, only when that directory is absent)."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from masr_graph.benchmarks import (
    DATA_DIR_ENV,
    Benchmark,
    Example,
    Score,
    aevaluate,
    answer_key,
    evaluate,
    get_benchmark,
    load_benchmark,
    load_split,
    make_split,
    register_benchmark,
    resolve_data_dir,
    save_split,
    split_examples,
)
from masr_graph.benchmarks.tasks import registry
from masr_graph.benchmarks.tasks.splits import check_split_data

from masr_graph.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data_dir() -> Path:
    try:
        return resolve_data_dir()
    except DataError as exc:
        pytest.skip(f"benchmark data directory not available: {exc}")


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    # Tests decide the data directory themselves; a developer's MASR_DATA_DIR must not leak in.
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ------------------------------------------------------------------------- data-dir resolution


def test_checkout_default_is_shared_data_next_to_the_repository(monkeypatch):
    # The fallback, resolved here with the environment this test controls (the module's
    # `data_dir` fixture honours a user's MASR_DATA_DIR, which may name any copy of the data).
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    repository = Path(__file__).resolve().parent.parent
    checkout_default = repository.parent / "shared" / "data"
    if not checkout_default.is_dir():
        pytest.skip(f"no checkout default data directory {checkout_default}")
    # Compare resolved paths: the checkout's shared/ may be a symlink.
    assert resolve_data_dir().resolve() == checkout_default.resolve()


def test_env_var_beats_checkout_default_and_argument_beats_env(tmp_path, monkeypatch):
    from_env, from_argument = tmp_path / "env", tmp_path / "arg"
    for root, question in ((from_env, "env question"), (from_argument, "argument question")):
        (root / "gsm8k").mkdir(parents=True)
        row = {"question": question, "answer": "so\n#### 1,000"}
        (root / "gsm8k" / "test.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(from_env))
    assert [e.query for e in load_benchmark("gsm8k")] == ["env question"]
    only = load_benchmark("gsm8k", "test", data_dir=from_argument)
    assert [(e.query, e.answer) for e in only] == [("argument question", "1000")]


def test_env_var_naming_a_missing_directory_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match="nowhere.*MASR_DATA_DIR"):
        resolve_data_dir()


MISSING_FILES = [
    ("gsm8k", "test", "gsm8k/test.jsonl"),
    ("gsm8k", "train", "gsm8k/train.jsonl"),
    ("math", "test", "math/test.jsonl"),
    ("humaneval", "test", "humaneval/HumanEval.jsonl.gz"),
    ("mbpp", "test", "mbpp/mbpp.jsonl"),
    ("mmlu", "dev", "mmlu/dev/*_dev.csv"),
]


@pytest.mark.parametrize("name, split, relative", MISSING_FILES)
def test_missing_file_raises_data_error_naming_it_and_the_fix(tmp_path, name, split, relative):
    with pytest.raises(DataError) as caught:
        load_benchmark(name, split, data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path / relative) in message
    assert DATA_DIR_ENV in message


def test_math500_needs_the_full_test_file_for_its_ids(tmp_path, data_dir):
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "math500_test.jsonl").write_bytes(
        (data_dir / "math/math500_test.jsonl").read_bytes()
    )
    with pytest.raises(DataError, match="math/test.jsonl"):
        load_benchmark("math", "math500", data_dir=tmp_path)


def test_malformed_row_names_file_and_row(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(DataError, match=r"test.jsonl.*row 0.*####"):
        load_benchmark("gsm8k", data_dir=tmp_path)


def test_unknown_benchmark_split_and_option_name_the_allowed_ones(data_dir):
    with pytest.raises(ConfigError, match=r"'gsm9k'.*gsm8k.*humaneval.*math.*mbpp.*mmlu"):
        load_benchmark("gsm8k".replace("8", "9"))
    with pytest.raises(ConfigError, match=r"'dev'.*'test', 'train'"):
        load_benchmark("gsm8k", "dev")
    with pytest.raises(ConfigError, match=r"show_test.*show_tests"):
        load_benchmark("mbpp", "test", show_test=True)


def test_example_domain_defaults_for_builtin_tasks_only():
    tasks = ["gsm8k", "math", "humaneval", "mbpp", "mmlu"]
    domains = [Example("x", task, "q", "").domain for task in tasks]
    assert domains == ["math", "math", "code", "code", "knowledge"]
    with pytest.raises(ConfigError, match=r"'echo'.*domain="):
        Example("x", "echo", "q", "")


async def test_user_added_benchmark_loads_and_scores_through_the_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    def load(split, data_dir):
        return [Example("echo/0", "echo", "Say hi", "hi", domain="knowledge")]

    def exact(example, reply):
        return Score(reply.strip() == example.answer, reply.strip(), "exact match")

    register_benchmark(Benchmark("echo", "knowledge", ("test",), load, exact, str.strip))
    [example] = load_benchmark("echo")
    assert example.domain == "knowledge"
    assert evaluate(example, " hi ").correct and not (await aevaluate(example, "ho")).correct
    assert answer_key("echo", " hi ") == "hi"
    with pytest.raises(ConfigError, match="'gsm8k' is already registered"):
        register_benchmark(get_benchmark("gsm8k"))


# ---------------------------------------------------------------------------------------- loaders

SIZES = [
    ("gsm8k", "test", 1319),
    ("gsm8k", "train", 7473),
    ("math", "test", 5000),
    ("math", "math500", 500),
    ("humaneval", "test", 164),
    ("mbpp", "test", 500),
    ("mbpp", "train", 374),
    ("mbpp", "validation", 90),
    ("mbpp", "prompt", 10),
    ("mmlu", "test", 14042),
    ("mmlu", "dev", 285),
    ("mmlu", "val", 1531),
]


@pytest.mark.parametrize("name, split, size", SIZES)
def test_loaders_read_every_row_with_unique_ids(data_dir, name, split, size):
    examples = load_benchmark(name, split)
    assert len(examples) == size
    assert len({example.id for example in examples}) == size
    assert all(example.task == name and example.query.strip() for example in examples)


def test_gsm8k_gold_is_a_canonical_number_and_every_reference_solution_scores(data_dir):
    examples = load_benchmark("gsm8k", "test")
    with_commas = [
        e
        for e in examples
        if "#### " in e.meta["solution"] and "," in e.meta["solution"].split("####")[-1]
    ]
    assert with_commas, "the test set has answers written with thousands separators"
    assert all("," not in e.answer for e in examples)
    assert all(evaluate(e, e.meta["solution"]).correct for e in examples)


def test_math_gold_is_last_boxed_and_math500_shares_ids_with_the_test_set(data_dir):
    full = {e.id: e for e in load_benchmark("math", "test")}
    subset = load_benchmark("math", "math500")
    assert all(e.id in full and full[e.id].query == e.query for e in subset)
    assert {e.meta["level"] for e in full.values()} == {1, 2, 3, 4, 5}
    # MATH-500's curated answers must be judged equal to the boxed answers of the full solutions
    assert all(evaluate(e, "\\boxed{" + full[e.id].answer + "}").correct for e in subset)


def test_mmlu_query_lists_the_four_options(data_dir):
    example = load_benchmark("mmlu", "dev")[0]
    lines = example.query.split("\n")
    assert [line[:3] for line in lines[-4:]] == ["A. ", "B. ", "C. ", "D. "]
    assert [line[3:] for line in lines[-4:]] == list(example.meta["choices"])
    assert example.answer in "ABCD" and example.meta["subject"] == "abstract_algebra"


def test_mbpp_asserts_are_hidden_from_agents_unless_asked(data_dir):
    hidden = load_benchmark("mbpp", "test")
    assert all("assert" not in e.query for e in hidden)
    assert all(e.meta["entry_point"] in e.query for e in hidden)
    shown = load_benchmark("mbpp", "test", show_tests=True)
    assert all(all(test in e.query for test in e.meta["test_list"]) for e in shown)
    assert [e.id for e in hidden] == [f"mbpp/{n}" for n in range(11, 511)]


def test_mbpp_query_states_the_signature_and_setup_needs(data_dir):
    by_id = {e.id: e for e in load_benchmark("mbpp", "all")}
    assert "`def remove_Occ(s, ch)`" in by_id["mbpp/11"].query
    tree_task = by_id["mbpp/367"].query
    assert "must also define `Node`" in tree_task and "root1 = Node(1)" in tree_task


def test_humaneval_query_is_the_prompt(data_dir):
    example = load_benchmark("humaneval")[0]
    assert example.id == "HumanEval/0" and example.query == example.meta["prompt"]
    assert example.meta["entry_point"] == "has_close_elements"


# ----------------------------------------------------------------------------------------- splits

PROTOCOL_SIZES = [
    ("gsm8k", 263, 1056),
    ("humaneval", 32, 132),
    ("mbpp", 374, 500),
    ("math", 100, 400),
    ("mmlu", 1816, 1000),
]


@pytest.mark.parametrize("name, n_train, n_test", PROTOCOL_SIZES)
def test_split_sizes_follow_the_protocol(data_dir, name, n_train, n_test):
    split = make_split(name, seed=0)
    assert (len(split.train_ids), len(split.test_ids)) == (n_train, n_test)
    assert not set(split.train_ids) & set(split.test_ids)
    assert len(set(split.train_ids)) == n_train and len(set(split.test_ids)) == n_test
    assert split.protocol.startswith(f"{name}: ")


def test_mbpp_split_is_the_standard_task_id_ranges(data_dir):
    split = make_split("mbpp", seed=3)
    assert split.train_ids == tuple(f"mbpp/{n}" for n in range(601, 975))
    assert split.test_ids == tuple(f"mbpp/{n}" for n in range(11, 511))


@pytest.mark.parametrize("name", ["gsm8k", "humaneval", "math", "mmlu"])
def test_random_splits_are_deterministic_per_seed(data_dir, name):
    first, again, other = (
        make_split(name, seed=0),
        make_split(name, seed=0),
        make_split(name, seed=1),
    )
    assert first == again
    assert set(first.test_ids) != set(other.test_ids)


def test_math_split_is_stratified_by_subject_and_level(data_dir):
    split = make_split("math", seed=0)
    subset = {e.id: e for e in load_benchmark("math", "math500")}

    def strata(ids):
        return collections.Counter((subset[i].meta["type"], subset[i].meta["level"]) for i in ids)

    train, everything = strata(split.train_ids), strata(subset)
    assert len(everything) == 35
    for stratum, count in everything.items():
        assert abs(train[stratum] - 0.2 * count) <= 1, stratum


def test_mmlu_split_trains_on_dev_val_and_samples_test_per_subject(data_dir):
    split = make_split("mmlu", seed=0)
    assert all(i.startswith(("mmlu/dev/", "mmlu/val/")) for i in split.train_ids)
    assert all(i.startswith("mmlu/test/") for i in split.test_ids)
    test_counts = collections.Counter(e.meta["subject"] for e in load_benchmark("mmlu", "test"))
    sampled = collections.Counter(i.split("/")[2] for i in split.test_ids)
    assert set(sampled) == set(test_counts)  # every subject is represented
    for subject, count in test_counts.items():
        assert abs(sampled[subject] - 1000 * count / 14042) <= 1, subject


def test_split_round_trips_through_json_and_rebuilds_examples(data_dir, tmp_path):
    split = make_split("humaneval", seed=7)
    path = save_split(split, tmp_path / "results" / "humaneval_split.json")
    saved = json.loads(path.read_text())
    assert saved["seed"] == 7 and saved["test_ids"] == list(split.test_ids)
    assert saved["data_checksums"]["humaneval/HumanEval.jsonl.gz"].startswith("b796127e635a67f9")
    assert load_split(path) == split
    examples = split_examples(load_split(path), "train")
    assert [e.id for e in examples] == list(split.train_ids)


def test_split_refuses_data_that_changed_since_it_was_drawn(data_dir, tmp_path):
    split = make_split("gsm8k", seed=0)
    (tmp_path / "gsm8k").mkdir()
    rows = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("\n".join(rows[1:] + rows[:1]) + "\n")
    with pytest.raises(DataError, match=r"gsm8k/test.jsonl.*sha256"):
        check_split_data(split, tmp_path)
    with pytest.raises(DataError, match="sha256"):
        split_examples(split, "test", tmp_path)


def test_load_split_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"benchmark": "gsm8k"}')
    with pytest.raises(DataError, match="lacks field"):
        load_split(tmp_path / "bad.json")


def test_split_part_and_protocol_names_are_checked(data_dir):
    with pytest.raises(ConfigError, match=r"'valid'.*'train', 'validation', 'test'"):
        make_split("humaneval").ids("valid")
    with pytest.raises(ConfigError, match=r"'gsm9k'.*gsm8k"):
        make_split("gsm9k")
