"""Which plans a pair's library holds: the team LLMs' votes, debates and escalations, and the
pool's strongest LLMs as escalation experts even when the team leaves them out (and only then)."""
from __future__ import annotations

from masr_graph.benchmarks.experiment.library import (ESCALATION_EXPERTS, SingleOutcomes,
                                                      build_library, team_llms)

# Twelve LLMs on one accuracy-cost front: each dearer one is more accurate.
LLMS = [f"llm-{i:02d}" for i in range(12)]
SINGLES = SingleOutcomes(accuracy={name: 0.5 + 0.04 * i for i, name in enumerate(LLMS)},
                         cost={name: 1e-4 * 2**i for i, name in enumerate(LLMS)})


def test_a_long_front_fills_the_team_from_its_cheap_end_but_the_strongest_stay_experts():
    team = team_llms(SINGLES, limit=4)
    assert team == LLMS[:4]
    library = build_library(LLMS, "math", SINGLES, team_limit=4)
    strongest = LLMS[-ESCALATION_EXPERTS:]
    escalations = [plan for plan in library
                   if plan.mode == "Escalation" and len(set(plan.llms)) > 1]  # not the fixed mode
    # The voters are the team's cheaper half (here one pair), the experts any other team LLM
    # or one of the strongest, which appear in no other team but the best LLM's fixed modes.
    assert {tuple(plan.llms[:-1]) for plan in escalations} == {tuple(team[:2])}
    assert [plan.llms[-1] for plan in escalations] == [*team[2:], *reversed(strongest)]
    teams = [plan for plan in library if plan.k > 1 and plan.mode != "Escalation"]
    fixed_modes = [plan for plan in teams if len(set(plan.llms)) == 1]
    assert all(plan.llms == (LLMS[-1],) * plan.k for plan in fixed_modes)
    assert not set(strongest[:-1]) & {llm for plan in teams for llm in plan.llms}


def test_where_the_team_holds_the_strongest_the_escalations_are_the_teams_alone():
    llms = LLMS[:5]
    singles = SingleOutcomes({n: SINGLES.accuracy[n] for n in llms},
                             {n: SINGLES.cost[n] for n in llms})
    escalations = [p.llms for p in build_library(llms, "math", singles)
                   if p.mode == "Escalation" and len(set(p.llms)) > 1]
    # Voters: the pairs and triples of the three cheapest; experts: every other team LLM, in
    # the team's (cost) order, and no one else.
    voter_sets = [(0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert escalations == [
        (*(llms[i] for i in voters), expert)
        for voters in voter_sets for expert in llms if llms.index(expert) not in voters]
