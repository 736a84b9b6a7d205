"""Honest money: every attempt that may have been billed is in the ledger at what the budget
charged it (estimated, never a silent $0), so the ledger's total is the budget's spent under any
fault mix — in the LLM layer, and in what `run_all.py` writes; replay dollars say they are
notional."""
from __future__ import annotations

import asyncio
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopback_server import LoopbackServer
from pool_support import loopback_spec, user
from masr_graph.benchmarks import run_all
from masr_graph.errors import BudgetExceeded, LLMCallError
from masr_graph.llm import (
    Budget,
    CallContext,
    Ledger,
    LLMPool,
    prompt_tokens_upper_bound,
)

PRICE = 1000.0  # $ per 1M tokens: one token costs $0.001
UNKNOWN_OUTCOME_FAULTS = ("hang", "badjson", "no_choices", "drop")  # may be billed, unreported
MAX_TOKENS = 64


spec_for = partial(loopback_spec, model="m", price_in=PRICE, price_out=PRICE, timeout_s=0.3)
HEALTHY_REPLY_TIMEOUT_S = 2.0
"""Where a test counts the unknown-outcome attempts against the faults the server injected, a
healthy reply must never time out: one stall of the test process longer than 0.3 s (seen on a
busy 2-core VM) timed out every in-flight healthy call at once (16 more estimated attempts than
injected faults, with 16 calls in flight). A hang still ends, at this timeout."""


async def _many_calls(pool: LLMPool, n: int) -> list[Any]:
    return await asyncio.gather(
        *(pool.chat("m", user(f"question {i}: what is {i} + {i}?"), max_tokens=MAX_TOKENS,
                    context=CallContext(query_id=str(i))) for i in range(n)),
        return_exceptions=True)


async def test_ledger_total_is_the_budgets_spent_under_a_30_percent_fault_mix():
    with LoopbackServer(fault_rate=0.3, fault_seed=3) as srv:
        spec = spec_for(srv, max_concurrency=16, timeout_s=HEALTHY_REPLY_TIMEOUT_S)
        budget = Budget(1e6)
        async with LLMPool([spec], budget=budget,
                           backoff_base_s=0.001) as pool:
            results = await _many_calls(pool, 150)
        faults = srv.fault_counts
    assert all(not isinstance(r, BaseException) or isinstance(r, LLMCallError) for r in results)
    totals = pool.ledger.totals()
    assert totals.cost_usd == pytest.approx(budget.spent_usd, rel=1e-12, abs=0)
    unknown = sum(faults.get(kind, 0) for kind in UNKNOWN_OUTCOME_FAULTS)
    assert unknown > 10  # the mix really had attempts of unknown outcome
    assert totals.estimated_attempts == unknown
    worst = [spec.cost_usd(prompt_tokens_upper_bound(user(f"question {i}: what is {i} + {i}?")),
                           MAX_TOKENS) for i in range(150)]
    assert min(worst) * unknown <= totals.estimated_usd <= max(worst) * unknown
    for record in pool.ledger.records:
        assert record.cost_estimated == (record.estimated_attempts > 0 or record.usage_estimated)
    assert "estimated for" in pool.ledger.summary()


async def test_a_budget_stop_under_faults_has_really_used_the_cap():
    with LoopbackServer(fault_rate=0.3, fault_seed=5) as srv:
        spec = spec_for(srv, max_concurrency=8)
        worst = spec.cost_usd(prompt_tokens_upper_bound(user("question 100: what is 100 + 100?")),
                              MAX_TOKENS)
        cap = 40 * worst
        budget = Budget(cap)
        async with LLMPool([spec], budget=budget, backoff_base_s=0.001) as pool:
            results = await _many_calls(pool, 200)
    assert any(isinstance(r, BudgetExceeded) for r in results)
    spent = pool.ledger.totals().cost_usd
    assert spent == pytest.approx(budget.spent_usd, rel=1e-12, abs=0)
    # Stopped only when the next worst case no longer fits, not at 63-70 % of the cap.
    assert cap - worst * 1.01 <= spent <= cap


async def test_cancelled_attempts_stay_on_record_at_what_the_budget_charged(server):
    spec = spec_for(server, timeout_s=30.0)
    messages = user("[[fault:hang]] are you there?")
    worst = spec.cost_usd(prompt_tokens_upper_bound(messages), MAX_TOKENS)
    budget = Budget(1.0)
    async with LLMPool([spec], budget=budget) as pool:
        call = asyncio.create_task(pool.chat("m", messages, max_tokens=MAX_TOKENS))
        while server.call_count == 0:  # the request has reached the provider
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    (record,) = pool.ledger.records
    assert record.error == "cancelled" and record.cost_estimated
    assert record.estimated_attempts == 1 and record.estimated_usd == pytest.approx(worst)
    assert record.cost_usd == pytest.approx(budget.spent_usd) == pytest.approx(worst)
    assert budget.reserved_usd == 0.0


async def test_prompt_only_policy_charges_the_prompt_bound_in_budget_and_ledger(server):
    spec = spec_for(server)
    messages = user("[[fault:badjsonx1]] hello")
    budget = Budget(1.0)
    async with LLMPool([spec], budget=budget, backoff_base_s=0.001,
                       unknown_outcome_cost="prompt_only") as pool:
        result = await pool.chat("m", messages, max_tokens=MAX_TOKENS)
    record = result.record
    assert record.estimated_usd == pytest.approx(spec.cost_usd(prompt_tokens_upper_bound(messages),
                                                               0))
    assert record.cost_usd == pytest.approx(budget.spent_usd)
    with pytest.raises(ValueError, match=r"unknown_outcome_cost must be one of \['worst_case', "
                                         r"'prompt_only'\] \(got 'free'\)"):
        LLMPool([spec], unknown_outcome_cost="free")


def test_run_all_writes_spent_equal_to_the_budget_and_ledger_under_faults(tmp_path: Path, capsys):
    """`run_all.py` against a real HTTP pool failing 30 % of attempts, stopped by its cap:
    results.md, results.json and the invocation's ledger file all show what the budget
    counted, and the estimate covers exactly the unknown-outcome attempts the server saw."""
    out = tmp_path / "run"
    with LoopbackServer(fault_rate=0.3, fault_seed=1) as srv:
        pool_file = tmp_path / "pool.yaml"
        pool_file.write_text(yaml.safe_dump({"llms": [
            dict(name=name, model=name, base_url=srv.base_url, price_in=price,
                 price_out=3 * price, description=f"loopback model {name}",
                 timeout_s=HEALTHY_REPLY_TIMEOUT_S)
            for name, price in (("cheap", 100.0), ("dear", 400.0))]}))
        status = run_all.main([
            "--pool", str(pool_file), "--benchmarks", "gsm8k", "mmlu", "--out", str(out),
            "--quick", "--max-train", "4", "--max-validation", "2", "--max-test", "4",
            "--router-steps", "2", "--lambdas", "0", "100", "--max-usd", "20"])
        faults = srv.fault_counts
    assert status == 3
    assert "run_all.py: stopped by the budget cap" in capsys.readouterr().err
    spending = json.loads((out / "results.json").read_text())["meta"]["spending"]
    ledger_files = sorted((out / "ledgers").glob("run_all-*.jsonl"))
    assert ledger_files, "every pair's pool writes its ledger"
    ledgers = [Ledger.from_jsonl(path).totals() for path in ledger_files]
    assert spending["spent_usd"] == pytest.approx(sum(t.cost_usd for t in ledgers), rel=1e-12)
    assert spending["spent_usd"] == pytest.approx(spending["ledger_usd"], rel=1e-12, abs=0)
    assert sum(t.estimated_attempts for t in ledgers) == sum(
        faults.get(k, 0) for k in UNKNOWN_OUTCOME_FAULTS) > 0
    markdown = (out / "results.md").read_text()
    shown = re.search(r"\$(\d+\.\d{6}) spent of the \$20\.000000 cap", markdown)
    assert shown and float(shown.group(1)) == pytest.approx(spending["spent_usd"], abs=5e-7)
    assert 0.8 * 20 < spending["spent_usd"] <= 20


def test_replay_dollars_are_labelled_notional(tmp_path: Path, capsys):
    out = tmp_path / "run"
    status = run_all.main(["--world", "llmrouter", "--benchmarks", "gsm8k", "--out", str(out),
                           "--quick", "--max-train", "4", "--max-validation", "2", "--max-test",
                           "3", "--router-steps", "2", "--lambdas", "0", "100", "--team-llms",
                           "3"])
    assert status == 0
    markdown = (out / "results.md").read_text()
    assert ("- **$ figures**: notional: replay pool: recorded list prices, nothing was paid"
            in markdown)
    assert "$ per query (notional: recorded list prices, nothing was paid)" in markdown
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert "nothing was paid" in meta["spending"]["notional"]
    assert "nothing was paid" in meta["spent (this invocation, what the budget counted)"]
    assert "nothing was paid" in capsys.readouterr().out
