"""Collaboration rules: the calibrated rule replays the debate tables' transition probabilities,
adopts only answers somebody gave, keeps a lone reflecting agent's answer, leaves code stubborn;
the engine tells the rule what each agent read; the hold-out check predicts the GPT-3.5 debates
from the small-model ones."""
from __future__ import annotations

import asyncio
from typing import Any, Sequence

import pytest
from masr_graph.benchmarks import Example
from masr_graph.llm import LLMPool, LLMSpec
from masr_graph.llm.transport import register_transport
from masr_graph.llm.types import CallContext, Completion, Message
from masr_graph.plan import Plan
from masr_graph.replay import CalibratedRule, RuleCall, StubbornRule, TransitionTable, get_rule
from masr_graph.replay.calibration import (
    holdout_check,
    load_sources,
    peer_state,
    predict_next_round,
)
from masr_graph.runtime import MASExecutor

from masr_graph.errors import ConfigError

GSM8K = Example("gsm8k/test/0", "gsm8k", "How many?", "18")
RIGHT, WRONG_A, WRONG_B = "#### 18", "#### 17", "#### 20"


def _call(context: CallContext, own: str, draw: str = "k", example: Example = GSM8K) -> RuleCall:
    return RuleCall(llm="m", example=example, context=context, own_reply=own, draw_key=draw)


def _frequency(rule, context: CallContext, own: str, wanted: str, draws: int = 4000) -> float:
    return sum(rule.reply(_call(context, own, f"draw-{i}")) == wanted
               for i in range(draws)) / draws


def test_peer_states_follow_the_sources_definition():
    assert [peer_state(r, 2) for r in range(3)] == ["none", "minority", "majority"]
    assert [peer_state(r, 4) for r in range(5)] == ["none", "minority", "minority", "majority",
                                                  "majority"]
    with pytest.raises(ConfigError):
        peer_state(3, 2)


@pytest.mark.parametrize("own, peers, wanted, key", [
    (WRONG_A, (RIGHT, RIGHT), RIGHT, "wrong|majority"),
    (WRONG_A, (RIGHT, WRONG_B), RIGHT, "wrong|minority"),
    (RIGHT, (WRONG_A, WRONG_B), RIGHT, "right|none"),
    (RIGHT, (RIGHT, WRONG_A), RIGHT, "right|minority"),
])
def test_agents_that_read_peers_turn_right_as_often_as_in_real_debates(own, peers, wanted, key):
    rule = CalibratedRule()
    seen, right = rule.table.counts["numeric"][key]
    frequency = _frequency(rule, CallContext(kind="agent", peers=peers), own, wanted)
    assert frequency == pytest.approx(right / seen, abs=0.03)


def test_a_right_reply_is_adopted_from_the_majority_of_right_readers_and_a_wrong_one_kept():
    rule = CalibratedRule()
    context = CallContext(kind="agent", peers=("The answer is 18.", RIGHT, RIGHT))
    replies = {rule.reply(_call(context, WRONG_A, f"d{i}")) for i in range(300)}
    # Right: the most frequent right reply it read (both keys are 18; the first one wins);
    # wrong: its own wrong answer. Nothing else.
    assert replies == {"The answer is 18.", WRONG_A}


def test_a_right_agent_that_turns_wrong_adopts_the_most_frequent_wrong_answer_it_read():
    rule = CalibratedRule()
    context = CallContext(kind="agent", peers=(WRONG_B, WRONG_A, WRONG_A))
    replies = {rule.reply(_call(context, RIGHT, f"d{i}")) for i in range(400)}
    assert replies == {RIGHT, WRONG_A}


def test_nobody_invents_an_answer_nobody_gave():
    rule = CalibratedRule()
    all_wrong = CallContext(kind="agent", peers=(WRONG_B, WRONG_B))
    assert {rule.reply(_call(all_wrong, WRONG_A, f"d{i}")) for i in range(500)} == {WRONG_A}
    all_right = CallContext(kind="agent", peers=(RIGHT, RIGHT))
    assert {rule.reply(_call(all_right, RIGHT, f"d{i}")) for i in range(500)} == {RIGHT}


def test_its_current_answer_is_its_previous_one_and_its_own_right_reply_comes_first():
    rule = CalibratedRule()
    # The previous round's answer (adopted, wrong) is current; its own recorded right reply is
    # what it turns to before any peer's.
    context = CallContext(kind="agent", previous=WRONG_B, peers=(RIGHT, "18 it is"))
    replies = {rule.reply(_call(context, "#### 18.0", f"d{i}")) for i in range(300)}
    assert replies == {WRONG_B, "#### 18.0"}


def test_reflection_without_peers_keeps_the_answer_and_lone_agents_answer_alone():
    rule = CalibratedRule()
    assert rule.reply(_call(CallContext(kind="agent", previous=WRONG_A), RIGHT)) == WRONG_A
    assert rule.reply(_call(CallContext(kind="agent"), RIGHT)) == RIGHT


def test_a_judge_reads_the_candidates_like_a_debater():
    rule = CalibratedRule()
    context = CallContext(kind="decision", candidates=(RIGHT, RIGHT, WRONG_A))
    seen, right = rule.table.counts["numeric"]["wrong|majority"]
    assert _frequency(rule, context, WRONG_B, RIGHT) == pytest.approx(right / seen, abs=0.03)


def test_code_tasks_follow_the_stubborn_rule():
    example = Example("HumanEval/0", "humaneval", "def f(): ...", "",
                      {"entry_point": "f", "prompt": "", "test": ""})
    context = CallContext(kind="agent", peers=("```python\ndef f():\n    return 1\n```",))
    assert CalibratedRule().reply(_call(context, "mine", example=example)) == "mine"


def test_the_draw_is_a_pure_function_of_the_draw_key():
    rule = CalibratedRule()
    context = CallContext(kind="agent", peers=(RIGHT, WRONG_B))
    first = [rule.reply(_call(context, WRONG_A, f"d{i}")) for i in range(50)]
    assert first == [rule.reply(_call(context, WRONG_A, f"d{i}")) for i in range(50)]
    assert len(set(first)) == 2


def test_stubborn_agents_never_change_and_the_default_is_calibrated():
    assert get_rule("calibrated").name == "calibrated"
    context = CallContext(kind="agent", peers=(RIGHT, RIGHT))
    assert StubbornRule().reply(_call(context, WRONG_A)) == WRONG_A
    assert "wrong|majority 91/114" in CalibratedRule().description


def test_predictions_equal_a_simulation_of_the_rule():
    """predict_next_round's exact expectation against a Monte Carlo run of independent agents
    drawing from the same table."""
    import random

    table = TransitionTable()
    histogram = {(3, 0): 5, (3, 1): 7, (3, 2): 11, (3, 3): 20, (5, 2): 4}
    agent, majority = predict_next_round(table, "numeric", histogram)
    rng = random.Random(0)
    right_sum = agents_sum = majority_sum = questions = 0
    for (agents, right), count in histogram.items():
        for _ in range(count * 400):
            after = 0
            for index in range(agents):
                is_right = index < right
                peers = peer_state(right - is_right, agents - 1)
                after += rng.random() < table.p_right("numeric", is_right, peers)
            right_sum += after
            agents_sum += agents
            majority_sum += 1.0 if 2 * after > agents else 0.5 if 2 * after == agents else 0.0
            questions += 1
    assert agent == pytest.approx(right_sum / agents_sum, abs=0.005)
    assert majority == pytest.approx(majority_sum / questions, abs=0.005)


def test_holdout_check_fits_on_small_models_and_predicts_gpt35():
    check = holdout_check()
    assert check.fitted_on == ("slm-debate-gsm8k",)
    assert (check.recorded_agent, check.recorded_majority) == (238 / 300, 0.80)
    assert check.predicted_agent == pytest.approx(0.7676, abs=1e-3)
    assert check.predicted_majority == pytest.approx(0.7779, abs=1e-3)
    with pytest.raises(ConfigError, match="must not fit on the source it predicts"):
        holdout_check(fitted_on={"numeric": ("du2023-gpt35-gsm8k",)})
    assert {s.task for s in load_sources().values()} == {"gsm8k", "mmlu"}


class _RecordingTransport:
    """Answers every call with the agent's index and records the contexts it was given."""

    contexts: list[CallContext] = []

    def __init__(self, specs: list[LLMSpec]):
        pass

    async def complete(self, spec: LLMSpec, messages: Sequence[Message], params: dict[str, Any],
                       context: CallContext) -> Completion:
        type(self).contexts.append(context)
        return Completion(f"agent {context.agent} round {context.round}", 1, 1)

    async def aclose(self) -> None:
        pass


def test_the_engine_tells_the_rule_what_each_agent_read():
    register_transport("recording", _RecordingTransport, replace=True)
    _RecordingTransport.contexts = []
    spec = LLMSpec("m", "m", "recording://x", 0.0, 0.0, "test")

    async def main():
        async with LLMPool([spec]) as pool:
            executor = MASExecutor(pool)
            await executor.run("q?", Plan("Debate", ["Step-by-Step Solver"] * 3, ["m"] * 3),
                               query_id="q")
            await executor.run("q?", Plan("Chain", ["Step-by-Step Solver"] * 3, ["m"] * 3),
                               query_id="q2")

    asyncio.run(main())
    debate, chain = _RecordingTransport.contexts[:7], _RecordingTransport.contexts[7:]
    round1 = sorted((c for c in debate if c.kind == "agent" and c.round == 1),
                    key=lambda c: c.agent)
    assert [c.previous for c in round1] == [f"agent {i} round 0" for i in range(3)]
    assert [c.peers for c in round1] == [
        tuple(f"agent {j} round 0" for j in range(3) if j != i) for i in range(3)]
    judge = [c for c in debate if c.kind == "decision"]
    assert len(judge) == 1 and len(judge[0].candidates) == 3
    assert [(c.agent, c.peers, c.previous) for c in chain if c.kind == "agent"] == [
        (0, (), None), (1, ("agent 0 round 0",), None), (2, ("agent 1 round 0",), None)]
