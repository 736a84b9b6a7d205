"""The router as a λ-conditioned chooser among a plan library: library log-probabilities agree
with the cascade's own, library decoding takes the most probable plan, training on executed
outcomes learns per-query, per-λ choices (a team for hard questions, a cheap LLM when cost
dominates), validation picks the weights, and checkpoints carry the library."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from masr_graph.errors import ConfigError, RoutingError
from masr_graph.plan import Plan
from masr_graph.router import MasRouter, RouterConfig, load_checkpoint, save_checkpoint
from masr_graph.router.library import (
    FIXED_PLAN_RULES,
    PLAN_OUTCOMES,
    LibraryConfig,
    LibraryOutcomes,
    LibraryPolicy,
    LibraryTrainer,
    choose_fallbacks,
    gate_from_evidence,
    validation_gate,
    validation_utility,
)
from masr_graph.router.plan_outcomes import PlanOutcomeModel

from router_support import QUERIES, one_torch_thread, shared_encoder, small_vocab

CHEAP, STRONG, OTHER = "gemma-2-9b-it", "llama3-chatqa-1.5-70b", "qwen2.5-7b-instruct"
MATH_ROLE = "Algebra Specialist"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def make_router(seed: int = 0) -> MasRouter:
    torch.manual_seed(seed)
    return MasRouter(RouterConfig(hidden_dim=32, heads=2, max_agents=4), encoder=shared_encoder())


LIBRARY = (
    Plan("IO", [MATH_ROLE], [CHEAP], task="math"),
    Plan("IO", [MATH_ROLE], [STRONG], task="math"),
    Plan("Debate", [MATH_ROLE] * 3, [CHEAP, OTHER, STRONG], task="math"),
    Plan("Chain", [MATH_ROLE, "Solution Verifier"], [OTHER, CHEAP], task="math"),
)


def test_library_scores_equal_the_cascades_own_log_probabilities():
    router, vocab = make_router(), small_vocab()
    router.eval()
    queries = list(QUERIES[:3])
    with torch.no_grad():
        scores = router.plan_log_probs(queries, LIBRARY, vocab, cost_lambda=50.0)
        for j, plan in enumerate(LIBRARY):
            direct = router.log_prob_of(queries, [plan] * len(queries), vocab, cost_lambda=50.0)
            assert torch.allclose(scores[:, j], direct, atol=1e-5)
    chosen = router.route(queries, vocab, cost_lambda=50.0, library=LIBRARY)
    assert [LIBRARY.index(p) for p in chosen] == scores.argmax(-1).tolist()
    assert all(0.0 < p.probs["plan"] <= 1.0 for p in chosen)
    with pytest.raises(RoutingError, match="at least one plan"):
        router.plan_log_probs(queries, [], vocab)
    with pytest.raises(RoutingError, match="finite and >= 0"):
        router.route(queries, vocab, cost_lambda=-1.0)


def test_lambda_is_an_input_that_moves_the_llm_choice():
    """Untrained, the λ·price term alone makes a dear LLM less probable as λ grows."""
    router, vocab = make_router(), small_vocab()
    with torch.no_grad():
        low = router.plan_log_probs(list(QUERIES[:2]), LIBRARY[:2], vocab, cost_lambda=0.0)
        high = router.plan_log_probs(list(QUERIES[:2]), LIBRARY[:2], vocab, cost_lambda=1e4)
    assert bool(((high[:, 1] - high[:, 0]) < (low[:, 1] - low[:, 0])).all())


# Arithmetic word problems are "hard" (only the debate team solves them), everything else
# "easy" (every plan solves it): the router must learn which queries need the team, and that
# the team is not worth its price when cost dominates.
HARD = {0, 3, 6}


def outcomes(queries: tuple[str, ...], hard: set[int]) -> LibraryOutcomes:
    correct = torch.ones(len(queries), len(LIBRARY))
    for i in hard:
        correct[i] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    cost = torch.tensor([[1e-4, 8e-4, 2e-3, 5e-4]] * len(queries))
    return LibraryOutcomes(LIBRARY, queries, correct, cost, tuple("math" for _ in queries))


def test_training_learns_per_query_and_per_lambda_plans():
    router, vocab = make_router(), small_vocab()
    train = outcomes(QUERIES, HARD)
    trainer = LibraryTrainer(router, vocab, train, train, LibraryConfig(
        lambdas=(100.0, 1e4), steps=150, batch_size=8, learning_rate=1e-2, eval_every=50))
    history = trainer.fit()
    assert [p.step for p in history] == [50, 100, 150]
    # λ = 100: the cheap LLM (utility 0.99) on easy queries, the team (0.8 > -0.01) on hard ones
    chosen = router.route(list(QUERIES), vocab, cost_lambda=100.0, library=LIBRARY)
    assert [LIBRARY.index(p) for p in chosen] == [2 if i in HARD else 0
                                                  for i in range(len(QUERIES))]
    dear = router.route(list(QUERIES), vocab, cost_lambda=1e4, library=LIBRARY)
    assert {LIBRARY.index(p) for p in dear} == {0}  # 1e4 x 2e-3 = 20 > the point it buys
    utility = validation_utility(router, vocab, train, (100.0, 1e4))
    assert utility[100.0] == pytest.approx((5 * 0.99 + 3 * 0.8) / 8)
    assert utility[1e4] == pytest.approx((5 * 1.0 + 3 * 0.0) / 8 - 1e4 * 1e-4)
    assert history[-1].executions == len(QUERIES) * len(LIBRARY)


def test_validation_keeps_the_best_weights_not_the_last():
    router, vocab = make_router(), small_vocab()
    train = outcomes(QUERIES, HARD)
    flipped = outcomes(QUERIES, set())  # validation: the team never pays
    trainer = LibraryTrainer(router, vocab, train, flipped, LibraryConfig(
        lambdas=(0.0,), steps=60, batch_size=8, learning_rate=1e-2, eval_every=20))
    history = trainer.fit()
    best = max(history, key=lambda p: p.mean_validation_utility)
    assert trainer.best_step == best.step
    assert validation_utility(router, vocab, flipped, (0.0,))[0.0] == pytest.approx(
        best.validation_utility[0.0])


def test_the_gate_keeps_the_router_only_where_it_leads_its_fallback_by_more_than_noise():
    router, vocab = make_router(), small_vocab()
    train = outcomes(QUERIES, HARD)
    LibraryTrainer(router, vocab, train, train, LibraryConfig(
        lambdas=(100.0, 1e4), steps=150, batch_size=8, learning_rate=1e-2,
        eval_every=50)).fit()
    gate, model = validation_gate(router, vocab, train, train, (100.0, 1e4), regularisations=())
    assert model is None
    # λ = 100: per-query plans (0.919) against the best constant, the team everywhere (0.8),
    # lead by 0.119 with a standard error of 0.035; λ = 1e4: the router picks the cheap LLM on
    # every query, exactly the fallback's plan: no lead, so the fallback
    assert gate == {100.0: None, 1e4: 0}
    lead = {"router": 0.62, "fixed": 0.60, "fixed_plan": 3, "fixed_rule": "best mean"}
    assert gate_from_evidence({0.0: {**lead, "difference_se": 0.03}}) == {0.0: 3}
    assert gate_from_evidence({0.0: {**lead, "difference_se": 0.01}}) == {0.0: None}
    assert gate_from_evidence({0.0: {**lead, "difference_se": 0.01}},
                              against_router=False) == {0.0: 3}
    # the gate before this rule: any lead, ties going to the router
    tie = {**lead, "router": 0.60, "difference_se": 0.0}
    assert gate_from_evidence({0.0: tie}) == {0.0: 3}
    assert gate_from_evidence({0.0: tie}, lead_in_standard_errors=0.0) == {0.0: None}
    assert gate_from_evidence({0.0: {**lead, "difference_se": 0.03}},
                              lead_in_standard_errors=0.0) == {0.0: None}
    with pytest.raises(ConfigError, match="lead_in_standard_errors must be >= 0"):
        gate_from_evidence({0.0: tie}, lead_in_standard_errors=-1.0)


def test_outcomes_are_validated():
    with pytest.raises(ConfigError, match=r"correct is \[2, 4\], expected \[3 queries, 4 plans\]"):
        LibraryOutcomes(LIBRARY, QUERIES[:3], torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ConfigError, match="cost must be finite and >= 0"):
        LibraryOutcomes(LIBRARY, QUERIES[:1], torch.zeros(1, 4), -torch.ones(1, 4))
    with pytest.raises(ConfigError, match="lambdas"):
        LibraryConfig(lambdas=())


def test_checkpoints_carry_the_library(tmp_path):
    router, vocab = make_router(), small_vocab()
    path = save_checkpoint(tmp_path / "r.pt", router, vocab, library=LIBRARY)
    loaded = load_checkpoint(path, encoder=shared_encoder())
    assert loaded.library == LIBRARY
    with torch.no_grad():
        assert torch.allclose(
            loaded.router.plan_log_probs(list(QUERIES[:2]), LIBRARY, vocab, cost_lambda=10.0),
            router.plan_log_probs(list(QUERIES[:2]), LIBRARY, vocab, cost_lambda=10.0))


def _noisy_library_outcomes(seed: int, queries: int) -> LibraryOutcomes:
    """40 costly plans of iid 60 % accuracy and one free plan of iid 64 %: the free plan is
    truly best at any λ > 0, yet among 41 plans on a few hundred queries one costly plan is
    nearly always luckier in sample."""
    generator = torch.Generator().manual_seed(seed)
    accuracy = torch.tensor([0.64] + [0.60] * 40)
    correct = (torch.rand(queries, 41, generator=generator) < accuracy).float()
    cost = torch.full((queries, 41), 0.002)
    cost[:, 0] = 0.0
    plans = tuple(Plan("IO", [MATH_ROLE], [CHEAP], task="math") for _ in range(41))
    return LibraryOutcomes(plans, tuple(f"q{i}" for i in range(queries)), correct, cost)


def _embeddings(queries: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(queries, 16, generator=torch.Generator().manual_seed(seed)),
                       dim=-1)


def test_cross_validation_can_catch_a_lucky_costly_plan_where_the_text_says_nothing():
    pooled = _noisy_library_outcomes(0, 150)
    train, validation = pooled.subset(range(100)), pooled.subset(range(100, 150))
    in_sample = (pooled.correct - 10.0 * pooled.cost).mean(0)
    assert int(in_sample.argmax()) != 0  # the best mean in sample is a lucky costly plan
    silent = torch.zeros(150, 16)  # embeddings that tell the queries apart in no way
    choice = choose_fallbacks(train, validation, silent, [10.0]).by_lambda[10.0]
    assert choice.rule == "one standard error" and choice.plan == 0
    # with no signal, the outcome model is the plans' base rates: the best mean again
    assert choice.cross_validated[f"{PLAN_OUTCOMES} C=0.3"] == pytest.approx(
        choice.cross_validated["best mean"])
    assert choice.cross_validated["one standard error"] > choice.cross_validated["best mean"]
    assert choice.held_out.shape == (150,)
    assert float(choice.held_out.mean()) == pytest.approx(
        choice.cross_validated["one standard error"])


def test_a_clearly_better_costly_plan_is_kept_and_plans_not_run_everywhere_never_compete():
    queries = 60
    correct = torch.zeros(queries, 3)
    correct[:, 1] = 1.0  # the costly plan solves everything, the free one nothing
    correct[:, 2] = 1.0
    cost = torch.tensor([[0.0, 0.001, 0.0]]).repeat(queries, 1)
    valid = torch.ones(queries, 3, dtype=torch.bool)
    valid[0, 2] = False  # a free, perfect plan that was not run on one query
    pooled = LibraryOutcomes(LIBRARY[:3], tuple(f"q{i}" for i in range(queries)), correct, cost,
                             valid=valid)
    fallbacks = choose_fallbacks(pooled.subset(range(40)), pooled.subset(range(40, 60)),
                                 _embeddings(queries), [100.0])
    choice = fallbacks.by_lambda[100.0]
    assert choice.plan == 1 and choice.rule == "best mean"
    assert choice.cross_validated["best mean"] == pytest.approx(1.0 - 100.0 * 0.001)
    assert not bool(fallbacks.outcome_model.runnable[2])
    assert set(fallbacks.outcome_model.choose(_embeddings(5, seed=1), 0.0).tolist()) == {1}
    with pytest.raises(ConfigError, match="folds"):
        choose_fallbacks(pooled.subset(range(2)), pooled.subset(range(2, 3)),
                         _embeddings(3), [0.0], folds=5)


def test_preferring_the_cheapest_constant_takes_a_small_cross_validated_lead_for_noise():
    queries = 150
    correct = torch.zeros(queries, 2)
    correct[:100, :] = 1.0  # both plans solve the same 100 queries...
    extra = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:5] + 100
    correct[extra, 1] = 1.0  # ...and the costly one 5 more: +0.033, less 0.02 for its cost
    cost = torch.tensor([[0.0, 2e-4]]).repeat(queries, 1)
    pooled = LibraryOutcomes(LIBRARY[:2], tuple(f"q{i}" for i in range(queries)), correct, cost)
    split = pooled.subset(range(100)), pooled.subset(range(100, 150))
    silent = torch.zeros(queries, 16)
    best = choose_fallbacks(*split, silent, [100.0], regularisations=()).by_lambda[100.0]
    assert (best.rule, best.plan) == ("best mean", 1)  # 0.005 ahead in cross-validation...
    cheapest = choose_fallbacks(*split, silent, [100.0], regularisations=(),
                                prefer_cheapest_constant=True).by_lambda[100.0]
    assert (cheapest.rule, cheapest.plan) == ("one standard error", 0)  # ...within one SE
    assert cheapest.cross_validated == best.cross_validated
    # a clearly better costly plan (solving everything) is still the fallback (both rules pick it)
    correct[:, 1] = 1.0
    clear = LibraryOutcomes(LIBRARY[:2], pooled.queries, correct, cost)
    choice = choose_fallbacks(clear.subset(range(100)), clear.subset(range(100, 150)), silent,
                              [100.0], regularisations=(),
                              prefer_cheapest_constant=True).by_lambda[100.0]
    assert choice.plan == 1


def _split_by_topic(queries: int, seed: int = 0) -> tuple[torch.Tensor, LibraryOutcomes]:
    """Two topics the embedding shows (its first coordinate, ±1; the others are noise): the
    cheap plan solves topic A, the costly one topic B, a team both at a high price."""
    embeddings = _embeddings(queries, seed)
    topic_b = embeddings[:, 0] > 0
    embeddings[:, 0] = topic_b.float() * 2 - 1
    correct = torch.stack([(~topic_b).float(), topic_b.float(), torch.ones(queries)], 1)
    cost = torch.tensor([[1e-5, 1e-4, 1e-3]]).repeat(queries, 1)
    return embeddings, LibraryOutcomes(LIBRARY[:3], tuple(f"q{i}" for i in range(queries)),
                                       correct, cost)


def test_the_plan_outcome_model_routes_each_topic_to_its_plan_and_follows_lambda():
    embeddings, outcomes = _split_by_topic(200)
    model = PlanOutcomeModel.fit(embeddings, outcomes.correct, outcomes.cost, regularisation=3.0)
    test_embeddings, test = _split_by_topic(100, seed=1)
    chosen = model.choose(test_embeddings, 100.0)
    topic_b = test.correct[:, 1].bool()
    assert (chosen[~topic_b] == 0).float().mean() > 0.9
    assert (chosen[topic_b] == 1).float().mean() > 0.9
    assert set(model.choose(test_embeddings, 0.0).tolist()) == {2}  # cost ignored: the team
    # strong regularisation: base rates only, one plan for every query
    flat = PlanOutcomeModel.fit(embeddings, outcomes.correct, outcomes.cost,
                                regularisation=1e-6)
    assert len(set(flat.choose(test_embeddings, 100.0).tolist())) == 1
    copy = PlanOutcomeModel.from_dict(model.to_dict())
    assert torch.equal(copy.choose(test_embeddings, 100.0), chosen)
    assert torch.equal(model.subset([1, 0]).choose(test_embeddings, 100.0), 1 - chosen)


def test_where_the_text_predicts_the_plan_the_fallback_routes_per_query():
    embeddings, pooled = _split_by_topic(300)
    fallbacks = choose_fallbacks(pooled.subset(range(200)), pooled.subset(range(200, 300)),
                                 embeddings, [100.0, 1e6])
    assert fallbacks.by_lambda[100.0].rule == PLAN_OUTCOMES
    assert fallbacks.by_lambda[100.0].plan is None
    # at a λ where only the cheapest plan can pay, a constant is as good and is kept
    assert fallbacks.by_lambda[1e6].rule in FIXED_PLAN_RULES


def test_a_policy_routes_by_plan_outcomes_where_its_gate_says_and_keeps_it_in_checkpoints(
        tmp_path):
    router, vocab = make_router(), small_vocab()
    queries = list(QUERIES[:4])
    embedded = router.embed_queries(queries)
    # plan i is predicted to solve the queries most like query i (i < 3), at equal costs
    library = LIBRARY[:3]
    model = PlanOutcomeModel(8.0 * embedded[:3], torch.zeros(3), torch.full((3,), 1e-4),
                             torch.ones(3, dtype=torch.bool), 1.0)
    gate = {"math": {100.0: PLAN_OUTCOMES, 1e6: 0}}
    path = save_checkpoint(tmp_path / "r.pt", router, vocab, library=library, gate=gate,
                           outcome_models={"math": model})
    policy = LibraryPolicy.from_checkpoint(path, encoder=shared_encoder())
    plans = policy.route(queries, 100.0)
    assert [library.index(p) for p in plans[:3]] == [0, 1, 2]
    assert all("plan outcome model" in p.probs["gate"] for p in plans)
    assert all(p == library[0] for p in policy.route(queries, 1e6))
    # without the strong LLM, plans using it are never chosen; the others still are
    restricted = policy.restricted_to([CHEAP, OTHER])
    assert [p for p in restricted.route(queries[:1], 100.0)] == [library[0]]
    assert all(STRONG not in p.llms for p in restricted.route(queries, 100.0))
    with pytest.raises(ConfigError, match="no outcome model"):
        LibraryPolicy(router, vocab, library, gate)
