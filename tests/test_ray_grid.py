"""The evaluation grid on Ray (`run_all.py --ray`): the same cells as the serial grid, scheduled
by Ray on a local instance of two workers, sharing one budget, one concurrency limit per endpoint
and one response cache — a worker killed mid-cell loses only its running call, the cell reruns
and the grid's results are those of the serial run, with no paid call made twice; one
`--max-usd` holds for the whole grid across workers."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopback_server import LoopbackServer
from masr_graph.benchmarks import run_all
from masr_graph.benchmarks.experiment.grid import RayOptions, run_grid
from masr_graph.errors import BudgetExceeded
from masr_graph.exit_status import BudgetStop
from masr_graph.llm import Ledger

try:
    import psutil
    import ray
except ImportError:  # the ray extra (ray[default] brings psutil) is optional
    ray = psutil = None

needs_ray = pytest.mark.skipif(ray is None, reason="the ray extra is not installed "
                                                   "(pip install 'masr_graph[ray]')")

PRICE = 100.0  # $ per 1M tokens
TINY = ["--quick", "--max-train", "4", "--max-validation", "2", "--max-test", "3",
        "--router-steps", "2", "--lambdas", "0", "100", "--team-llms", "3"]


@pytest.fixture(scope="module", autouse=True)
def builtin_registries():
    """The grid's Ray workers are fresh processes: they know the built-in topologies and roles
    only. Other test modules register more in this process (some at import), which the serial
    grid would put into its library and router vocabulary; hide them for this module, so both
    grids see the same modes and roles (as two runs of ``run_all.py`` would)."""
    from masr_graph.runtime import roles, topology

    topology.topology_names()  # discover the built-ins before taking the snapshot
    saved_topologies, saved_roles = dict(topology._registry), dict(roles._registered)
    for name in [n for n in topology._registry if topology._order[n][0] != 0]:
        del topology._registry[name]
    roles._registered.clear()
    yield
    topology._registry.update(saved_topologies)
    roles._registered.update(saved_roles)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of two worker CPUs for the module (the grid joins it)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR",
             runtime_env={"env_vars": {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def answer(body: dict[str, Any]) -> str:
    """A deterministic reply of the request's messages (so both grids see the same)."""
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).digest()
    return f"Let me think. The answer is {digest[0] % 4}."


def request_key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


def paid(srv: LoopbackServer) -> list[str]:
    """The requests the server answered with a reply (what a provider bills), in order."""
    received = srv.received
    return [request_key(received[a.request].body) for a in srv.answers if a.status == 200]


def billed_usd(srv: LoopbackServer) -> float:
    """What the answered requests cost by the server's own token count."""
    received = srv.received
    total = 0.0
    for a in srv.answers:
        if a.status == 200:
            body = received[a.request].body
            prompt = sum(len(m["content"].split()) + 3 for m in body["messages"])
            total += (prompt + len(answer(body).split())) * PRICE / 1e6
    return total


def first_difference(ray: Any, serial: Any, path: str = "") -> str:
    """Where two JSON values first differ, as ``path: ray value != serial value``."""
    if isinstance(ray, dict) and isinstance(serial, dict):
        for key in sorted(set(ray) | set(serial), key=str):
            if ray.get(key) != serial.get(key):
                return first_difference(ray.get(key), serial.get(key), f"{path}/{key}")
    if isinstance(ray, list) and isinstance(serial, list) and len(ray) == len(serial):
        for index, (a, b) in enumerate(zip(ray, serial)):
            if a != b:
                return first_difference(a, b, f"{path}[{index}]")
    return f"{path}: ray {ray!r} != serial {serial!r}"


def pool_file(path: Path, base_url: str) -> Path:
    path.write_text(yaml.safe_dump({"llms": [
        dict(name=name, model=name, base_url=base_url, price_in=PRICE, price_out=PRICE,
             # A generous timeout: on a loaded 2-core machine a starved request must not time
             # out (an attempt of unknown outcome is charged its worst case, so the Ray grid's
             # costs would differ from the serial grid's for a reason the test is not about).
             description=f"loopback model {name}", timeout_s=60.0, max_concurrency=1)
        for name in ("alpha", "beta")]}))
    return path


def grid_args(pool: Path, out: Path) -> Any:
    return run_all.parse_args(["--pool", str(pool), "--benchmarks", "gsm8k", "--out", str(out),
                               *TINY])


def ledger_total(folder: Path) -> float:
    return sum(Ledger.from_jsonl(path).totals().cost_usd for path in folder.rglob("*.jsonl"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One loopback server for the module, with a responder tests can arm."""
    hooks: dict[str, Any] = {}

    def responder(body: dict[str, Any]) -> str:
        if "before" in hooks:
            hooks["before"](body)
        return answer(body)

    with LoopbackServer(responder=responder) as srv:
        pool = pool_file(tmp_path_factory.mktemp("pool") / "loop.yaml", srv.base_url)
        yield srv, pool, hooks


@pytest.fixture(scope="module")
def serial_grid(served, tmp_path_factory):
    """The grid run without Ray: its output folder and the requests it paid for."""
    srv, pool, _ = served
    srv.reset()
    out = tmp_path_factory.mktemp("serial")
    args = grid_args(pool, out)
    grid = asyncio.run(run_grid(args.pairs, run_all.settings_for(args), out, say=lambda _: None))
    return out, paid(srv), grid


def _peer_pid(peer: str) -> int:
    port = int(peer.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.pid and conn.pid != os.getpid():
            return conn.pid
    raise AssertionError(f"no process owns the client socket {peer}")


def _running_units() -> dict[int, str]:
    """pid → unit, from the grid's progress board."""
    boards = [name for name in ray.util.list_named_actors() if name.startswith("masr-board-")]
    rows = ray.get(ray.get_actor(boards[-1]).snapshot.remote()) if boards else {}
    return {fields["pid"]: name for name, fields in rows.items() if "pid" in fields}


@needs_ray
async def test_a_killed_worker_reruns_its_cell_the_grid_matches_serial_and_pays_nothing_twice(
        local_ray, served, serial_grid, tmp_path: Path):
    srv, pool, hooks = served
    serial_out, serial_paid, serial = serial_grid
    assert serial_paid and len(serial_paid) == len(set(serial_paid))
    killed: dict[str, Any] = {}
    cell_requests = [0]

    def kill_mid_cell(body: dict[str, Any]) -> None:
        """On the 3rd request of a cell (2 answered before it), SIGKILL the worker that sent it
        and fail the request (HTTP 500: not a paid reply)."""
        if killed:
            return
        pid = _peer_pid(srv.received[-1].peer)
        unit = _running_units().get(pid, "")
        if not unit or unit.endswith("/prepare") or "/library " in unit or "training" in unit:
            return
        cell_requests[0] += 1
        if cell_requests[0] == 3:
            killed.update(pid=pid, unit=unit)
            os.kill(pid, signal.SIGKILL)
            raise RuntimeError("the worker that sent this was killed")

    srv.reset()
    hooks["before"] = kill_mid_cell
    out = tmp_path / "ray"
    args = grid_args(pool, out)
    try:
        grid = await run_grid(args.pairs, run_all.settings_for(args), out, say=lambda _: None,
                              ray=RayOptions(max_retries=2))
    finally:
        hooks.pop("before")
    ray_paid = paid(srv)

    assert killed, "no worker was killed: the test did not exercise a rerun"
    rerun = next(o for o in grid.outcomes if o.name == killed["unit"])
    assert rerun.status == "done" and not rerun.worker.endswith(f":{killed['pid']}")
    # The same tables as without Ray, same seeds.
    pairs = json.loads((out / "results.json").read_text())["pairs"]
    serial_pairs = json.loads((serial_out / "results.json").read_text())["pairs"]
    assert pairs == serial_pairs, first_difference(pairs, serial_pairs)
    assert "- **status**: complete" in (out / "results.md").read_text()
    # No paid call twice: every answered request is distinct, and they are the serial grid's.
    assert len(ray_paid) == len(set(ray_paid))
    assert set(ray_paid) == set(serial_paid)
    # One concurrency limit for the endpoint across the workers (max_concurrency: 1).
    (gate,) = grid.cluster["endpoints"].values()
    assert gate["limit"] == 1 and gate["peak"] == 1 and gate["in_use"] == 0
    assert srv.max_in_flight == 1
    assert grid.cluster["cache"]["open_claims"] == 0
    # Each unit streamed its own ledger (ledgers/<run id>/<pair>/<unit>.jsonl, the killed
    # attempt's settled calls included): together they hold every paid call.
    records = [r for p in (out / "ledgers").rglob("*.jsonl") for r in Ledger.from_jsonl(p).records]
    assert sum(1 for r in records if not r.cached and not r.error) >= len(ray_paid)


@needs_ray
async def test_one_max_usd_for_the_whole_grid_across_workers(local_ray, served, serial_grid,
                                                             tmp_path: Path):
    """Capped between what prepare costs and what the whole grid costs, the grid stops in its
    cells with both workers spending: the counted spend never passes the cap (the bound the
    docs state — at most one worst-case call per running cell over it — with room to spare),
    what the server billed is below it, and the units' ledgers add up to it."""
    srv, pool, _ = served
    serial_out, _, serial = serial_grid
    prepare = next(o for o in serial.outcomes if o.kind == "prepare")
    total = ledger_total(serial_out / "ledgers")
    prepare_usd = prepare.usd
    cap = prepare_usd + 0.5 * (total - prepare_usd)
    srv.reset()
    out = tmp_path / "capped"
    args = grid_args(pool, out)
    with pytest.raises(BudgetStop):
        await run_grid(args.pairs, run_all.settings_for(args), out, max_usd=cap,
                       say=lambda _: None, ray=RayOptions())
    spending = json.loads((out / "results.json").read_text())["meta"]["spending"]
    assert spending["cap_usd"] == cap
    assert 0.5 * cap < spending["spent_usd"] <= cap
    assert billed_usd(srv) <= spending["spent_usd"] + 1e-9
    assert ledger_total(out / "ledgers") == pytest.approx(spending["spent_usd"], rel=1e-9)
    assert "stopped by the budget cap" in (out / "results.md").read_text()


@needs_ray
async def test_a_ray_grid_given_a_serial_grids_cache_dir_pays_for_nothing_again(
        local_ray, served, serial_grid, tmp_path: Path):
    """What ``run_all.py --split-seed S1 S2 ...`` relies on: a grid in another ``--out`` with
    the cache directory of one that ran before (here the serial grid's ``--out``) gets every
    reply from its response cache — on Ray, through the store actor — and the same tables."""
    srv, pool, _ = served
    serial_out, serial_paid, _ = serial_grid
    assert serial_paid
    srv.reset()
    out = tmp_path / "ray"
    args = grid_args(pool, out)
    grid = await run_grid(args.pairs, run_all.settings_for(args), out, cache_dir=serial_out,
                          say=lambda _: None, ray=RayOptions())
    assert paid(srv) == []
    spending = grid.total_spending(None)
    assert spending["calls"] == spending["cached_calls"] > 0
    assert not (out / "llm_cache.sqlite").exists()
    pairs = json.loads((out / "results.json").read_text())["pairs"]
    serial_pairs = json.loads((serial_out / "results.json").read_text())["pairs"]
    assert pairs == serial_pairs, first_difference(pairs, serial_pairs)


@needs_ray
def test_budget_actor_settles_a_dead_attempts_reservations_at_their_worst_case(local_ray,
                                                                              tmp_path: Path):
    """A worker dies holding reservations and an endpoint slot: the rerun of its unit finds the
    slot free (a limit of 1 would otherwise hang it) and the budget has charged the dead
    attempt's reservations in full."""
    from masr_graph.llm.shared import BudgetActor, EndpointGate, actor_class

    budget = actor_class(BudgetActor).remote(1.0)
    gate = actor_class(EndpointGate).remote("http://x", 1)
    marker = tmp_path / "died-once"

    @ray.remote(max_retries=1)
    def unit() -> list:
        import uuid

        attempt = uuid.uuid4().hex
        lease = ("unit", attempt)
        orphans = ray.get(budget.begin.remote("unit", attempt))
        ray.get(gate.begin.remote("unit", attempt))
        ray.get(gate.acquire.remote(lease), timeout=20)  # hangs if the dead slot were kept
        for _ in range(3):
            ray.get(budget.reserve.remote(0.1, "m", lease))
        if not marker.exists():
            marker.write_text("x")
            os._exit(1)  # dies with 3 reservations and the slot
        return orphans

    orphans = ray.get(unit.remote(), timeout=120)
    assert orphans == [("m", 0.1)] * 3
    state = ray.get(budget.state.remote())
    assert state["spent_usd"] == pytest.approx(0.3) and state["open"] == 3
    assert state["orphaned_attempts"] == 3
    ray.get(budget.end.remote("unit"))
    assert ray.get(budget.state.remote())["spent_usd"] == pytest.approx(0.6)
    rid, refusal = ray.get(budget.reserve.remote(0.5, "m", ("other", "a")))
    assert rid is None and str(BudgetExceeded(*refusal)).startswith("budget cap $1.000000")


def test_run_all_ray_without_ray_installed_is_one_line(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    status = run_all.main(["--world", "llmrouter", "--benchmarks", "gsm8k", "--out",
                           str(tmp_path / "run"), "--ray", *TINY])
    assert status == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("run_all.py: error: --ray needs Ray, an optional extra: "
                              "pip install 'masr_graph[ray]'")
