"""The plan library of one (world, pool, task): the candidate multi-agent systems that the best
fixed plan is chosen from and that MasRouter's warm start learns to choose among, and their
executed outcomes.

Which plans (:func:`build_library`), with the task's generalist role in every slot (on recorded
worlds a role changes only the prompt's wording, hence its length and cost; with real LLMs,
MasRouter's own role stage staffs plans outside the library):

* every LLM alone (IO);
* every fixed mode (Chain, FullConnected, Debate, Reflection, CoT, and any user-added mode) with
  three copies of the best single LLM on the training queries;
* majority votes (IO) of three distinct LLMs, and of five, over the *team LLMs*;
* debates of three distinct team LLMs;
* escalation teams: two or three of the cheaper team LLMs answer, one more LLM (any team LLM, or
  one of the pool's :data:`ESCALATION_EXPERTS` most accurate) answers only when they disagree.

The team LLMs are the pool's LLMs on the accuracy–cost Pareto front of the training queries plus
the most accurate ones, at most :data:`MAX_TEAM_LLMS`, so the library stays a few hundred plans
even for a pool of 43. In a large pool the front alone fills them from its cheap end, which
would leave the strongest LLMs out of every team; an escalation pays its expert only where the
cheap voters disagree (on ZeroEval GSM8K's training and validation queries: 6–12 % of them for
the ``paper5`` pool's escalations, 11–50 % for the ``all`` pool's, whose cheapest voters are
weaker), so there the strongest LLMs can be worth their price, and they stay available as
experts.

Outcomes (:class:`OutcomeStore`) are kept per (plan, query) in SQLite next to the run, so a
rerun executes only what is missing; they are the same executions any method pays for on real
endpoints (identical agent prompts across plans are answered by the response cache). The
executions can be split into shards (:func:`library_shard`) that run in parallel, each writing
its own file (:func:`outcome_files`), so no two processes — possibly on two hosts of a shared
file system — ever write one SQLite database.
"""
from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from masr_graph.errors import BatchBudgetExceeded
from masr_graph.plan import Plan
from masr_graph.router.library import LibraryOutcomes
from masr_graph.runtime.topology import get_topology, topology_names

from ..tasks.datasets import Example
from .baselines import generalist_role
from .pipeline import Pipeline

MAX_TEAM_LLMS = 8
"""Most LLMs combined into teams (votes, debates, escalations)."""
ESCALATION_EXPERTS = 2
"""The pool's most accurate LLMs (on the training queries) that escalations may ask, team LLMs
or not."""
TEAM_SIZE = 3
LARGE_VOTE = 5


def plan_key(plan: Plan) -> str:
    """A plan's stable identity (mode, roles, LLMs; display probabilities left out)."""
    data = plan.to_dict()
    data.pop("probs", None)
    return json.dumps(data, sort_keys=True)


@dataclass(frozen=True)
class SingleOutcomes:
    """Accuracy and mean cost of each LLM alone on the training queries."""

    accuracy: dict[str, float]
    cost: dict[str, float]

    def pareto_front(self) -> list[str]:
        """LLMs no other LLM beats on both accuracy and cost, cheapest first."""
        front, best = [], -1.0
        for llm in sorted(self.cost, key=lambda name: (self.cost[name], -self.accuracy[name])):
            if self.accuracy[llm] > best:
                front.append(llm)
                best = self.accuracy[llm]
        return front


def team_llms(singles: SingleOutcomes, limit: int = MAX_TEAM_LLMS) -> list[str]:
    """The LLMs worth combining: the Pareto front, topped up with the most accurate, cheapest
    first."""
    chosen = singles.pareto_front()[:limit]
    for llm in sorted(singles.accuracy, key=lambda name: -singles.accuracy[name]):
        if len(chosen) >= limit:
            break
        if llm not in chosen:
            chosen.append(llm)
    return sorted(chosen, key=lambda name: singles.cost[name])


def single_plans(llms: Sequence[str], domain: str) -> list[Plan]:
    """Every LLM alone (IO, the domain's generalist role): the library's first plans, in
    ``llms`` order."""
    role = generalist_role(domain)
    return [Plan("IO", [role], [llm], task=domain) for llm in llms]


def build_library(llms: Sequence[str], domain: str, singles: SingleOutcomes, *,
                  team_limit: int = MAX_TEAM_LLMS,
                  modes: Optional[Sequence[str]] = None) -> list[Plan]:
    """The plan library (see the module docstring) for a pool and the singles' outcomes; its
    first ``len(llms)`` plans are :func:`single_plans`."""
    role = generalist_role(domain)
    team = team_llms(singles, team_limit)
    best = max(llms, key=lambda name: (singles.accuracy[name], -singles.cost[name]))
    library: list[Plan] = single_plans(llms, domain)

    def add(mode: str, members: Sequence[str]) -> None:
        topology = get_topology(mode)
        if topology.admits(len(members)):
            library.append(Plan(mode, [role] * len(members), list(members), task=domain))

    for mode in modes or topology_names():
        if mode != "IO":
            add(mode, [best] * max(TEAM_SIZE, get_topology(mode).min_agents))
    for members in itertools.combinations(team, TEAM_SIZE):
        add("IO", members)
        add("Debate", members)
    by_accuracy = sorted(team, key=lambda name: -singles.accuracy[name])
    for members in itertools.combinations(by_accuracy[:LARGE_VOTE + 1], LARGE_VOTE):
        add("IO", sorted(members, key=lambda name: singles.cost[name]))
    cheaper = team[: max(2, (len(team) + 1) // 2)]
    strongest = sorted(llms, key=lambda name: (-singles.accuracy[name], singles.cost[name]))
    experts = list(dict.fromkeys([*team, *strongest[:ESCALATION_EXPERTS]]))
    for voters in (*itertools.combinations(cheaper, 2), *itertools.combinations(cheaper, 3)):
        for expert in experts:
            if expert not in voters:
                add("Escalation", [*voters, expert])
    unique: dict[str, Plan] = {}
    for plan in library:
        unique.setdefault(plan_key(plan), plan)
    return list(unique.values())


SINGLES_FILE = "library.sqlite"
SHARD_FOLDER = "library-shards"


def shard_file(folder: Path, index: int, count: int) -> Path:
    """Where shard ``index`` of ``count`` of a pair's library executions is written."""
    return folder / SHARD_FOLDER / f"{index}-of-{count}.sqlite"


def outcome_files(folder: Path) -> list[Path]:
    """Every outcome file of a pair's folder: the singles' (which also holds a whole library
    run by one process) and the shards', whatever the shard count of the run that wrote them."""
    shards = sorted((folder / SHARD_FOLDER).glob("*-of-*.sqlite"))
    return [path for path in (folder / SINGLES_FILE, *shards) if path.exists()]


def library_shard(library: Sequence[Plan], index: int, count: int) -> list[Plan]:
    """The team plans of shard ``index`` of ``count`` (the prepare runs the singles), in library
    order: dealt out round-robin over the plans grouped by mode and size, so every shard gets
    an equal share (±1) of each (mode, k) — what an execution costs is mostly its mode's number
    of calls. (Dealing in library order instead put every Debate of a library that alternates
    votes and debates on one shard: 1.8× the other's calls, and the critical path of a grid on
    Ray.) Which shard holds an outcome does not matter to a rerun: every shard reads them all."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} does not exist")
    teams = [plan for plan in library if plan.k > 1 or plan.mode != "IO"]
    by_kind = sorted(range(len(teams)), key=lambda i: (teams[i].mode, teams[i].k))
    mine = set(by_kind[index::count])
    return [plan for i, plan in enumerate(teams) if i in mine]


class OutcomeStore:
    """Executed outcomes per (plan, query) in SQLite, resumable across runs: one file it
    writes, and any number of others it only reads (what other shards stored).

    Args:
        path: the database file it writes (created with its folder).
        others: more outcome files to read (see :func:`outcome_files`); ``path`` among them
            is ignored.
    """

    def __init__(self, path: Path, others: Sequence[Path] = ()):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                   timeout=60.0)
        self._db.execute("CREATE TABLE IF NOT EXISTS outcomes (plan TEXT, query TEXT, "
                         "correct REAL, cost REAL, calls INTEGER, PRIMARY KEY (plan, query))")
        self._others = [other for other in others if other.resolve() != path.resolve()]
        self._lock = threading.Lock()

    def _rows(self, columns: str) -> list[tuple]:
        with self._lock:
            rows = self._db.execute(f"SELECT {columns} FROM outcomes").fetchall()
        for other in self._others:
            reader = sqlite3.connect(f"file:{other}?mode=ro", uri=True, timeout=60.0)
            try:
                rows.extend(reader.execute(f"SELECT {columns} FROM outcomes").fetchall())
            finally:
                reader.close()
        return rows

    def known(self, plans: Sequence[Plan], examples: Sequence[Example]) -> set[tuple[str, str]]:
        wanted = {plan_key(p) for p in plans}
        ids = {e.id for e in examples}
        return {(p, q) for p, q in self._rows("plan, query") if p in wanted and q in ids}

    def add(self, rows: Sequence[tuple[str, str, float, float, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def matrix(self, plans: Sequence[Plan], examples: Sequence[Example]) -> LibraryOutcomes:
        """The ``[queries, plans]`` outcomes (every pair must have been executed)."""
        column = {plan_key(p): j for j, p in enumerate(plans)}
        row = {e.id: i for i, e in enumerate(examples)}
        correct = torch.full((len(examples), len(plans)), float("nan"))
        cost = torch.full((len(examples), len(plans)), float("nan"))
        for plan, query, ok, dollars in self._rows("plan, query, correct, cost"):
            if plan in column and query in row:
                correct[row[query], column[plan]] = ok
                cost[row[query], column[plan]] = dollars
        missing = int(torch.isnan(correct).sum())
        if missing:
            raise RuntimeError(f"{missing} (plan, query) outcomes are missing; run execute() first")
        return LibraryOutcomes(tuple(plans), tuple(e.query for e in examples), correct, cost,
                               tuple(e.domain for e in examples))

    def close(self) -> None:
        self._db.close()


async def execute(pipeline: Pipeline, store: OutcomeStore, plans: Sequence[Plan],
                  examples: Sequence[Example], *, progress: Optional[object] = None) -> int:
    """Run every (plan, example) pair not yet in ``store`` and record it; returns how many ran.

    Raises:
        BatchBudgetExceeded: the budget stopped the run; finished pairs are recorded.
    """
    done = store.known(plans, examples)
    ran = 0
    for plan in plans:
        key = plan_key(plan)
        todo = [e for e in examples if (key, e.id) not in done]
        for start in range(0, len(todo), pipeline.chunk_size):
            chunk = todo[start:start + pipeline.chunk_size]
            try:
                traces, scores = await pipeline.run(chunk, [plan] * len(chunk))
            except BatchBudgetExceeded as stop:
                finished = [(e, t) for e, t in zip(chunk, stop.results) if t is not None]
                scores = await pipeline.score([e for e, _ in finished],
                                              [t.final_answer for _, t in finished])
                store.add([(key, e.id, float(s.correct), t.would_have_cost_usd,
                            t.totals()["calls"]) for (e, t), s in zip(finished, scores)])
                raise
            store.add([(key, e.id, float(s.correct), t.would_have_cost_usd, t.totals()["calls"])
                       for e, t, s in zip(chunk, traces, scores)])
            ran += len(chunk)
            if progress is not None:
                progress.update(len(chunk))  # type: ignore[attr-defined]
    return ran
