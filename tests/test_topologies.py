"""Topologies and the execution engine against a real OpenAI-compatible loopback server.

The responder answers every agent call with a token unique to (query, agent, round), e.g.
``<<q1-a2-r0>>``; reading which tokens appear in the requests the *server received* shows who saw
whom, round by round, independently of what the engine writes in its trace.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import defaultdict
from typing import Any, Optional

import pytest

from loopback_server import LoopbackServer
from masr_graph.errors import (
    BatchBudgetExceeded,
    BudgetExceeded,
    ConfigError,
    RoleError,
    TopologyError,
    UnknownLLMError,
)
from masr_graph.llm import Budget, LLMPool, LLMSpec, ResponseCache
from masr_graph.plan import Plan
from masr_graph.runtime.decision import FINAL_REFER_SYSTEM, majority_vote
from masr_graph.runtime.engine import MASExecutor, QueryItem, edge_probabilities, failure_note
from masr_graph.runtime.roles import Role, get_role
from masr_graph.runtime.topology import (
    Topology,
    get_topology,
    register_topology,
    topology_names,
)
from masr_graph.runtime.trace import Trace

TOKEN = re.compile(r"<<(q[\w-]+?)-a(\d+)-r(\d+)>>")
AGENT_ID = re.compile(r"\[agent-id:(\d+)\]")
QUERY_ID = re.compile(r"\[query:([\w-]+)\]")
BOXED = re.compile(r"\\boxed\{([^}]*)\}")

ROLES = {
    f"Solver{i}": Role(
        name=f"Solver{i}",
        domain="math",
        description=f"test solver {i}",
        prompt=f"You are solver [agent-id:{i}].",
        output_format="End with \\boxed{answer}.",
    )
    for i in range(8)
}
# The loopback server fails every attempt of a request whose last user message holds this
# marker; the engine puts the role's output format at the end of the agent's user message.
ROLES["Broken"] = Role(
    name="Broken",
    domain="math",
    description="a role whose calls are rejected",
    prompt="You are solver [agent-id:9].",
    output_format="[[fault:400]] End with \\boxed{answer}.",
)


def solvers(k: int) -> tuple[str, ...]:
    return tuple(f"Solver{i}" for i in range(k))


class ScriptedLLM:
    """Responder: a unique token per (query, agent, round) for agents, ``FINAL`` for the
    decision node. Rounds are counted per (query, agent): an agent's calls are sequential."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, int], int] = defaultdict(int)
        self.agent_bodies: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.decision_bodies: list[dict[str, Any]] = []
        self.answer: dict[tuple[str, int], str] = {}  # optional extra text per (query, agent)

    def __call__(self, body: dict[str, Any]) -> str:
        system = body["messages"][0]["content"]
        user = body["messages"][-1]["content"]
        if system == FINAL_REFER_SYSTEM:
            self.decision_bodies.append(body)
            return "FINAL " + " ".join(sorted(set(m.group(0) for m in TOKEN.finditer(user))))
        agent = int(AGENT_ID.search(system).group(1))
        query = QUERY_ID.search(user).group(1)
        round_index = self.calls[(query, agent)]
        self.calls[(query, agent)] += 1
        self.agent_bodies[(query, agent, round_index)] = body
        return f"<<{query}-a{agent}-r{round_index}>> " + self.answer.get((query, agent), "")

    def seen(self, query: str, agent: int, round_index: int) -> set[tuple[int, int]]:
        """(agent, round) tokens present in the user message the server received."""
        user = self.agent_bodies[(query, agent, round_index)]["messages"][-1]["content"]
        return {
            (int(m.group(2)), int(m.group(3))) for m in TOKEN.finditer(user) if m.group(1) == query
        }


@pytest.fixture
def scripted():
    return ScriptedLLM()


@pytest.fixture
def server(scripted):
    with LoopbackServer(responder=scripted) as srv:
        yield srv


def loopback_specs(server: LoopbackServer) -> list[LLMSpec]:
    """Two LLMs on the loopback endpoint."""
    return [
        LLMSpec(
            name=name,
            model=f"model-{name}",
            base_url=server.base_url,
            price_in=1.0,
            price_out=2.0,
            description=f"test LLM {name}",
            max_concurrency=64,
        )
        for name in ("m1", "m2")
    ]


def make_pool(server: LoopbackServer) -> LLMPool:
    """One attempt per call, so injected faults fail fast."""
    return LLMPool(loopback_specs(server), max_attempts=1)


@pytest.fixture
async def pool(server):
    async with make_pool(server) as p:
        yield p


def q(query_id: str) -> str:
    return f"[query:{query_id}] What is 6 times 7?"


async def run(
    pool: LLMPool,
    mode: str,
    k: int,
    query_id: str = "q1",
    *,
    roles: Optional[tuple[str, ...]] = None,
    llms: Optional[tuple[str, ...]] = None,
    decision_llm: Optional[str] = None,
    **executor_kwargs: Any,
) -> Trace:
    executor = MASExecutor(pool, roles=ROLES, **executor_kwargs)
    plan = Plan(mode, roles or solvers(k), llms or ("m1",) * k, decision_llm=decision_llm)
    return await executor.run(q(query_id), plan, query_id=query_id)


# ------------------------------------------------------------------ communication graph per mode
def expected_graph(trace: Trace) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """Who-saw-whom as the trace claims it, keyed by (agent, round)."""
    return {(s.agent, s.round): set(s.saw) for s in trace.steps}


def wire_graph(scripted: ScriptedLLM, query: str, k: int, rounds: int):
    return {(a, r): scripted.seen(query, a, r) for a in range(k) for r in range(rounds)}


@pytest.mark.parametrize("mode", ["IO", "CoT"])
async def test_single_agent_io_cot_is_one_call_and_no_decision_call(mode, pool, server, scripted):
    trace = await run(pool, mode, 1)
    assert server.call_count == 1
    assert trace.final_answer.startswith("<<q1-a0-r0>>")
    assert trace.decision.method == "identity" and trace.decision.call is None
    assert wire_graph(scripted, "q1", 1, 1) == {(0, 0): set()}


@pytest.mark.parametrize("mode", ["IO", "CoT"])
async def test_independent_agents_see_nothing_and_are_voted(mode, pool, server, scripted):
    trace = await run(pool, mode, 3)
    assert wire_graph(scripted, "q1", 3, 1) == {(a, 0): set() for a in range(3)}
    assert expected_graph(trace) == {(a, 0): set() for a in range(3)}
    assert server.call_count == 3  # majority vote: no decision call
    assert trace.decision.method == "majority_vote"
    # every output is different, so the tie goes to the earliest agent
    assert trace.decision.chosen_agent == 0 and trace.final_answer.startswith("<<q1-a0-r0>>")
    cot_text = "step by step"
    system = scripted.agent_bodies[("q1", 0, 0)]["messages"][0]["content"]
    assert (cot_text in system) == (mode == "CoT")


async def test_chain_passes_output_to_the_next_agent_only(pool, server, scripted):
    trace = await run(pool, "Chain", 3)
    wire = wire_graph(scripted, "q1", 3, 1)
    assert wire == {(0, 0): set(), (1, 0): {(0, 0)}, (2, 0): {(1, 0)}}
    assert expected_graph(trace) == wire
    assert [r.spatial_edges for r in trace.rounds] == [[(0, 1), (1, 2)]]
    assert len(scripted.decision_bodies) == 1
    decision_user = scripted.decision_bodies[0]["messages"][-1]["content"]
    assert all(f"<<q1-a{a}-r0>>" in decision_user for a in range(3))
    assert trace.final_answer.startswith("FINAL")


async def test_full_connected_agent_j_sees_every_earlier_agent(pool, scripted):
    trace = await run(pool, "FullConnected", 4)
    wire = wire_graph(scripted, "q1", 4, 1)
    assert wire == {(j, 0): {(i, 0) for i in range(j)} for j in range(4)}
    assert expected_graph(trace) == wire


async def test_debate_round_one_sees_all_previous_answers_including_own(pool, server, scripted):
    k = 3
    trace = await run(pool, "Debate", k)
    wire = wire_graph(scripted, "q1", k, 2)
    for a in range(k):
        assert wire[(a, 0)] == set()
        assert wire[(a, 1)] == {(i, 0) for i in range(k)}
    assert expected_graph(trace) == wire
    assert trace.rounds[1].temporal_edges == [(i, j) for i in range(k) for j in range(k)]
    user = scripted.agent_bodies[("q1", 1, 1)]["messages"][-1]["content"]
    assert "Agent 1 (Solver1) - your own previous answer" in user
    assert "disagree" in user  # the debate round instruction
    # the judge sees the last round's answers, not the first round's
    decision_user = scripted.decision_bodies[0]["messages"][-1]["content"]
    assert {(int(m.group(2)), int(m.group(3))) for m in TOKEN.finditer(decision_user)} == {
        (a, 1) for a in range(k)
    }
    assert server.call_count == k * 2 + 1


async def test_reflection_agent_sees_only_its_own_previous_answer_with_critique(
    pool, server, scripted
):
    trace = await run(pool, "Reflection", 2)
    wire = wire_graph(scripted, "q1", 2, 2)
    assert wire == {(0, 0): set(), (1, 0): set(), (0, 1): {(0, 0)}, (1, 1): {(1, 0)}}
    assert expected_graph(trace) == wire
    user = scripted.agent_bodies[("q1", 0, 1)]["messages"][-1]["content"]
    assert "critique" in user and "revised" in user
    assert server.call_count == 4  # majority vote, no judge


async def test_single_agent_reflection_returns_its_revision(pool, server, scripted):
    trace = await run(pool, "Reflection", 1)
    assert server.call_count == 2
    assert trace.final_answer.startswith("<<q1-a0-r1>>")


def test_builtins_come_first_in_file_order_whatever_was_registered_before():
    names = topology_names()
    # this module registered HalfDebateTest at import, before anything looked the names up
    assert names[:7] == ["Chain", "CoT", "Debate", "Escalation", "FullConnected", "IO",
                         "Reflection"]
    assert "HalfDebateTest" in names[6:]
    descriptions = [get_topology(n).description for n in names]
    assert len(set(descriptions)) == len(descriptions)
    with pytest.raises(TopologyError, match="unknown topology 'Nonexistent'; known .*Debate"):
        get_topology("Nonexistent")


# -------------------------------------------------------------------------------- concurrency
async def test_agents_of_a_level_run_concurrently_and_serial_does_not(scripted):
    latency = 0.3
    with LoopbackServer(responder=scripted, latency_s=latency) as srv:
        async with make_pool(srv) as p:
            await run(p, "Debate", 4, "qc")
            concurrent = [r.at for r in srv.received]
            srv.reset()
            await run(p, "Debate", 4, "qs", serial=True)
            serial = [r.at for r in srv.received]
    # concurrent: each level's 4 requests were all sent before the server answered any of them,
    # and each level started only after the previous one was answered
    first, second, judge = concurrent[:4], concurrent[4:8], concurrent[8]
    assert max(first) - min(first) < latency and max(second) - min(second) < latency
    assert min(second) - max(first) >= latency and judge - max(second) >= latency
    # serial: every request waited for the previous answer
    assert len(serial) == 9 and all(b - a >= latency for a, b in itertools.pairwise(serial))


async def test_run_many_bounds_concurrent_queries_and_keeps_order(scripted):
    with LoopbackServer(responder=scripted, latency_s=0.1) as srv:
        async with make_pool(srv) as p:
            executor = MASExecutor(p, roles=ROLES, max_concurrent_queries=4)
            items = [
                QueryItem(q(f"q{i}"), Plan("Chain", solvers(2), ("m1", "m2")), f"q{i}")
                for i in range(8)
            ]
            traces = await executor.run_many(items)
            bodies = srv.requests
    assert [t.query_id for t in traces] == [f"q{i}" for i in range(8)]
    assert all(t.final_answer.startswith("FINAL") for t in traces)
    first_agent = ["[agent-id:0]" in b["messages"][0]["content"] for b in bodies]
    # 4 queries started at once; a 5th only after one of them finished its 3 calls
    assert first_agent[:4] == [True] * 4 and first_agent[4] is False
    assert sum(first_agent) == 8


# ------------------------------------------------------------------------- sampled edges
async def test_edge_log_prob_matches_hand_computation_and_drives_execution(pool, scripted):
    k = 4
    logits = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            logits[i][j] = 0.3 * (i - j) + 0.2 * i  # distinct probabilities, all in (0, 1)
    executor = MASExecutor(pool, roles=ROLES)
    plan = Plan("FullConnected", solvers(k), ("m1",) * k, edge_logits=logits)
    samples = []
    for seed in range(6):
        query_id = f"qe{seed}"
        trace = await executor.run(q(query_id), plan, query_id=query_id, seed=seed)
        edges = set(trace.rounds[0].spatial_edges)
        hand = 0.0
        for i in range(k):
            for j in range(i + 1, k):
                p = 1.0 / (1.0 + math.exp(-logits[i][j]))
                hand += math.log(p) if (i, j) in edges else math.log(1.0 - p)
        assert trace.edge_log_prob == pytest.approx(hand, abs=1e-12)
        assert all(i < j for i, j in edges)  # only edges the topology allows
        # agent j saw exactly its sampled predecessors, on the wire
        for j in range(k):
            assert scripted.seen(query_id, j, 0) == {(i, 0) for i, jj in edges if jj == j}
        samples.append((frozenset(edges), trace.edge_log_prob))
    assert len(set(samples)) > 1  # the sample varies with the seed / query
    again = await executor.run(q("qe0"), plan, query_id="qe0", seed=0)
    assert (frozenset(again.rounds[0].spatial_edges), again.edge_log_prob) == samples[0]


@register_topology
class HalfDebate(Topology):
    name = "HalfDebateTest"
    description = "test: full template with p=0.5 plus debate temporal edges, 3 rounds"
    spatial_pattern = "full"
    spatial_p = 0.5
    temporal_pattern = "others"
    rounds = 3


async def test_uncertain_edges_are_resampled_every_round(pool, scripted):
    k = 4
    plan = Plan("HalfDebateTest", solvers(k), ("m1",) * k)
    assert edge_probabilities(get_topology("HalfDebateTest"), plan) == [
        [0.5 if i < j else 0.0 for j in range(k)] for i in range(k)
    ]
    trace = await MASExecutor(pool, roles=ROLES).run(q("qh"), plan, query_id="qh", seed=3)
    # every one of the 6 free edges contributes log 0.5 per round, sampled or not
    assert trace.edge_log_prob == pytest.approx(3 * 6 * math.log(0.5))
    assert [r.edge_log_prob for r in trace.rounds] == pytest.approx([6 * math.log(0.5)] * 3)
    assert len({tuple(r.spatial_edges) for r in trace.rounds}) > 1  # fresh sample per round
    expected = {
        (j, r): {(i, r) for i, jj in trace.rounds[r].spatial_edges if jj == j}
        | ({(i, r - 1) for i in range(k) if i != j} if r else set())
        for j in range(k)
        for r in range(3)
    }
    assert wire_graph(scripted, "qh", k, 3) == expected


def test_deterministic_topologies_have_zero_edge_log_prob():
    for name in ("Chain", "FullConnected", "Debate"):
        probs = edge_probabilities(get_topology(name), Plan(name, solvers(3), ("m1",) * 3))
        assert all(p in (0.0, 1.0) for row in probs for p in row)


# ------------------------------------------------------------------------- validation
def test_dag_validation_rejects_a_cyclic_spec():
    class Ring(Topology):
        name = "RingTest"
        description = "test: a ring of agents"
        min_agents = 3

        def spatial_probs(self, k):
            return [[1.0 if j == (i + 1) % k else 0.0 for j in range(k)] for i in range(k)]

    with pytest.raises(TopologyError, match=r"RingTest.*k=3.*DAG.*cycle 0 -> 1 -> 2 -> 0"):
        register_topology(Ring)
    with pytest.raises(TopologyError, match="unknown topology 'RingTest'"):
        get_topology("RingTest")


def test_declaration_errors_name_the_value_and_the_allowed_ones():
    class BadDecision(Topology):
        name = "BadDecisionTest"
        description = "test"
        decision = "median"

    with pytest.raises(TopologyError, match="'median'; allowed: final_refer, majority_vote"):
        register_topology(BadDecision)

    class SelfLoop(Topology):
        name = "SelfLoopTest"
        description = "test"

        def spatial_probs(self, k):
            return [[1.0 if i == j else 0.0 for j in range(k)] for i in range(k)]

    with pytest.raises(TopologyError, match="self-loop"):
        register_topology(SelfLoop)

    class Clash(Topology):
        name = "Debate"
        description = "test"

    with pytest.raises(TopologyError, match="already registered"):
        register_topology(Clash)
    assert type(get_topology("Debate")).__name__ == "Debate"


async def test_bad_plans_fail_before_any_call(pool, server):
    executor = MASExecutor(pool, roles=ROLES)
    with pytest.raises(TopologyError, match="'Debate' takes at least 2 agents \\(got k=1\\)"):
        await executor.run("x", Plan("Debate", solvers(1), ("m1",)), query_id="b1")
    with pytest.raises(RoleError, match="unknown role 'Nobody'"):
        await executor.run("x", Plan("IO", ("Nobody",), ("m1",)), query_id="b2")
    with pytest.raises(UnknownLLMError, match="unknown LLM 'gpt-x'; the pool has: m1, m2"):
        await executor.run(
            "x", Plan("Chain", solvers(2), ("m1", "m1"), decision_llm="gpt-x"), query_id="b3"
        )
    items = [
        QueryItem(q("ok"), Plan("IO", solvers(1), ("m1",)), "ok"),
        QueryItem(q("bad"), Plan("Nope", solvers(1), ("m1",)), "bad"),
    ]
    with pytest.raises(TopologyError, match="unknown topology 'Nope'"):
        await executor.run_many(items)
    twice = [QueryItem(q("d"), Plan("IO", solvers(1), ("m1",)), "d")] * 2
    with pytest.raises(ConfigError, match="'d' with sample_index 0 appears twice"):
        await executor.run_many(twice)
    assert server.call_count == 0


# ----------------------------------------------------------------------------- failures
async def test_failed_agent_is_recorded_and_peers_see_the_failure(pool, scripted):
    roles = ("Solver0", "Broken", "Solver2")
    trace = await run(pool, "Chain", 3, roles=roles)
    broken = trace.step(1, 0)
    assert broken.output is None and not broken.ok
    assert "HTTP 400" in broken.error or "400" in broken.error
    assert broken.shared_text == failure_note(1, "Broken")
    # agent 2 was told agent 1 failed (it did not get an empty answer)
    user = scripted.agent_bodies[("q1", 2, 0)]["messages"][-1]["content"]
    assert failure_note(1, "Broken") in user
    assert trace.decision.candidates == [0, 2]
    decision_user = scripted.decision_bodies[0]["messages"][-1]["content"]
    assert "<<q1-a0-r0>>" in decision_user and "<<q1-a2-r0>>" in decision_user
    assert [s.agent for s in trace.failed_steps] == [1]
    assert trace.ok and trace.totals()["failed_calls"] == 1


async def test_all_agents_failing_gives_an_error_not_an_empty_success(pool, server):
    trace = await run(pool, "IO", 2, roles=("Broken", "Broken"))
    assert not trace.ok and "all 2 agents failed" in trace.error
    assert trace.final_answer == ""


async def test_final_refer_failure_falls_back_to_majority_vote(server, scripted):
    def judge_down(body):
        if body["messages"][0]["content"] == FINAL_REFER_SYSTEM:
            raise RuntimeError("judge unavailable")  # the server answers HTTP 500
        return scripted(body)

    server.responder = judge_down
    async with make_pool(server) as p:
        trace = await run(p, "Chain", 2)
    assert trace.decision.method == "final_refer" and trace.decision.fallback == "majority_vote"
    assert not trace.decision.call.ok and "500" in trace.decision.call.error
    assert trace.final_answer.startswith("<<q1-a0-r0>>")
    assert trace.ok


# ----------------------------------------------------------------------------- decisions
def test_majority_vote_rules():
    key = lambda text: m.group(1) if (m := BOXED.search(text)) else None  # noqa: E731
    vote = majority_vote([r"\boxed{4}", r"\boxed{5}", "no answer", r"\boxed{5}"], key)
    assert vote.winner == 1 and vote.count == 2 and vote.keys == ("4", "5", None, "5")
    tie = majority_vote(["x", r"\boxed{7}", r"\boxed{3}", r"\boxed{3}", r"\boxed{7}"], key)
    assert tie.winner == 1  # 7 and 3 tie; 7 occurs first
    assert majority_vote(["a", "b"], key).winner == 0  # no keys: the first output
    assert majority_vote(["a  b", "c", "a b"]).winner == 0  # default key: normalised text
    with pytest.raises(ValueError):
        majority_vote([], key)


async def test_majority_vote_end_to_end_uses_the_benchmark_key(pool, server, scripted):
    key = lambda text: m.group(1) if (m := BOXED.search(text)) else None  # noqa: E731
    for agent, answer in enumerate([r"\boxed{41}", r"\boxed{42}", r"\boxed{42}"]):
        scripted.answer[("qv", agent)] = answer
    executor = MASExecutor(pool, roles=ROLES)
    trace = await executor.run(
        q("qv"), Plan("CoT", solvers(3), ("m1", "m2", "m1")), query_id="qv", answer_key=key
    )
    assert trace.decision.chosen_agent == 1
    assert trace.decision.keys == ["'41'", "'42'", "'42'"]
    assert trace.final_answer == r"<<qv-a1-r0>> \boxed{42}"
    assert server.call_count == 3


async def test_final_refer_runs_on_the_decision_llm_with_decision_context(pool, scripted):
    trace = await run(pool, "Debate", 2, llms=("m1", "m1"), decision_llm="m2")
    body = scripted.decision_bodies[0]
    assert body["model"] == "model-m2"
    assert "What is 6 times 7?" in body["messages"][-1]["content"]
    assert "End with \\boxed{answer}." in body["messages"][-1]["content"]
    assert trace.decision.call.llm == "m2" and trace.decision.call.saw == [(0, 1), (1, 1)]
    assert trace.final_answer == "FINAL <<q1-a0-r1>> <<q1-a1-r1>>"
    records = [r for r in pool.ledger.records if r.kind == "decision"]
    assert len(records) == 1 and records[0].agent is None and records[0].llm == "m2"
    # default: the first agent's LLM
    trace = await run(pool, "Chain", 2, "q2", llms=("m2", "m1"))
    assert trace.decision.call.llm == "m2"


# ------------------------------------------------------------------------------ the trace
async def test_trace_round_trips_through_json_and_accounts_costs(pool, server):
    trace = await run(pool, "Debate", 3, roles=("Solver0", "Broken", "Solver2"))
    restored = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
    assert restored == trace
    step = trace.step(0, 1)
    assert step.messages[0]["role"] == "system" and step.prompt_tokens > 0
    assert step.completion_tokens > 0 and step.cost_usd == pytest.approx(
        (step.prompt_tokens * 1.0 + step.completion_tokens * 2.0) / 1e6
    )
    assert step.attempts == 1 and step.latency_s > 0 and not step.cached
    totals = trace.totals()
    ledger_cost = sum(r.cost_usd for r in pool.ledger.records)
    assert totals["cost_usd"] == pytest.approx(ledger_cost)
    assert totals["calls"] == len(pool.ledger.records) == server.call_count == 7


async def test_cached_rerun_costs_nothing_and_reports_what_it_saved(server, tmp_path):
    async with ResponseCache(tmp_path / "cache.sqlite") as cache:
        async with LLMPool(loopback_specs(server), cache=cache, max_attempts=1) as p:
            first = await run(p, "Chain", 2)
            calls = server.call_count
            again = await run(p, "Chain", 2)
    assert server.call_count == calls == 3  # the rerun was served from the cache
    assert again.final_answer == first.final_answer
    assert all(s.cached for s in again.steps) and again.decision.call.cached
    assert first.cost_usd > 0 and again.cost_usd == 0.0
    assert again.would_have_cost_usd == pytest.approx(first.cost_usd)
    assert again.totals()["cached_calls"] == 3


async def test_keep_messages_false_omits_messages(pool):
    trace = await run(pool, "Chain", 2, keep_messages=False)
    assert all(s.messages is None for s in trace.steps) and trace.decision.call.messages is None


# ------------------------------------------------------------------------------- budget
async def test_budget_stop_keeps_finished_traces_and_starts_nothing_more(server):
    # Each IO call reserves its worst case (512 completion tokens x $1/M = $0.000512) and really
    # costs 1 or 2 completion tokens, so the cap admits exactly a few calls, then refuses.
    specs = [
        LLMSpec(
            name="m1",
            model="cheap",
            base_url=server.base_url,
            price_in=0.0,
            price_out=1.0,
            description="test",
        )
    ]
    budget = Budget(0.000512 + 0.0000075)
    async with LLMPool(specs, budget=budget, max_attempts=1) as p:
        executor = MASExecutor(p, roles=ROLES, max_concurrent_queries=1)
        items = [QueryItem(q(f"b{i}"), Plan("IO", solvers(1), ("m1",)), f"b{i}") for i in range(10)]
        with pytest.raises(BatchBudgetExceeded) as info:
            await executor.run_many(items)
    results = info.value.results
    assert isinstance(info.value, BudgetExceeded)
    finished = [r for r in results if r is not None]
    # spent <= $0.0000075 leaves room for one more reservation: 8 calls of $0.000001 each
    assert len(finished) == 8
    assert results[: len(finished)] == finished  # in order, the rest did not finish
    assert all(t.ok and t.final_answer for t in finished)
    assert server.completed_count == len(finished)  # nothing started after the stop
    assert budget.spent_usd <= budget.max_usd
    assert f"{len(finished)} of 10 queries finished" in str(info.value)


# ------------------------------------------------------------------------ run_python postprocess
async def test_run_python_postprocess_result_is_shared_and_recorded(server, scripted):
    coder = Role(
        name="Coder",
        domain="code",
        description="writes and runs code",
        prompt="You are solver [agent-id:0].",
        output_format="Answer with one ```python block.",
        postprocess="run_python",
    )
    roles = {"Coder": coder, "Solver1": ROLES["Solver1"]}

    def respond(body):
        text = scripted(body)
        if "[agent-id:0]" in body["messages"][0]["content"]:
            return text + "\n```python\nprint(6 * 7)\nprint('x' + 1)\n```"
        return text

    server.responder = respond
    async with make_pool(server) as p:
        executor = MASExecutor(p, roles=roles)
        trace = await executor.run(
            q("qp"), Plan("Chain", ("Coder", "Solver1"), ("m1", "m1")), query_id="qp"
        )
    coder_step = trace.step(0, 0)
    result = coder_step.postprocess
    assert result["name"] == "run_python" and result["ok"] is False
    assert result["stdout"].strip() == "42" and "TypeError" in result["stderr"]
    user = scripted.agent_bodies[("qp", 1, 0)]["messages"][-1]["content"]
    assert "42" in user and "TypeError" in user and "run_python" in user
    # the final answer of the coder stays its own reply (the evaluator extracts code from it)
    assert "run_python" not in coder_step.output


# ------------------------------------------------------------------- built-in roles, prompts
async def test_prompt_layout_with_the_installed_roles(pool, server):
    server.responder = lambda body: "reasoning... \\boxed{42}"
    plan = Plan("Chain", ("Algebra Specialist", "Solution Verifier"), ("m1", "m2"))
    trace = await MASExecutor(pool).run("What is 6 times 7?", plan, query_id="r1")
    chain = get_topology("Chain")
    for agent, name in enumerate(plan.roles):
        role = get_role(name)
        system, user = (m["content"] for m in server.requests[agent]["messages"])
        assert system == f"{role.prompt}\n\n{chain.instruction}"
        assert user.startswith("Task:\nWhat is 6 times 7?") and user.endswith(role.output_format)
    second_user = server.requests[1]["messages"][-1]["content"]
    assert "### Agent 0 (Algebra Specialist)\nreasoning... \\boxed{42}" in second_user
    assert trace.steps[1].messages == server.requests[1]["messages"]


async def test_an_unexpected_error_in_one_query_stops_the_batch(pool):
    def answer_key(text):
        if "qx2" in text:
            raise ValueError("key function bug")
        return None

    executor = MASExecutor(pool, roles=ROLES)
    items = [
        QueryItem(q(f"qx{i}"), Plan("IO", solvers(2), ("m1", "m1")), f"qx{i}") for i in range(4)
    ]
    with pytest.raises(ValueError, match="key function bug"):
        await executor.run_many(items, answer_key=answer_key)
