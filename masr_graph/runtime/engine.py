"""Execution engine: runs a routed multi-agent system (a :class:`~masr_graph.plan.Plan`) on a
query over an :class:`~masr_graph.llm.pool.LLMPool` and returns a
:class:`~masr_graph.runtime.trace.Trace`.

For each round ``r`` of the plan's topology:

1. spatial edges are sampled from the topology's probabilities (or ``sigmoid(plan.edge_logits)``
   on the edges the topology allows), each uncertain edge independently, with a
   ``random.Random`` seeded by ``(seed, query_id, sample_index, r)`` so a run is reproducible;
   the sampled graph is checked to be a DAG with networkx;
2. temporal edges (``r >= 1``) show round ``r-1`` outputs to round ``r`` agents;
3. agents run in topological order, every agent of one level (``networkx.topological_generations``)
   concurrently; each agent's prompt holds its role's system prompt, the mode's instruction, the
   query, the round's instruction, the outputs it may see (labelled with the peer's agent index and
   role; a failed peer appears as a failure note, never as an empty answer) and the output format.

After the last round every agent's final output feeds the decision node
(:mod:`masr_graph.runtime.decision`). The log-probability of the sampled spatial edges is returned
in the trace so edge templates can be learned.

Failures: an agent whose call fails for good (:class:`~masr_graph.errors.LLMCallError`) is
recorded in the trace with its error and the run carries on.
:class:`~masr_graph.errors.BudgetExceeded` is never swallowed: it stops the query (and
:meth:`MASExecutor.run_many` stops the batch, see there). Configuration errors (unknown topology,
role, LLM, agent count) are raised before any call is made.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import random
import re
import time
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Iterable, Mapping, Optional, Sequence

import networkx as nx
from tqdm.auto import tqdm

from ..errors import (
    BatchBudgetExceeded,
    BudgetExceeded,
    ConfigError,
    LLMCallError,
    RoleError,
    TopologyError,
    UnknownLLMError,
)
from ..llm.types import CallContext, Message
from ..plan import Plan
from .decision import AnswerKey, majority_vote, final_refer_messages
from .roles import Role, get_role
from .sandbox import arun_python
from .topology import Topology, get_topology
from .trace import AgentStep, DecisionStep, RoundRecord, Slot, Trace

if TYPE_CHECKING:
    from ..llm.pool import LLMPool

EdgeProbs = list[list[float]]

# What peers read of a post-processing result is capped so one verbose program cannot flood
# every later prompt; the trace keeps the sandbox's full result.
_SHARED_STREAM_CHARS = 2000
_PYTHON_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)


def edge_probabilities(topology: Topology, plan: Plan) -> EdgeProbs:
    """Spatial edge probabilities the engine samples from for ``plan``: ``k x k``.

    The topology's ``spatial_probs(k)``, or, when the plan carries ``edge_logits``,
    ``sigmoid(edge_logits[i][j])`` on every edge the topology allows (``p > 0``); edges the
    topology forbids stay at 0 so the sampled graph remains a DAG.
    """
    probs = topology.spatial_probs(plan.k)
    if plan.edge_logits is None:
        return [list(map(float, row)) for row in probs]
    return [
        [_sigmoid(plan.edge_logits[i][j]) if probs[i][j] > 0 else 0.0 for j in range(plan.k)]
        for i in range(plan.k)
    ]


def _sigmoid(x: float) -> float:
    # Written per sign so that exp() never overflows for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def sample_spatial_edges(
    probs: EdgeProbs, rng: random.Random
) -> tuple[list[tuple[int, int]], float]:
    """Sample each edge ``i -> j`` independently with probability ``probs[i][j]``.

    Edges are visited row by row (``i`` then ``j``); one uniform draw is consumed per uncertain
    edge (``0 < p < 1``), so the sample is a pure function of ``probs`` and the generator's state.

    Returns:
        ``(edges, log_prob)``: the sampled edges and ``sum log p`` over sampled uncertain edges
        plus ``sum log(1 - p)`` over unsampled ones (certain edges contribute nothing).
    """
    edges: list[tuple[int, int]] = []
    log_prob = 0.0
    for i, row in enumerate(probs):
        for j, p in enumerate(row):
            if p >= 1.0:
                edges.append((i, j))
            elif p > 0.0:
                if rng.random() < p:
                    edges.append((i, j))
                    log_prob += math.log(p)
                else:
                    log_prob += math.log1p(-p)
    return edges, log_prob


def round_rng(seed: int, query_id: str, sample_index: int, round: int) -> random.Random:
    """The generator that samples round ``round``'s edges; stable across processes and Python
    versions (``hash()`` of a string is not)."""
    digest = hashlib.sha256(f"{seed}\x1f{query_id}\x1f{sample_index}\x1f{round}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def extract_last_python_block(text: str) -> Optional[str]:
    """Code of the last fenced ```python (or ```py) block of ``text``, ``None`` if there is none."""
    blocks = _PYTHON_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def _clip(text: str) -> str:
    if len(text) <= _SHARED_STREAM_CHARS:
        return text
    cut = len(text) - _SHARED_STREAM_CHARS
    return f"{text[:_SHARED_STREAM_CHARS]}\n... [{cut} more characters]"


def _render_run_python(result: dict) -> str:
    if result.get("code") is None:
        return "[run_python: the reply has no ```python block, nothing was executed]"
    status = "succeeded" if result["ok"] else f"failed ({result.get('failure') or 'error'})"
    parts = [f"[run_python: executing the last ```python block {status}]"]
    if result.get("stdout"):
        parts.append(f"stdout:\n{_clip(result['stdout'])}")
    if result.get("stderr"):
        parts.append(f"stderr:\n{_clip(result['stderr'])}")
    return "\n".join(parts)


def failure_note(agent: int, role: str) -> str:
    """What peers are shown in place of the output of an agent whose call failed."""
    return f"[agent {agent} ({role}) failed and produced no output]"


@dataclass(frozen=True)
class QueryItem:
    """One query of a :meth:`MASExecutor.run_many` batch. ``None`` fields take the batch-wide
    value given to ``run_many``.

    Args:
        query: the query text.
        plan: the routed multi-agent system.
        query_id: unique id of the query (keys the edge sampling and the ledger).
        task: task name (recorded in the trace).
        answer_key: the benchmark's answer-key function for majority votes.
        output_format: overrides every role's output format (the task's required format).
        sample_index: which repeated sample of the query this is.
    """

    query: str
    plan: Plan
    query_id: str
    task: Optional[str] = None
    answer_key: Optional[AnswerKey] = None
    output_format: Optional[str] = None
    sample_index: int = 0


@dataclass(frozen=True)
class _Resolved:
    """A plan with its names looked up, so a run fails before its first call on a bad name."""

    plan: Plan
    topology: Topology
    roles: tuple[Role, ...]
    decision_llm: str


@dataclass
class _Run:
    """State of one query's execution."""

    resolved: _Resolved
    query: str
    query_id: str
    output_format: Optional[str]
    seed: int
    sample_index: int
    trace: Trace


class MASExecutor:
    """Runs routed multi-agent systems over an LLM pool (see the module docstring).

    Args:
        pool: the :class:`~masr_graph.llm.pool.LLMPool` every call goes through (budget, cache,
            retries and per-LLM concurrency limits live there).
        roles: role profiles by name; ``None`` looks names up with
            :func:`masr_graph.runtime.roles.get_role`.
        max_concurrent_queries: most queries :meth:`run_many` runs at once.
        max_tokens: completion cap per call.
        temperature: sampling temperature (a role's own ``temperature`` overrides it).
        keep_messages: record the full messages of every call in the trace (large; turn off for
            big training runs).
        serial: run every call one after another, queries included (the MasRouter reference's
            behaviour; the benchmark baseline).
        sandbox_timeout_s: wall-clock limit of a ``run_python`` post-processing step.
        sandbox_memory_mb: memory limit of a ``run_python`` post-processing step.
        max_concurrent_sandboxes: most ``run_python`` steps running at once (default: the CPU
            count; more would make correct snippets time out under contention).
        run_id: tag put in every call's :class:`~masr_graph.llm.types.CallContext`.
    """

    def __init__(
        self,
        pool: "LLMPool",
        *,
        roles: Optional[Mapping[str, Role]] = None,
        max_concurrent_queries: int = 64,
        max_tokens: int = 512,
        temperature: float = 0.0,
        keep_messages: bool = True,
        serial: bool = False,
        sandbox_timeout_s: float = 10.0,
        sandbox_memory_mb: int = 512,
        max_concurrent_sandboxes: Optional[int] = None,
        run_id: str = "",
    ):
        max_concurrent_sandboxes = max_concurrent_sandboxes or os.cpu_count() or 1
        for what, value in (
            ("max_concurrent_queries", max_concurrent_queries),
            ("max_tokens", max_tokens),
            ("max_concurrent_sandboxes", max_concurrent_sandboxes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{what} must be an integer >= 1 (got {value!r})")
        if not 0.0 <= temperature <= 2.0:
            raise ConfigError(f"temperature must be in [0, 2] (got {temperature!r})")
        self.pool = pool
        self.roles = dict(roles) if roles is not None else None
        self.max_concurrent_queries = max_concurrent_queries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.keep_messages = keep_messages
        self.serial = serial
        self.sandbox_timeout_s = sandbox_timeout_s
        self.sandbox_memory_mb = sandbox_memory_mb
        self.max_concurrent_sandboxes = max_concurrent_sandboxes
        self.run_id = run_id
        # One semaphore per event loop: an asyncio.Semaphore must not be shared across loops.
        self._sandbox_slots: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------------------ resolving
    def _role(self, name: str) -> Role:
        if self.roles is None:
            return get_role(name)
        try:
            return self.roles[name]
        except KeyError:
            raise RoleError(
                f"unknown role {name!r}; this executor's roles: {', '.join(sorted(self.roles))}"
            ) from None

    def resolve(self, plan: Plan) -> _Resolved:
        """Look up the plan's topology, roles and LLMs.

        Raises:
            TopologyError: unknown mode or an agent count the mode does not take.
            RoleError: unknown role, or a post-processing step the runtime lacks.
            UnknownLLMError: an LLM (or the decision LLM) is not in the pool.
        """
        topology = get_topology(plan.mode)
        topology.check_agents(plan.k)
        roles = tuple(self._role(name) for name in plan.roles)
        for role in roles:
            if role.postprocess not in (None, *_POSTPROCESSORS):
                raise RoleError(
                    f"role {role.name!r} asks for post-processing {role.postprocess!r}, which this "
                    f"runtime does not implement; implemented: {', '.join(_POSTPROCESSORS)}"
                )
        decision_llm = plan.decision_llm or plan.llms[0]
        for llm in (*plan.llms, decision_llm):
            if llm not in self.pool.specs:
                raise UnknownLLMError(llm, list(self.pool.specs))
        return _Resolved(plan, topology, roles, decision_llm)

    # -------------------------------------------------------------------------------- running
    async def run(
        self,
        query: str,
        plan: Plan,
        *,
        query_id: str,
        task: Optional[str] = None,
        answer_key: Optional[AnswerKey] = None,
        output_format: Optional[str] = None,
        seed: int = 0,
        sample_index: int = 0,
    ) -> Trace:
        """Run ``plan`` on ``query``.

        Args:
            query: the query text.
            plan: the routed multi-agent system.
            query_id: id of the query; with ``seed`` and ``sample_index`` it keys edge sampling.
            task: task name, recorded in the trace (default: ``plan.task``).
            answer_key: the benchmark's answer-key function for majority votes (``None``: vote
                on whitespace-normalised whole outputs).
            output_format: the task's required output format; overrides the roles' formats and
                is given to the final-refer node (default: the first agent's role format).
            seed: seed of the edge sampling; also the LLMs' sampling seed when the temperature
                is above 0 (at temperature 0 it is left out of the request, so the response
                cache serves identical prompts whatever the seed).
            sample_index: which repeated sample of this query this is.

        Returns:
            The :class:`Trace`; ``trace.final_answer`` is the decision node's output.

        Raises:
            BudgetExceeded: the pool refused a call; nothing of this query is returned.
            TopologyError, RoleError, UnknownLLMError: the plan names something unknown.
        """
        resolved = self.resolve(plan)
        return await self._execute(
            resolved, query, query_id, task, answer_key, output_format, seed, sample_index
        )

    async def run_many(
        self,
        items: Iterable[QueryItem],
        *,
        answer_key: Optional[AnswerKey] = None,
        output_format: Optional[str] = None,
        seed: int = 0,
        progress: bool = False,
    ) -> list[Trace]:
        """Run many queries, at most ``max_concurrent_queries`` at a time (one at a time when
        ``serial``), returning traces in input order.

        Every plan is resolved before the first call, so a bad name fails the batch at no cost;
        ``(query_id, sample_index)`` pairs must be unique.
        Agent failures are recorded in their trace and never stop the batch.

        Budget: when the pool raises :class:`BudgetExceeded` for any query, no further query is
        started, the queries already running are allowed to finish (their calls were admitted
        within the budget), and :class:`~masr_graph.errors.BatchBudgetExceeded` is raised; its
        ``results`` list holds the finished traces in input order with ``None`` for the queries
        that did not finish. Any other exception cancels the running queries and propagates.

        Args:
            items: the queries.
            answer_key: batch-wide answer-key function (an item's own takes precedence).
            output_format: batch-wide output format (an item's own takes precedence).
            seed: seed of the edge sampling.
            progress: show a tqdm progress bar.

        Raises:
            BatchBudgetExceeded: the budget cap stopped the batch (carries the finished traces).
            ConfigError: a duplicate ``(query_id, sample_index)``; also the errors of
                :meth:`resolve`.
        """
        items = list(items)
        resolved = [self.resolve(item.plan) for item in items]
        seen: set[tuple[str, int]] = set()
        for item in items:
            key = (item.query_id, item.sample_index)
            if key in seen:
                # Same id and sample would sample the same edges and merge in the ledger.
                raise ConfigError(
                    f"query_id {item.query_id!r} with sample_index {item.sample_index} appears "
                    "twice in the batch; give repeated samples distinct sample_index values"
                )
            seen.add(key)
        traces: list[Optional[Trace]] = [None] * len(items)
        stop: list[BudgetExceeded] = []
        slots = asyncio.Semaphore(1 if self.serial else self.max_concurrent_queries)
        bar = tqdm(total=len(items), disable=not progress, desc="queries", unit="query")

        async def one(index: int) -> None:
            item = items[index]
            async with slots:
                if stop:
                    return
                try:
                    traces[index] = await self._execute(
                        resolved[index],
                        item.query,
                        item.query_id,
                        item.task,
                        item.answer_key or answer_key,
                        item.output_format or output_format,
                        seed,
                        item.sample_index,
                    )
                except BudgetExceeded as exc:
                    stop.append(exc)
                    return
            bar.update()

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(items))]
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # re-raises the first unexpected exception, if any
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
        if stop:
            raise BatchBudgetExceeded(stop[0], traces)
        return traces  # type: ignore[return-value]  # every slot is filled when nothing stopped

    async def _execute(
        self,
        resolved: _Resolved,
        query: str,
        query_id: str,
        task: Optional[str],
        answer_key: Optional[AnswerKey],
        output_format: Optional[str],
        seed: int,
        sample_index: int,
    ) -> Trace:
        started = time.perf_counter()
        plan, topology = resolved.plan, resolved.topology
        trace = Trace(
            query_id=query_id,
            query=query,
            plan=plan.to_dict(),
            task=task if task is not None else plan.task,
            seed=seed,
            sample_index=sample_index,
        )
        state = _Run(resolved, query, query_id, output_format, seed, sample_index, trace)
        probs = edge_probabilities(topology, plan)
        working = topology.working_agents(plan.k)
        previous: dict[int, AgentStep] = {}
        for round_index in range(topology.rounds):
            edges, log_prob = sample_spatial_edges(
                probs, round_rng(seed, query_id, sample_index, round_index)
            )
            graph = nx.DiGraph()
            graph.add_nodes_from(range(working))
            graph.add_edges_from(edges)
            if not nx.is_directed_acyclic_graph(graph):
                raise TopologyError(
                    f"topology {topology.name!r}: sampled spatial edges {edges} contain a cycle"
                )
            temporal = topology.temporal_edges(working) if round_index > 0 else []
            trace.rounds.append(RoundRecord(round_index, edges, list(temporal), log_prob))
            trace.edge_log_prob += log_prob
            current: dict[int, AgentStep] = {}
            for level in nx.topological_generations(graph):
                jobs = [
                    functools.partial(
                        self._run_agent,
                        state,
                        agent,
                        round_index,
                        temporal=[previous[i] for i, j in temporal if j == agent],
                        spatial=[current[i] for i in sorted(graph.predecessors(agent))],
                    )
                    for agent in sorted(level)
                ]
                for step in await self._run_level(jobs):
                    current[step.agent] = step  # type: ignore[index]  # agent steps have an index
                    trace.steps.append(step)
            previous = current
        await self._decide(state, [previous[a] for a in range(working)], answer_key)
        trace.wall_s = time.perf_counter() - started
        return trace

    async def _run_level(self, jobs: list[Callable[[], Awaitable[AgentStep]]]) -> list[AgentStep]:
        """Run one level's agents (concurrently unless ``serial``). Every started job runs to its
        end before an exception (e.g. BudgetExceeded) is re-raised, so no admitted call is left
        dangling."""
        if self.serial:
            return [await job() for job in jobs]
        results = await asyncio.gather(*(job() for job in jobs), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _agent_messages(
        self,
        state: _Run,
        agent: int,
        round_index: int,
        temporal: Sequence[AgentStep],
        spatial: Sequence[AgentStep],
    ) -> list[Message]:
        topology, role = state.resolved.topology, state.resolved.roles[agent]
        system = role.prompt
        if topology.instruction:
            system += "\n\n" + topology.instruction
        parts = [f"Task:\n{state.query}"]
        instruction = topology.round_instruction(round_index, state.resolved.plan.k)
        if instruction:
            parts.append(instruction)
        for heading, group in (
            ("Answers from the previous round", temporal),
            ("Answers of agents before you in this round", spatial),
        ):
            if group:
                blocks = [
                    f"### Agent {peer.agent} ({peer.role})"
                    + (" - your own previous answer" if peer.agent == agent else "")
                    + f"\n{peer.shared_text}"
                    for peer in group
                ]
                parts.append(f"{heading}:\n\n" + "\n\n".join(blocks))
        parts.append(state.output_format or role.output_format)
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    async def _run_agent(
        self,
        state: _Run,
        agent: int,
        round_index: int,
        *,
        temporal: list[AgentStep],
        spatial: list[AgentStep],
    ) -> AgentStep:
        plan, role = state.resolved.plan, state.resolved.roles[agent]
        messages = self._agent_messages(state, agent, round_index, temporal, spatial)
        saw: list[Slot] = [(s.agent, s.round) for s in (*temporal, *spatial)]  # type: ignore[misc]
        step = AgentStep(
            agent=agent,
            role=role.name,
            llm=plan.llms[agent],
            round=round_index,
            saw=saw,
            messages=messages if self.keep_messages else None,
        )
        shown = [*temporal, *spatial]
        previous = next((s for s in temporal if s.agent == agent and s.ok), None)
        context = CallContext(
            query_id=state.query_id,
            agent=agent,
            round=round_index,
            kind="agent",
            role=role.name,
            query=state.query,
            peers=tuple(s.shared_text for s in shown if s.agent != agent and s.ok),
            previous=None if previous is None else previous.shared_text,
            sample_index=state.sample_index,
            run_id=self.run_id,
        )
        temperature = role.temperature if role.temperature is not None else self.temperature
        if not await self._call(step, messages, temperature, state.seed, context):
            step.shared_text = failure_note(agent, role.name)
            return step
        step.shared_text = step.output or ""
        if role.postprocess is not None:
            postprocess = _POSTPROCESSORS[role.postprocess]
            step.postprocess, note = await postprocess(self, step.output or "")
            step.shared_text += "\n\n" + note
        return step

    async def _call(
        self,
        step: AgentStep,
        messages: list[Message],
        temperature: float,
        seed: int,
        context: CallContext,
    ) -> bool:
        """Make the step's LLM call and record it; ``False`` when it failed for good."""
        try:
            result = await self.pool.chat(
                step.llm,
                messages,
                max_tokens=self.max_tokens,
                temperature=temperature,
                seed=seed if temperature > 0 else None,
                context=context,
            )
        except LLMCallError as exc:
            step.error = str(exc)
            step.attempts = exc.attempts
            return False
        step.output = result.text
        step.account(result.record)
        return True

    async def _run_python(self, output: str) -> tuple[dict, str]:
        """The ``run_python`` step: execute the reply's last ```python block in the sandbox.

        Returns:
            The record kept in the trace and the note appended to what peers see."""
        code = extract_last_python_block(output)
        if code is None:
            record = {"name": "run_python", "code": None, "ok": False, "failure": "no python block"}
        else:
            loop = asyncio.get_running_loop()
            slots = self._sandbox_slots.setdefault(
                loop, asyncio.Semaphore(self.max_concurrent_sandboxes)
            )
            async with slots:
                result = await arun_python(
                    code, timeout_s=self.sandbox_timeout_s, memory_mb=self.sandbox_memory_mb
                )
            record = {"name": "run_python", "code": code, **asdict(result)}
        return record, _render_run_python(record)

    async def _decide(
        self, state: _Run, finals: list[AgentStep], answer_key: Optional[AnswerKey]
    ) -> None:
        trace, topology = state.trace, state.resolved.topology
        candidates = [step for step in finals if step.ok]
        decision = DecisionStep(
            method=topology.decision,
            candidates=[s.agent for s in candidates],  # type: ignore[misc]  # agents have indices
        )
        trace.decision = decision
        if topology.decision == "escalate":
            await self._escalate(state, finals, candidates, answer_key)
            return
        if not candidates:
            decision.error = trace.error = (
                f"all {len(finals)} agents failed in the last round; no answer to decide on"
            )
            return
        if len(candidates) == 1:
            decision.method = "identity"
            decision.chosen_agent = candidates[0].agent
            trace.final_answer = candidates[0].output or ""
            return
        if topology.decision == "final_refer":
            call = await self._final_refer(state, candidates)
            decision.call = call
            if call.ok:
                trace.final_answer = call.output or ""
                return
            decision.error = call.error
            decision.fallback = "majority_vote"
        vote = majority_vote([s.output or "" for s in candidates], answer_key)
        decision.keys = [None if key is None else repr(key) for key in vote.keys]
        decision.chosen_agent = candidates[vote.winner].agent
        trace.final_answer = candidates[vote.winner].output or ""

    async def _escalate(
        self,
        state: _Run,
        finals: list[AgentStep],
        candidates: list[AgentStep],
        answer_key: Optional[AnswerKey],
    ) -> None:
        """The ``escalate`` decision: the agents' common answer if every agent answered and all
        answers share one key; otherwise the expert (the last slot) answers the query alone,
        seeing none of the answers, and its answer is final (a failed expert falls back to a
        vote)."""
        trace, decision = state.trace, state.trace.decision
        assert decision is not None
        vote = (majority_vote([s.output or "" for s in candidates], answer_key)
                if candidates else None)
        if vote is not None:
            decision.keys = [None if key is None else repr(key) for key in vote.keys]
        agreed = (vote is not None and len(candidates) == len(finals)
                  and vote.keys[0] is not None and vote.count == len(candidates))
        if agreed:
            decision.method = "unanimous"
            decision.chosen_agent = candidates[0].agent
            trace.final_answer = candidates[0].output or ""
            return
        expert_slot = state.resolved.plan.k - 1
        expert = await self._run_agent(state, expert_slot, 0, temporal=[], spatial=[])
        trace.steps.append(expert)
        decision.method = "escalated"
        if expert.ok:
            decision.chosen_agent = expert_slot
            trace.final_answer = expert.output or ""
            return
        decision.error = expert.error
        if vote is None:
            trace.error = f"every agent and the escalation expert failed: {expert.error}"
            return
        decision.fallback = "majority_vote"
        decision.chosen_agent = candidates[vote.winner].agent
        trace.final_answer = candidates[vote.winner].output or ""

    async def _final_refer(self, state: _Run, candidates: list[AgentStep]) -> AgentStep:
        resolved = state.resolved
        output_format = state.output_format or resolved.roles[0].output_format
        messages = final_refer_messages(
            state.query,
            [(s.agent, s.role, s.shared_text) for s in candidates],  # type: ignore[misc]
            output_format,
            mode=resolved.topology.name,
        )
        step = AgentStep(
            agent=None,
            role="decision",
            llm=resolved.decision_llm,
            round=resolved.topology.rounds,
            saw=[(s.agent, s.round) for s in candidates],  # type: ignore[misc]
            messages=messages if self.keep_messages else None,
        )
        context = CallContext(
            query_id=state.query_id,
            agent=None,
            round=resolved.topology.rounds,
            kind="decision",
            role="decision",
            query=state.query,
            candidates=tuple(s.output or "" for s in candidates),
            sample_index=state.sample_index,
            run_id=self.run_id,
        )
        await self._call(step, messages, self.temperature, state.seed, context)
        return step


# Post-processing steps a role may name (masr_graph.runtime.roles.POSTPROCESSORS), by name.
_POSTPROCESSORS: dict[str, Callable[[MASExecutor, str], Awaitable[tuple[dict, str]]]] = {
    "run_python": MASExecutor._run_python,
}
