"""The replay backend's LLMRouter world, proved through the real pipeline: prompts built by the
runtime engine go through an LLMPool to the replay transport, and the replies are scored by the
benchmarks' own evaluators (code in the sandbox). Also: the outcome table and split against the
raw files, query matching, typed errors, usage and cost, cache and budget, the stubborn rule,
fractional scores, latency and backend_info. (The ZeroEval world and the calibrated rule have
their own files.)"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import math
import random
import statistics
import time
from collections import defaultdict
from typing import Sequence

import pytest
from masr_graph.benchmarks import TASK_DOMAINS, Example, aevaluate, answer_key, evaluate
from masr_graph.benchmarks.tasks import code_eval
from masr_graph.benchmarks.tasks import humaneval as humaneval_benchmark
from masr_graph.benchmarks.tasks import mbpp as mbpp_benchmark
from masr_graph.benchmarks.tasks.code_eval import extract_code
from masr_graph.benchmarks.data.data_dir import resolve_data_dir

from masr_graph.errors import BudgetExceeded, ConfigError, DataError, UnknownQueryError
from masr_graph.llm import (
    Budget,
    CallContext,
    LLMPool,
    LLMSpec,
    ResponseCache,
    prompt_tokens_upper_bound,
)
from masr_graph.plan import Plan
from masr_graph.replay import (
    QueryMatcher,
    RecordedQuery,
    ReplayTransport,
    RuleCall,
    backend_info,
    load_outcome_table,
    load_world,
    recorded_outcome,
    register_rule,
    rule_names,
    synthesize_reply,
    world_split,
)
from masr_graph.replay import replay_pool as any_world_pool
from masr_graph.replay import replay_specs as any_world_specs
from masr_graph.replay import rules as rules_module
from masr_graph.replay import tokens
from masr_graph.replay.answers import WRONG_AGREEMENT, attractive_share
from masr_graph.replay.outcomes import REPLAY_TASKS
from masr_graph.runtime.decision import final_refer_messages
from masr_graph.runtime.engine import MASExecutor, QueryItem
from masr_graph.runtime.roles import roles_for_domain
from masr_graph.runtime.sandbox import arun_python

OUTCOMES = resolve_data_dir() / "outcomes" / "llmrouter"
RECORDED_TASK = {
    "gsm8k": "gsm8k",
    "math": "math",
    "mbpp": "mbpp",
    "human_eval": "humaneval",
    "mmlu": "mmlu",
}
ENGINE_MAX_TOKENS = 512  # MASExecutor's default completion cap


def replay_pool(**kwargs):
    """The LLMRouter world's pool under the stubborn rule (the rule these tests are about)."""
    return any_world_pool("llmrouter", rule=kwargs.pop("rule", "stubborn"), **kwargs)


def replay_specs(**kwargs):
    return any_world_specs("llmrouter", rule=kwargs.pop("rule", "stubborn"), **kwargs)


@pytest.fixture(scope="module")
def table():
    return load_outcome_table()


def role_for(example: Example) -> str:
    return roles_for_domain(TASK_DOMAINS[example.task])[0].name


def engine_messages(example: Example, extra: str = "") -> list[dict[str, str]]:
    """Messages laid out like the engine's (system role prompt; user: task, peers, format)."""
    role = roles_for_domain(TASK_DOMAINS[example.task])[0]
    user = f"Task:\n{example.query}\n\n{extra}\n\n{role.output_format}"
    return [{"role": "system", "content": role.prompt}, {"role": "user", "content": user}]


# ------------------------------------------------------------------------------------ verdicts
# Every distinct (example, reply) is scored once and remembered, so the exhaustive checks below
# share their work. Text replies go through the benchmark evaluators; code replies through the
# code evaluators' own extraction and test-program builders, run in the sandbox in batches (a
# forked child per program, run as __main__ from its file with the evaluators' CPU and wall time
# limits; pass = exit status 0, as the evaluators count it), because one sandbox per program would
# take ~10 minutes for the ~2,000 distinct programs on two cores. A sample is cross-checked against
# the evaluators' aevaluate().
_VERDICTS: dict[tuple[str, str], bool] = {}
_PROGRAM_BUILDERS = {
    "humaneval": humaneval_benchmark.build_program,
    "mbpp": mbpp_benchmark.build_program,
}
_BATCH_RUNNER = r"""
import json, os, resource, runpy, signal
passed = {}
for name in json.load(open("programs.json")):
    pid = os.fork()
    if pid == 0:
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, hard))
        signal.alarm(WALL_TIMEOUT_S)
        try:
            runpy.run_path(name, run_name="__main__")
        except SystemExit as stop:
            os._exit(0 if stop.code in (None, 0) else 1)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    passed[name] = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
print(json.dumps(passed))
"""
_BATCH_RUNNER = _BATCH_RUNNER.replace("CPU_LIMIT_S", str(code_eval.CPU_LIMIT_S)).replace(
    "WALL_TIMEOUT_S", str(math.ceil(code_eval.WALL_TIMEOUT_S))
)


def _reply_key(example: Example, reply: str) -> tuple[str, str]:
    return example.id, hashlib.sha256(reply.encode()).hexdigest()


async def verdicts(pairs: Sequence[tuple[Example, str]]) -> list[bool]:
    """Whether each reply solves its example (see the comment above)."""
    programs: dict[tuple[str, str], str] = {}
    for example, reply in pairs:
        key = _reply_key(example, reply)
        if key in _VERDICTS or key in programs:
            continue
        if example.task in _PROGRAM_BUILDERS:
            code = extract_code(reply, example.meta["entry_point"])
            if code is None:
                _VERDICTS[key] = False
            else:
                programs[key] = _PROGRAM_BUILDERS[example.task](example, code)
        else:
            _VERDICTS[key] = evaluate(example, reply).correct
    if programs:
        keys = list(programs)
        chunks = [range(start, len(keys), 2) for start in range(2)]  # the machine has 2 cores
        results = await asyncio.gather(
            *(
                arun_python(
                    _BATCH_RUNNER,
                    files={
                        "programs.json": json.dumps([f"p{i}.py" for i in chunk]),
                        **{f"p{i}.py": programs[keys[i]] for i in chunk},
                    },
                    timeout_s=900,
                )
                for chunk in chunks
                if chunk
            )
        )
        for result in results:
            assert result.ok, result.failure
            for name, passed in json.loads(result.stdout).items():
                _VERDICTS[keys[int(name[1:-3])]] = passed
    return [_VERDICTS[_reply_key(example, reply)] for example, reply in pairs]


# ------------------------------------------------------------------------ table and split
def test_outcome_table_matches_the_raw_files(table):
    rows: dict[str, list[dict]] = defaultdict(list)
    for name in ("default_query_train.jsonl", "default_query_test.jsonl"):
        with open(OUTCOMES / name, encoding="utf-8") as lines:
            for line in lines:
                row = json.loads(line)
                if row["task_name"] in RECORDED_TASK:
                    rows[row["query"]].append(row)
    records: dict[str, list[dict]] = defaultdict(list)
    for name in ("train.json", "test.json"):
        for entry in json.loads((OUTCOMES / name).read_text(encoding="utf-8")):
            records[entry["question"]].append(entry["scores"])
    unambiguous = {
        text
        for text, group in rows.items()
        if len(
            {
                (r["task_name"], r["ground_truth"], str(r["choices"]), str(r["task_id"]))
                for r in group
            }
        )
        == 1
    }
    expected = {text for text in unambiguous if text in records}

    by_question = {query.question: query for query in table.queries}
    assert set(by_question) == expected
    assert len(table.queries) == len(expected)  # each question once
    assert len({query.id for query in table.queries}) == len(table.queries)
    for text, query in by_question.items():
        assert query.task == RECORDED_TASK[rows[text][0]["task_name"]]
        for llm in table.llm_names:
            assert query.scores[llm] == pytest.approx(
                statistics.mean(r[llm] for r in records[text])
            )
        # the recorded question is findable in what agents are shown
        assert " ".join(text.split()) in " ".join(query.example.query.split())
    twice = [q for q in table.queries if len(records[q.question]) == 2]
    assert twice and all(q.in_test_file for q in twice)
    assert sum(table.dedup[task]["in_both_score_files"] for task in REPLAY_TASKS) == len(twice)
    # every task present, the code tasks carry their benchmark's tests
    assert {q.task for q in table.queries} == set(REPLAY_TASKS)
    for query in table.task_queries("humaneval"):
        assert query.example.meta["test"] and query.example.query == query.question
    for query in table.task_queries("mbpp"):
        assert query.example.meta["test_list"]
        assert not any(test in query.example.query for test in query.example.meta["test_list"])


def test_recorded_llms_have_real_prices_and_descriptions(table):
    described = json.loads((OUTCOMES / "default_llm.json").read_text(encoding="utf-8"))
    scored = set(json.loads((OUTCOMES / "test.json").read_text(encoding="utf-8"))[0]["scores"])
    assert set(table.llm_names) == scored and len(scored) == 9
    specs = {spec.name: spec for spec in replay_specs()}
    for name in scored:
        spec = specs[name]
        assert (spec.price_in, spec.price_out) == (
            described[name]["input_price"],
            described[name]["output_price"],
        )
        assert spec.price_in > 0 and spec.price_out > 0
        assert spec.description == described[name]["feature"]
        assert spec.model == described[name]["model"]
        assert spec.api_key_env is None and spec.base_url == "replay://llmrouter?rule=stubborn"
    assert any_world_specs("llmrouter")[0].base_url == "replay://llmrouter?rule=calibrated"


def test_split_is_seeded_stratified_and_keeps_test_json_in_test(table, tmp_path):
    world = load_world("llmrouter")
    for task in REPLAY_TASKS:
        split = world_split(world, task, seed=0)
        assert split == world_split(world, task, seed=0)
        assert split.train_ids != world_split(world, task, seed=1).train_ids
        parts = [set(split.ids(part)) for part in ("train", "validation", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        queries = table.task_queries(task)
        assert set.union(*parts) == {q.id for q in queries}
        assert len(parts[0]) == round(0.4 * len(queries))
        assert len(parts[1]) == round(0.2 * len(queries))
        assert all(q.id in parts[2] for q in queries if q.in_test_file)
    path = tmp_path / "split.json"
    split = world_split(world, "mmlu", seed=0, split_file=path)
    assert world_split(world, "mmlu", seed=0, split_file=path) == split
    with pytest.raises(ConfigError, match="seed 0"):
        world_split(world, "mmlu", seed=3, split_file=path)
    payload = json.loads(path.read_text())
    payload["data_checksums"]["outcomes/llmrouter/train.json"] = "0" * 64
    path.write_text(json.dumps(payload))
    with pytest.raises(DataError, match="other data"):
        world_split(world, "mmlu", seed=0, split_file=path)


# --------------------------------------------------------------------------- replies
@pytest.mark.slow
async def test_every_correct_reply_passes_and_every_wrong_reply_fails(table):
    pairs, expected = [], []
    for query in table.queries:
        pairs.append((query.example, synthesize_reply(query.example, table.llm_names[0], True)))
        expected.append(True)
        for llm in table.llm_names:
            pairs.append((query.example, synthesize_reply(query.example, llm, False)))
            expected.append(False)
    got = await verdicts(pairs)
    wrong = [
        (example.id, reply[-80:])
        for (example, reply), ok, want in zip(pairs, got, expected, strict=True)
        if ok != want
    ]
    assert not wrong, wrong[:10]
    # correct replies are the same whoever gives them; they fit the engine's completion cap
    for query in table.queries:
        replies = {synthesize_reply(query.example, llm, True) for llm in table.llm_names}
        assert len(replies) == 1
        reply = replies.pop()
        assert max(tokens.count_text(llm, reply) for llm in table.llm_names) <= ENGINE_MAX_TOKENS


async def test_batched_code_verdicts_agree_with_the_evaluators(table):
    rng = random.Random(7)
    pairs = []
    for task in ("humaneval", "mbpp"):
        for query in rng.sample(table.task_queries(task), 4):
            llm = rng.choice(table.llm_names)
            pairs += [
                (query.example, synthesize_reply(query.example, llm, True)),
                (query.example, synthesize_reply(query.example, llm, False)),
            ]
    batched = await verdicts(pairs)
    direct = [(await aevaluate(example, reply)).correct for example, reply in pairs]
    assert batched == direct == [True, False] * 8


def _wrong_agreement(examples: Sequence[Example], llms: Sequence[str]) -> float:
    """Share of pairs of LLMs whose (synthesised) wrong answers to a query coincide."""
    agree = pairs = 0
    for example in examples:
        keys = [answer_key(example.task, synthesize_reply(example, llm, False)) for llm in llms]
        assert example.answer not in keys and None not in keys
        agree += sum(a == b for i, a in enumerate(keys) for b in keys[i + 1:])
        pairs += len(keys) * (len(keys) - 1) // 2
    return agree / pairs


@pytest.mark.parametrize("task, expected", [("gsm8k", WRONG_AGREEMENT["gsm8k"]),
                                            ("math", WRONG_AGREEMENT["math"]),
                                            ("mmlu", 1 / 3)])
def test_wrong_llms_agree_at_the_rate_real_llms_do(table, task, expected):
    examples = [q.example for q in table.task_queries(task)[:150]]
    assert _wrong_agreement(examples, table.llm_names) == pytest.approx(expected, abs=0.05)


def test_wrong_agreement_rates_are_the_zeroeval_recordings():
    """The constants are recounted from 43 (GSM8K) and 41 (MATH-L5) real LLMs' replies: pairs
    of LLMs both wrong on a question, share giving the same wrong answer (answer keys of the
    project's evaluators)."""
    from masr_graph.replay.zeroeval import load_reply_table, reply_verdicts

    try:
        recorded = load_reply_table()
    except DataError as exc:
        pytest.skip(f"ZeroEval recordings not available: {exc}")
    for task, rate in WRONG_AGREEMENT.items():
        keys: dict[str, list[str]] = defaultdict(list)
        for (_, question), verdict in reply_verdicts(recorded, task).items():
            if not verdict.correct and verdict.key is not None:
                keys[question].append(verdict.key)
        agree = sum(sum(a == b for i, a in enumerate(k) for b in k[i + 1:]) for k in keys.values())
        pairs = sum(len(k) * (len(k) - 1) // 2 for k in keys.values())
        assert agree / pairs == pytest.approx(rate, abs=0.0015), task


def test_attractive_share_gives_the_agreement_it_is_asked_for():
    for candidates, agreement in ((12, 0.412), (10, 0.116), (3, 0.5), (4, 0.1)):
        q = attractive_share(candidates, agreement)
        achieved = q ** 2 + (1 - q) ** 2 / (candidates - 1)
        assert achieved == pytest.approx(max(agreement, 1 / candidates))


def test_wrong_answers_look_like_answers_and_differ_across_llms(table):
    mmlu = table.task_queries("mmlu")[0].example
    letters = {answer_key("mmlu", synthesize_reply(mmlu, llm, False)) for llm in table.llm_names}
    assert letters <= {"A", "B", "C", "D"} - {mmlu.answer} and len(letters) > 1
    code = table.task_queries("humaneval")[0].example
    right = synthesize_reply(code, "x", True)
    assert right.count("```python") == 1 and f"def {code.meta['entry_point']}(" in right
    ast.parse(extract_code(right, code.meta["entry_point"]))
    for llm in table.llm_names:  # deterministic
        assert synthesize_reply(code, llm, False) == synthesize_reply(code, llm, False)


# --------------------------------------------------------------------- the full pipeline
@pytest.mark.slow
async def test_pipeline_reproduces_each_llms_recorded_accuracy_per_task(table):
    """Engine (IO, one agent) → LLMPool → replay → evaluator, every recorded query x every LLM."""
    pool = replay_pool()
    executor = MASExecutor(pool, keep_messages=False, max_concurrent_queries=256)
    pairs = [(query, llm) for query in table.queries for llm in table.llm_names]
    traces = await executor.run_many(
        QueryItem(
            query.example.query,
            Plan("IO", (role_for(query.example),), (llm,)),
            f"{query.id}@{llm}",
            query.task,
        )
        for query, llm in pairs
    )
    scores = await verdicts(
        [
            (query.example, trace.final_answer)
            for (query, _), trace in zip(pairs, traces, strict=True)
        ]
    )

    hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for (query, llm), correct in zip(pairs, scores, strict=True):
        score = query.scores[llm]
        if score in (0.0, 1.0):
            assert correct == (score == 1.0), (query.id, llm)
        else:  # fractional: the seeded draw of this call (seed 0, sample 0)
            assert correct == recorded_outcome(query, llm, sample_index=0, seed=0), (query.id, llm)
        hits[(llm, query.task)].append(correct)

    lines = [f"{'LLM':34s}" + "".join(f"{task:>11s}" for task in REPLAY_TASKS)]
    for llm in table.llm_names:
        row = f"{llm:34s}"
        for task in REPLAY_TASKS:
            accuracy = statistics.mean(hits[(llm, task)])
            recorded = table.recorded_mean(llm, task)
            fractional = sum(0 < q.scores[llm] < 1 for q in table.task_queries(task))
            if fractional == 0:
                assert accuracy == pytest.approx(recorded, abs=1e-12)
            else:
                assert abs(accuracy - recorded) <= fractional / len(hits[(llm, task)])
            row += f"{accuracy:11.3f}"
        lines.append(row)
    print("\nreplayed accuracy (= recorded mean)\n" + "\n".join(lines))
    totals = pool.ledger.totals()
    assert totals.calls == len(pairs) and totals.cached_calls == 0 and totals.cost_usd > 0


async def test_fractional_scores_are_seeded_bernoulli_draws(table):
    fractional = [
        (q, llm) for q in table.queries for llm in table.llm_names if 0 < q.scores[llm] < 1
    ]
    assert fractional  # the mean of two disagreeing records
    pool = replay_pool()
    samples = 120
    rates = []
    for query, llm in fractional:
        right = synthesize_reply(query.example, llm, True)
        draws = []
        for index in range(samples):
            result = await pool.chat(
                llm, engine_messages(query.example), seed=0, context=CallContext(sample_index=index)
            )
            draws.append(result.text == right)
        again = [recorded_outcome(query, llm, sample_index=i, seed=0) for i in range(samples)]
        assert draws == again  # a pure function of (LLM, query, sample, seed)
        assert again != [
            recorded_outcome(query, llm, sample_index=i, seed=1) for i in range(samples)
        ]
        rates.append(statistics.mean(draws))
        p = query.scores[llm]
        assert abs(rates[-1] - p) <= 4 * (p * (1 - p) / samples) ** 0.5
    pooled_p = statistics.mean(q.scores[llm] for q, llm in fractional)
    assert abs(statistics.mean(rates) - pooled_p) <= 4 * (0.25 / (samples * len(fractional))) ** 0.5
    # and both replies score as their draw says
    pairs = [
        (q.example, synthesize_reply(q.example, llm, c))
        for q, llm in fractional
        for c in (True, False)
    ]
    assert await verdicts(pairs) == [True, False] * len(fractional)


# ---------------------------------------------------------------------------- matching
def test_query_found_with_role_mode_peer_text_and_rewrapping(table):
    matcher = QueryMatcher(table.queries)
    rng = random.Random(3)
    for query in table.queries:
        peer = rng.choice(table.queries)
        peer_reply = synthesize_reply(peer.example, rng.choice(table.llm_names), rng.random() < 0.5)
        prompts = [
            "\n".join(m["content"] for m in engine_messages(query.example)),
            # peers' answers before and after, a debate-style instruction
            (
                f"You are one of several agents debating.\n### Agent 0 (x)\n{peer_reply}\n\n"
                f"Task:\n{query.example.query}\n### Agent 1 (y)\n{peer_reply}"
            ),
            # re-wrapped and re-indented by some template, glued to a label
            "Question:" + query.example.query.replace("\n", "\n      ").replace(" ", "  "),
        ]
        for prompt in prompts:
            assert matcher.find(prompt) is query, (query.id, prompt[:200])
        assert matcher.find(prompts[1], hint=query.example.query) is query


def _fake_query(question: str, example_id: str) -> RecordedQuery:
    return RecordedQuery(Example(example_id, "gsm8k", question, "1"), question, {"m": 1.0})


def test_longest_recorded_question_wins_and_hint_must_occur():
    short = _fake_query("Compute the sum of the first ten primes.", "gsm8k/short")
    longer = _fake_query("Compute the sum of the first ten primes. Then double it.", "gsm8k/long")
    other = _fake_query("How many legs do three spiders have in total?", "gsm8k/other")
    matcher = QueryMatcher([short, longer, other])
    assert matcher.find("Task: Compute the sum of the first ten primes. Then double it.") is longer
    assert matcher.find("Task: Compute the sum of the first ten primes. Be brief.") is short
    both = f"Peer said: {longer.question}\nTask: {other.question}"
    assert matcher.find(both) is longer
    assert matcher.find(both, hint=other.question) is other
    # a hint whose question is not in the prompt is ignored, not trusted
    assert matcher.find(f"Task: {other.question}", hint=longer.question) is other


async def test_unrecorded_prompt_is_a_typed_error_not_an_answer(table):
    pool = replay_pool()
    with pytest.raises(UnknownQueryError, match="no recorded query"):
        await pool.chat("gemma-2-9b-it", [{"role": "user", "content": "What is 2 + 2?"}])
    question = table.task_queries("gsm8k")[5].question
    words = question.split()
    words[len(words) // 2] = "zebra"
    with pytest.raises(UnknownQueryError):
        await pool.chat(
            "gemma-2-9b-it",
            [{"role": "user", "content": " ".join(words)}],
            context=CallContext(query=question),
        )  # a wrong hint does not help
    assert "no recorded query" in (pool.ledger.records[-1].error or "")


# ------------------------------------------------------------------------- usage and cost
async def test_usage_follows_the_token_rule_and_cost_the_recorded_prices(table):
    pool = replay_pool()
    described = json.loads((OUTCOMES / "default_llm.json").read_text(encoding="utf-8"))
    query = table.task_queries("humaneval")[10]
    messages = engine_messages(query.example)
    for llm in ("gemma-2-9b-it", "llama3-chatqa-1.5-70b"):
        result = await pool.chat(llm, messages)
        record = result.record
        assert record.prompt_tokens == tokens.count_prompt(llm, messages)
        assert record.completion_tokens == tokens.count_text(llm, result.text)
        price_in, price_out = described[llm]["input_price"], described[llm]["output_price"]
        assert record.cost_usd == pytest.approx(
            (record.prompt_tokens * price_in + record.completion_tokens * price_out) / 1e6
        )
        assert record.cost_usd > 0 and not record.usage_estimated
    # a reply longer than max_tokens is cut there, like a real API
    full = (await pool.chat("gemma-2-9b-it", messages)).text
    cut = await pool.chat("gemma-2-9b-it", messages, max_tokens=10)
    assert cut.record.completion_tokens <= 10 and full.startswith(cut.text) and cut.text != full


async def test_cache_replays_without_transport_calls_and_budget_caps_spend(
    table, tmp_path, monkeypatch
):
    calls = []
    original = ReplayTransport.complete

    async def counted(self, spec, messages, params, context):
        calls.append(spec.name)
        return await original(self, spec, messages, params, context)

    monkeypatch.setattr(ReplayTransport, "complete", counted)
    queries = table.task_queries("math")[:20]
    async with ResponseCache(tmp_path / "cache.sqlite") as cache:
        first_texts: list[str] = []
        first_costs: dict[str, float] = {}
        for run in range(2):
            pool = replay_pool(cache=cache)
            executor = MASExecutor(pool, keep_messages=False)
            traces = await executor.run_many(
                QueryItem(
                    q.example.query,
                    Plan("IO", (role_for(q.example),), ("qwen2.5-7b-instruct",)),
                    q.id,
                    q.task,
                )
                for q in queries
            )
            records = {r.query_id: r for r in pool.ledger.records}
            texts = [t.final_answer for t in traces]
            if run == 0:
                first_texts = texts
                first_costs = {query_id: r.cost_usd for query_id, r in records.items()}
                assert len(calls) == len(queries) and all(c > 0 for c in first_costs.values())
            else:
                assert len(calls) == len(queries)  # the second run made no transport call
                assert texts == first_texts
                assert all(r.cached and r.cost_usd == 0 for r in records.values())
                assert {q: r.would_have_cost_usd for q, r in records.items()} == first_costs

    # budget: cap a little above three calls' worst case; the fourth is refused, spend <= cap
    pool_for_price = replay_pool()
    messages = engine_messages(queries[0].example)
    spec = pool_for_price.specs["llama3-chatqa-1.5-70b"]
    worst = spec.cost_usd(prompt_tokens_upper_bound(messages), 512)
    budget = Budget(3.5 * worst)
    pool = replay_pool(budget=budget)
    made = 0
    with pytest.raises(BudgetExceeded):
        for _ in range(100):
            await pool.chat("llama3-chatqa-1.5-70b", messages, seed=made)
            made += 1
    assert made >= 3 and budget.spent_usd <= budget.max_usd


# ----------------------------------------------------------------------- collaboration rule
def _disagreeing_query(table, task: str = "gsm8k") -> tuple[RecordedQuery, list[str], list[str]]:
    """A query some LLMs solve and others do not (0/1 scores): (query, right LLMs, wrong LLMs)."""
    for query in table.task_queries(task):
        right = [llm for llm in table.llm_names if query.scores[llm] == 1.0]
        wrong = [llm for llm in table.llm_names if query.scores[llm] == 0.0]
        if len(right) >= 3 and len(wrong) >= 3:
            return query, right, wrong
    raise AssertionError("no query with 3 right and 3 wrong LLMs")


async def test_stubborn_agents_ignore_their_peers(table):
    query, right, wrong = _disagreeing_query(table)
    pool = replay_pool()
    peers = "\n\n".join(
        f"### Agent {i} (x)\n{synthesize_reply(query.example, llm, True)}"
        for i, llm in enumerate(right)
    )
    messages = engine_messages(query.example, "Answers from the previous round:\n\n" + peers)
    for llm in wrong:
        result = await pool.chat(llm, messages, context=CallContext(kind="agent", round=1))
        assert result.text == synthesize_reply(query.example, llm, False)
        assert not evaluate(query.example, result.text).correct


async def test_stubborn_decision_keeps_own_answer_if_present_else_majority(table):
    query, right, wrong = _disagreeing_query(table)
    pool = replay_pool()
    example = query.example

    async def decide(judge: str, candidate_llms: list[tuple[str, bool]]) -> str:
        candidates = [synthesize_reply(example, llm, ok) for llm, ok in candidate_llms]
        messages = final_refer_messages(
            example.query,
            [(i, "x", c) for i, c in enumerate(candidates)],
            "End with #### <number>.",
            mode="Debate",
        )
        context = CallContext(kind="decision", query=example.query, candidates=tuple(candidates))
        return (await pool.chat(judge, messages, context=context)).text

    judge_wrong, judge_right = wrong[0], right[0]
    own_wrong = synthesize_reply(example, judge_wrong, False)
    # another wrong LLM whose wrong answer differs from the judge's
    other_wrong = next(
        llm
        for llm in wrong[1:]
        if answer_key("gsm8k", synthesize_reply(example, llm, False))
        != answer_key("gsm8k", own_wrong)
    )
    # own (wrong) answer among the candidates: kept although the majority is right
    assert (
        await decide(judge_wrong, [(right[1], True), (right[2], True), (judge_wrong, False)])
        == own_wrong
    )
    # own answer absent: the majority candidate (right) is returned
    majority = await decide(judge_wrong, [(right[1], True), (other_wrong, False), (right[2], True)])
    assert (
        majority == synthesize_reply(example, right[1], True)
        and evaluate(example, majority).correct
    )
    # ... and a wrong majority wins just the same
    assert await decide(
        judge_right, [(other_wrong, False), (right[1], True), (other_wrong, False)]
    ) == synthesize_reply(example, judge_right, True)  # own answer present: kept
    assert await decide(
        judge_wrong, [(right[1], True), (other_wrong, False), (other_wrong, False)]
    ) == synthesize_reply(example, other_wrong, False)
    # tie between two answers, own absent: the earliest candidate
    assert await decide(judge_wrong, [(other_wrong, False), (right[1], True)]) == synthesize_reply(
        example, other_wrong, False
    )
    assert await decide(judge_wrong, [(right[1], True), (other_wrong, False)]) == synthesize_reply(
        example, right[1], True
    )


async def test_debate_under_the_stubborn_rule_gains_only_at_the_decision_node(table):
    query, right, wrong = _disagreeing_query(table)
    executor = MASExecutor(replay_pool(), keep_messages=False)
    role = role_for(query.example)
    agents = (right[0], right[1], wrong[0])

    def wrong_key(llm: str) -> object:
        return answer_key("gsm8k", synthesize_reply(query.example, llm, False))

    outsider = next(llm for llm in wrong[1:] if wrong_key(llm) != wrong_key(wrong[0]))
    # a wrong judge whose answer no agent gave follows the (right) majority; a wrong judge that
    # was an agent keeps its own answer; a right judge keeps the right answer
    for judge, expect_correct in ((outsider, True), (wrong[0], False), (right[2], True)):
        plan = Plan("Debate", (role,) * 3, agents, decision_llm=judge)
        trace = await executor.run(
            query.example.query,
            plan,
            query_id=f"{query.id}/{judge}",
            task="gsm8k",
            answer_key=lambda r: answer_key("gsm8k", r),
        )
        for step in trace.steps:  # no agent changed its answer during the debate
            assert step.output == synthesize_reply(
                query.example, step.llm, query.scores[step.llm] == 1.0
            )
        assert evaluate(query.example, trace.final_answer).correct is expect_correct, judge


async def test_rules_are_pluggable_and_named_in_every_output(table, monkeypatch):
    monkeypatch.setattr(rules_module, "_RULES", dict(rules_module._RULES))

    class AlwaysRight:
        name = "always-right"
        description = "always-right: every call replies correctly (an upper bound for tests)."

        def reply(self, call: RuleCall) -> str:
            return synthesize_reply(call.example, call.llm, True)

    register_rule(AlwaysRight())
    assert "always-right" in rule_names() and "stubborn" in rule_names()
    query, _, wrong = _disagreeing_query(table)
    pool = replay_pool(rule="always-right")
    result = await pool.chat(wrong[0], engine_messages(query.example))
    assert evaluate(query.example, result.text).correct
    info = backend_info(pool)
    assert info["collaboration_rule"] == "always-right"
    assert info["base_url"] == "replay://llmrouter?rule=always-right"
    with pytest.raises(ConfigError, match="stubborn"):
        replay_specs(rule="does-not-exist")
    with pytest.raises(ConfigError, match="already registered"):
        register_rule(AlwaysRight())
    with pytest.raises(ConfigError, match="agent"):
        await replay_pool().chat(
            wrong[0], engine_messages(query.example), context=CallContext(kind="judge")
        )


# -------------------------------------------------------------------- configuration, info
def test_backend_info_names_backend_rule_and_data(table):
    info = backend_info(replay_pool())
    assert info["backend"] == "replay:llmrouter" and info["collaboration_rule"] == "stubborn"
    assert "decision node" in info["collaboration_rule_description"]
    assert "real BPE tokenizer" in info["token_rule"] and info["latency_s"] == 0.0
    assert info["costs"].startswith("notional")
    assert sorted(info["llms"]) == sorted(table.llm_names)
    for name, digest in info["data_checksums"].items():
        assert digest == hashlib.sha256((resolve_data_dir() / name).read_bytes()).hexdigest()
    assert "outcomes/llmrouter/train.json" in info["data_checksums"]
    assert backend_info("replay://llmrouter?rule=stubborn") == {**info,
                                                                "llms": list(table.llm_names)}
    real = LLMSpec("gpt", "gpt-4o", "https://api.openai.com/v1", 1.0, 1.0, "x", "OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="no replay LLM"):
        backend_info([real])
    mixed = replay_specs()[:1] + replay_specs(latency_s=0.5)[1:2]
    with pytest.raises(ConfigError, match="configurations"):
        backend_info(mixed)


def test_bad_replay_configuration_fails_before_any_call():
    good = replay_specs()[0]
    unknown_model = LLMSpec("x", "acme/unknown-7b", good.base_url, 0.1, 0.1, "x")
    with pytest.raises(ConfigError, match="has no recordings in the llmrouter world"):
        LLMPool([unknown_model])
    for url, message in (
        ("replay://llmrouter?temperature=1", "unknown parameter"),
        ("replay://other", "unknown replay world"),
        ("replay://llmrouter?latency_s=fast", "latency_s"),
        ("replay://llmrouter?rule=nope", "unknown collaboration rule"),
    ):
        with pytest.raises(ConfigError, match=message):
            LLMPool([LLMSpec("x", good.model, url, 0.1, 0.1, "x")])
    # a recorded name works as model id too
    LLMPool([LLMSpec("x", "gemma-2-9b-it", "replay://llmrouter", 0.1, 0.1, "x")])


async def test_injected_latency_is_waited_concurrently(table):
    pool = replay_pool(latency_s=0.3)
    query = table.task_queries("mmlu")[0]
    started = time.perf_counter()
    results = await asyncio.gather(
        *(pool.chat(llm, engine_messages(query.example)) for llm in table.llm_names[:6])
    )
    elapsed = time.perf_counter() - started
    assert all(r.record.latency_s >= 0.3 for r in results)
    assert elapsed < 6 * 0.3  # concurrent, not one after another
