"""A user adds collaboration modes without touching the package: a Python file and a YAML file
written outside the package and loaded with ``load_topology_file``, and a subclass registered from
this test module with ``@register_topology``. Each one runs end to end against the loopback
server; which agent saw which is read from the requests the server received."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loopback_server import LoopbackServer
from masr_graph.errors import TopologyError
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.plan import Plan
from masr_graph.runtime.engine import MASExecutor
from masr_graph.runtime.roles import Role
from masr_graph.runtime.topology import (
    Topology,
    get_topology,
    load_topology_file,
    register_topology,
    topology_names,
)

AGENT_ID = re.compile(r"\[agent-id:(\d+)\]")
TOKEN = re.compile(r"<<a(\d+)-r(\d+)>>")
JUDGE = "You are the decision maker"

ROLES = {
    f"Expert{i}": Role(
        name=f"Expert{i}",
        domain="knowledge",
        description=f"expert {i}",
        prompt=f"You are expert [agent-id:{i}].",
        output_format="End with 'Answer: X'.",
    )
    for i in range(6)
}

MOA_FILE = '''
"""Mixtures of agents: proposers answer in parallel, the last agent aggregates them."""
from masr_graph.runtime.topology import Topology, register_topology


class _Proposers(Topology):
    """Shared template; it has no name of its own, so it is never registered."""

    min_agents = 2

    def spatial_probs(self, k):
        # every proposer i < k-1 feeds the aggregator k-1
        return [[1.0 if j == k - 1 and i < k - 1 else 0.0 for j in range(k)] for i in range(k)]


@register_topology
class LayeredMoA(_Proposers):
    name = "LayeredMoA"
    description = "Proposers answer in parallel; the last agent aggregates them; two layers."
    rounds = 2

    def temporal_edges(self, k):
        # the second layer's proposers read the first layer's aggregate
        return [(k - 1, j) for j in range(k - 1)]

    def round_instruction(self, round, k):
        return "Improve on the aggregate shown below." if round else ""


class FlatMoA(_Proposers):  # not decorated: load_topology_file registers it
    name = "FlatMoA"
    description = "Proposers answer in parallel and the last agent aggregates them, once."
'''

PAIRWISE_YAML = """
name: SampledPairs
description: Agents speak in order and each earlier answer reaches a later agent with p=0.5.
spatial: full
spatial_p: 0.5
decision: majority_vote
round_instructions: ["Use the answers shown below if they help."]
"""


@register_topology
class Star(Topology):
    """Agent 0 is the hub: the spokes answer first, the hub reads them all and answers."""

    name = "Star"
    description = "Star: spokes answer independently, a hub agent reads all of them and decides."
    spatial_pattern = "star_in"
    min_agents = 2
    max_agents = 6


class Scripted:
    """Reply ``<<a{agent}-r{round}>>`` per agent call (round counted per agent), ``JUDGED``
    for the judge; remembers the user message each agent call carried."""

    def __init__(self) -> None:
        self.rounds: dict[int, int] = {}
        self.seen: dict[tuple[int, int], set[tuple[int, int]]] = {}

    def __call__(self, body):
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if system.startswith(JUDGE):
            return "JUDGED"
        agent = int(AGENT_ID.search(system).group(1))
        r = self.rounds.get(agent, 0)
        self.rounds[agent] = r + 1
        self.seen[(agent, r)] = {(int(a), int(b)) for a, b in TOKEN.findall(user)}
        return f"<<a{agent}-r{r}>>"


@pytest.fixture
def scripted():
    return Scripted()


@pytest.fixture
async def executor(scripted):
    with LoopbackServer(responder=scripted) as server:
        spec = LLMSpec(
            name="m",
            model="m",
            base_url=server.base_url,
            price_in=1.0,
            price_out=1.0,
            description="loopback",
        )
        async with LLMPool([spec], max_attempts=1) as pool:
            yield MASExecutor(pool, roles=ROLES)


def experts(k):
    return tuple(f"Expert{i}" for i in range(k))


async def test_registered_from_user_code_runs_end_to_end(executor, scripted):
    assert "Star" in topology_names()
    trace = await executor.run("Which?", Plan("Star", experts(4), ("m",) * 4), query_id="s1")
    assert scripted.seen == {
        (1, 0): set(),
        (2, 0): set(),
        (3, 0): set(),
        (0, 0): {(1, 0), (2, 0), (3, 0)},
    }
    assert [s.agent for s in trace.steps][-1] == 0  # the hub ran last
    assert trace.final_answer == "JUDGED"
    with pytest.raises(TopologyError, match="'Star' takes 2 to 6 agents"):
        await executor.run("Which?", Plan("Star", experts(1), ("m",)), query_id="s2")


async def test_python_file_outside_the_package(tmp_path: Path, executor, scripted):
    path = tmp_path / "my_modes" / "moa.py"
    path.parent.mkdir()
    path.write_text(MOA_FILE)
    loaded = load_topology_file(path)
    assert [t.name for t in loaded] == ["LayeredMoA", "FlatMoA"]
    assert get_topology("LayeredMoA") is loaded[0] and get_topology("FlatMoA").rounds == 1
    k = 3
    trace = await executor.run("Which?", Plan("LayeredMoA", experts(k), ("m",) * k), query_id="m1")
    assert scripted.seen == {
        (0, 0): set(),
        (1, 0): set(),
        (2, 0): {(0, 0), (1, 0)},
        (0, 1): {(2, 0)},
        (1, 1): {(2, 0)},
        (2, 1): {(0, 1), (1, 1)},
    }
    assert trace.final_answer == "JUDGED"
    # loading again without replace=True is refused; with it, the file's new version wins
    with pytest.raises(TopologyError, match="already registered"):
        load_topology_file(path)
    path.write_text(MOA_FILE.replace("rounds = 2", "rounds = 3"))
    assert load_topology_file(path, replace=True)[0].rounds == 3
    assert get_topology("LayeredMoA").rounds == 3


async def test_declarative_yaml_file_outside_the_package(tmp_path: Path, executor, scripted):
    path = tmp_path / "pairs.yaml"
    path.write_text(PAIRWISE_YAML)
    (topology,) = load_topology_file(path)
    assert topology.name == "SampledPairs" and topology.spatial_p == 0.5
    k = 4
    trace = await executor.run(
        "Which?", Plan("SampledPairs", experts(k), ("m",) * k), query_id="y1", seed=5
    )
    edges = trace.rounds[0].spatial_edges
    assert scripted.seen == {(j, 0): {(i, 0) for i, jj in edges if jj == j} for j in range(k)}
    assert trace.decision.method == "majority_vote"
    assert trace.edge_log_prob == pytest.approx(6 * -0.6931471805599453)


def test_invalid_user_files_are_rejected_with_the_reason(tmp_path: Path):
    cyclic = tmp_path / "cyclic.py"
    cyclic.write_text(
        MOA_FILE.replace('"LayeredMoA"', '"CyclicMoA"')
        .replace('"FlatMoA"', '"FlatMoA2"')
        .replace(
            "return [[1.0 if j == k - 1 and i < k - 1 else 0.0",
            "return [[1.0 if (j == k - 1 and i < k - 1) or (i == k - 1 and j == 0) else 0.0",
        )
    )
    with pytest.raises(TopologyError, match="CyclicMoA.*DAG"):
        load_topology_file(cyclic)
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("name: X\ndescription: y\nspatial: ring\n")
    with pytest.raises(
        TopologyError, match="spatial pattern 'ring' is unknown; allowed: none, chain"
    ):
        load_topology_file(bad_key)
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: X\ndescription: y\nrouns: 2\n")
    with pytest.raises(TopologyError, match="unknown key\\(s\\) 'rouns'; allowed: name"):
        load_topology_file(typo)
    with pytest.raises(TopologyError, match="unsupported suffix '.txt'"):
        (tmp_path / "x.txt").write_text("")
        load_topology_file(tmp_path / "x.txt")
    with pytest.raises(TopologyError, match="does not exist"):
        load_topology_file(tmp_path / "missing.yaml")
