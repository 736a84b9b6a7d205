"""Training the router: convergence on a reward whose best plan is known, exact resumption from
checkpoints, and routing over pools that differ from the one trained on."""
from __future__ import annotations

import asyncio

import pytest
import torch

from masr_graph import ConfigError
from masr_graph.router import (
    LLMNode, MasRouter, RewardBaseline, RewardError, RouterConfig, Trainer, TrainerConfig,
    load_checkpoint, save_checkpoint,
)

from router_support import QUERIES, one_torch_thread, shared_encoder, small_vocab

BEST_MODE = "Debate"  # 2..5 agents
BEST_LLM = "llama3-chatqa-1.5-70b"  # $0.90 per 1M tokens: quality, not price, must win
TOKENS_PER_AGENT = 2000
COST_LAMBDA = 50.0  # utility per $: one BEST_LLM agent costs 0.09 utility


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def synthetic_reward(vocab):
    """Utility 0.5 for the right mode plus 0.5 x the share of agents on the right LLM; cost is
    what the agents' tokens cost. Best plan: BEST_MODE with its minimum of 2 agents, both on
    BEST_LLM (a third agent adds cost and no utility)."""
    price = {llm.name: llm.price_in for llm in vocab.llms}

    def reward(items, plans):
        assert len(items) == len(plans)
        return [
            (
                0.5 * (plan.mode == BEST_MODE)
                + 0.5 * sum(llm == BEST_LLM for llm in plan.llms) / plan.k,
                sum(price[llm] * TOKENS_PER_AGENT / 1e6 for llm in plan.llms),
            )
            for plan in plans
        ]

    return reward


ITEMS = [{"query": q, "task": None} for q in QUERIES]


def make_trainer(vocab, seed=0, **overrides):
    torch.manual_seed(seed)
    router = MasRouter(RouterConfig(hidden_dim=32, heads=2, max_agents=5), encoder=shared_encoder())
    config = TrainerConfig(cost_lambda=COST_LAMBDA, learning_rate=3e-3, batch_size=16,
                           seed=seed, **overrides)
    return Trainer(router, vocab, synthetic_reward(vocab), config)


def is_best(plan):
    return plan.mode == BEST_MODE and plan.k == 2 and set(plan.llms) == {BEST_LLM}


def test_training_converges_to_the_known_best_plan():
    vocab = small_vocab()
    trainer = make_trainer(vocab)
    before = trainer.router.route(list(QUERIES), vocab)
    assert not any(is_best(plan) for plan in before)  # the optimum is learned, not given
    history = trainer.fit(ITEMS, steps=80)
    after = trainer.router.route(list(QUERIES), vocab)
    assert all(is_best(plan) for plan in after), after
    best_reward = 1.0 - COST_LAMBDA * 2 * 0.9 * TOKENS_PER_AGENT / 1e6
    assert history[-1].reward == pytest.approx(best_reward, abs=0.05)
    assert history[0].reward < best_reward - 0.3
    assert after[0].probs["mode"] > 0.9


def test_resumed_training_continues_exactly(tmp_path):
    vocab = small_vocab()
    straight = make_trainer(vocab, seed=3)
    straight.fit(ITEMS, steps=6)

    first_half = make_trainer(vocab, seed=3)
    first_half.fit(ITEMS, steps=3, checkpoint_path=tmp_path / "run.pt")
    resumed = Trainer.resume(tmp_path / "run.pt", synthetic_reward(vocab), encoder=shared_encoder())
    assert resumed.step_count == 3 and resumed.config == first_half.config
    resumed.fit(ITEMS, steps=3)

    for (name, a), (_, b) in zip(straight.router.state_dict().items(),
                                 resumed.router.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert straight.baseline.state_dict() == resumed.baseline.state_dict()
    assert torch.equal(straight.generator.get_state(), resumed.generator.get_state())
    sample = torch.Generator().manual_seed(9)
    assert straight.router.route(list(QUERIES), vocab, greedy=False, generator=sample) == \
        resumed.router.route(list(QUERIES), vocab, greedy=False,
                             generator=torch.Generator().manual_seed(9))


def test_checkpoint_trained_on_eight_llms_routes_over_nine_and_over_seven(tmp_path):
    full = small_vocab()
    held_out = full.llms[0]
    assert held_out.name != BEST_LLM
    eight = full.remove_llm(held_out.name)
    nine = eight.add_llm(held_out)
    trainer = make_trainer(eight)
    trainer.fit(ITEMS, steps=40)
    save_checkpoint(tmp_path / "eight.pt", trainer.router, eight)

    loaded = load_checkpoint(tmp_path / "eight.pt", encoder=shared_encoder())
    assert loaded.vocab == eight and loaded.trainer_state is None
    router = loaded.router

    # Adding the 9th LLM: a node, no retraining. It gets probability everywhere and plans
    # using it have a finite log-probability.
    with torch.no_grad():
        out = router(list(QUERIES), nine, greedy=True)
    probs = out.probs["llms"]
    assert probs.shape[-1] == 9
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert bool((probs[..., -1] > 0).all())
    forced = [type(p)(p.mode, p.roles, (held_out.name,) * p.k, task=p.task) for p in out.plans]
    assert torch.isfinite(router.log_prob_of(list(QUERIES), forced, nine)).all()

    # An LLM described like the learned favourite (only its name differs) is ranked right after
    # it, above the 7 LLMs the router was trained on: the choice comes from node features.
    twin = LLMNode("chatqa-70b-twin", full.llms[full.index("llms", BEST_LLM)].description,
                   0.9, 0.9)
    with_twin = eight.add_llm(twin)
    with torch.no_grad():
        twin_out = router(list(QUERIES), with_twin, greedy=True)
    p = twin_out.probs["llms"]
    favourite, twin_index = with_twin.index("llms", BEST_LLM), with_twin.index("llms", twin.name)
    others = [i for i in range(len(with_twin.llms)) if i not in (favourite, twin_index)]
    assert bool((p[..., twin_index] > 5 * p[..., others].max(-1).values).all())
    sampled = router.route(list(QUERIES) * 4, with_twin, greedy=False,
                           generator=torch.Generator().manual_seed(0))
    assert any(twin.name in plan.llms for plan in sampled)

    # Removing an LLM (the favourite, even) breaks nothing.
    seven = eight.remove_llm(BEST_LLM)
    plans = router.route(list(QUERIES), seven)
    assert all(set(plan.llms) <= set(seven.names("llms")) for plan in plans)
    with torch.no_grad():
        seven_probs = router(list(QUERIES), seven).probs["llms"]
    torch.testing.assert_close(seven_probs.sum(-1), torch.ones(seven_probs.shape[:-1]))


def test_async_reward_task_labels_and_cross_entropy():
    vocab = small_vocab()
    calls = []

    async def reward(items, plans):
        await asyncio.sleep(0)
        calls.append([(item["label"], plan.task) for item, plan in zip(items, plans)])
        return [(1.0, 0.0)] * len(plans)

    torch.manual_seed(0)
    router = MasRouter(RouterConfig(hidden_dim=32, heads=2), encoder=shared_encoder())
    trainer = Trainer(router, vocab, reward, TrainerConfig(learning_rate=1e-2, batch_size=8),
                      task_label=lambda item: item["label"])
    tasks = ["math", "code", "knowledge"] * 3
    labelled = [{"query": q, "label": t} for q, t in zip(QUERIES, tasks)]
    history = trainer.fit(labelled, steps=30)
    assert len(calls) == 30
    assert all(label == task for call in calls for label, task in call)  # labels decide the task
    assert history[-1].task_ce < 0.5 * history[0].task_ce
    with torch.no_grad():
        logits = router(list(QUERIES), vocab, greedy=True).task_logits
    assert [vocab.tasks[i].name for i in logits.argmax(-1).tolist()] == [
        item["label"] for item in labelled]


@pytest.mark.parametrize(
    "returned, message",
    [
        ([(1.0, 0.0)], "returned 1 pairs for 8 items"),
        ([(1.0, -0.01)] * 8, "cost_usd finite and >= 0"),
        ([(float("nan"), 0.0)] * 8, "utility must be finite"),
        ([1.0] * 8, "pair of numbers"),
    ],
)
def test_bad_rewards_are_refused(returned, message):
    vocab = small_vocab()
    torch.manual_seed(0)
    router = MasRouter(RouterConfig(hidden_dim=32, heads=2), encoder=shared_encoder())
    trainer = Trainer(router, vocab, lambda items, plans: returned,
                      TrainerConfig(samples_per_query=1, baseline="batch_mean"))
    with pytest.raises(RewardError, match=message):
        trainer.step(ITEMS)


def test_trainer_config_is_validated():
    with pytest.raises(ConfigError,
                       match="baseline is 'median'; allowed: query_mean, task_ema, batch_mean"):
        TrainerConfig(baseline="median")
    with pytest.raises(ConfigError, match="needs samples_per_query >= 2 \\(got 1\\)"):
        TrainerConfig(samples_per_query=1)
    with pytest.raises(ConfigError, match="samples_per_query must be >= 1 \\(got 0\\)"):
        TrainerConfig(samples_per_query=0, baseline="none")
    with pytest.raises(ConfigError, match="cost_lambda"):
        TrainerConfig(cost_lambda=-1.0)


def test_query_mean_baseline_compares_plans_of_the_same_query_only():
    baseline = RewardBaseline("query_mean")
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.9, 0.9, 0.3, 0.7])
    keys = ["hard", "hard", "hard", "easy", "easy", "alone", "hard"]
    # Leave-one-out: each plan against the mean of the other plans of its query; a query
    # sampled once carries no comparison and gets no advantage.
    expected = torch.tensor([1.0 - 0.7 / 3, -1.7 / 3, -1.7 / 3, 0.0, 0.0, 0.0, 0.7 - 1.0 / 3])
    torch.testing.assert_close(baseline.advantages(rewards, keys), expected)


def test_each_step_samples_several_plans_per_query_and_centres_them_per_query():
    vocab = small_vocab()
    seen = []

    def reward(items, plans):
        seen.append([item["query"] for item in items])
        # Query difficulty dominates (the first query is always solved, the others never);
        # within a query a cheaper plan is better.
        return [(1.0 if item["query"] == QUERIES[0] else 0.0, 1e-6 * plan.k)
                for item, plan in zip(items, plans)]

    torch.manual_seed(0)
    router = MasRouter(RouterConfig(hidden_dim=32, heads=2), encoder=shared_encoder())
    trainer = Trainer(router, vocab, reward, TrainerConfig(batch_size=3, samples_per_query=4))
    stats = trainer.step(ITEMS[:3])
    assert seen == [[item["query"] for item in ITEMS[:3] for _ in range(4)]]
    # Difficulty is removed from the advantages: what is left is the per-query cost spread,
    # orders of magnitude below the 0/1 spread of the rewards.
    assert stats.advantage_std < 1e-3 < stats.reward
