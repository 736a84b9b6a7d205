"""The router's cascade: log-probabilities, distributions, gradients, batch independence,
plan validation and the plug-in LLM assignment, with the real MiniLM encoder."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from masr_graph import Plan, RoutingError
from masr_graph.router import STAGES, MasRouter, RouterConfig, assign_llms
from masr_graph.router.graph import EDGE_TYPES, attach_queries

from router_support import QUERIES, one_torch_thread, shared_encoder, small_vocab


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def vocab():
    return small_vocab()


@pytest.fixture(scope="module")
def router():
    torch.manual_seed(0)
    return MasRouter(RouterConfig(max_agents=5), encoder=shared_encoder())


def test_plan_log_prob_is_the_sum_of_its_stages_and_log_prob_of_agrees(router, vocab):
    out = router(list(QUERIES), vocab, generator=torch.Generator().manual_seed(1))

    total = sum(out.stage_log_probs[stage] for stage in STAGES)
    torch.testing.assert_close(out.log_prob, total)
    # Recompute each stage from the full distributions and the chosen indices.
    rows = torch.arange(len(QUERIES))
    c, p = out.choices, out.probs
    torch.testing.assert_close(out.stage_log_probs["task"], p["task"][rows, c["task"]].log())
    torch.testing.assert_close(out.stage_log_probs["mode"], p["mode"][rows, c["mode"]].log())
    torch.testing.assert_close(out.stage_log_probs["count"], p["count"][rows, c["count"] - 1].log())
    for b, k in enumerate(c["count"].tolist()):
        role_lp = sum(p["roles"][b, s, c["roles"][b, s]].log() for s in range(k))
        llm_lp = sum(p["llms"][b, s, c["llms"][b, s]].log() for s in range(k))
        torch.testing.assert_close(out.stage_log_probs["roles"][b], role_lp)
        torch.testing.assert_close(out.stage_log_probs["llms"][b], llm_lp)
        plan = out.plans[b]
        assert plan.k == k and plan.task == vocab.tasks[c["task"][b]].name
        assert plan.probs["llms"] == pytest.approx(
            [p["llms"][b, s, c["llms"][b, s]].item() for s in range(k)], rel=1e-5
        )

    with torch.no_grad():
        rescored = router.log_prob_of(list(QUERIES), out.plans, vocab, latent=out.latent)
    torch.testing.assert_close(rescored, out.log_prob.detach())
    # The sample is a real draw: several distinct plans, all with probability < 1.
    assert len({(p.mode, p.roles, p.llms) for p in out.plans}) > 1
    assert bool((out.log_prob < 0).all())


def test_greedy_plan_is_rescored_without_its_latent(router, vocab):
    with torch.no_grad():
        out = router(list(QUERIES), vocab, greedy=True)
        rescored = router.log_prob_of(list(QUERIES), out.plans, vocab)
    torch.testing.assert_close(rescored, out.log_prob)
    # Greedy takes the arg-max at every stage.
    assert torch.equal(out.choices["mode"], out.probs["mode"].argmax(-1))


def test_distributions_sum_to_one_and_vanish_on_invalid_choices(router, vocab):
    with torch.no_grad():
        out = router(list(QUERIES), vocab, generator=torch.Generator().manual_seed(2))
    for name, probs in out.probs.items():
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), msg=name)
    for b, plan in enumerate(out.plans):
        mode = vocab.modes[vocab.index("modes", plan.mode)]
        high = min(mode.max_agents or 5, 5)
        counts = torch.arange(1, 6)
        outside = (counts < mode.min_agents) | (counts > high)
        assert torch.all(out.probs["count"][b][outside] == 0)
        assert torch.all(out.probs["count"][b][~outside] > 0)
        other_task = torch.tensor([r.task != plan.task for r in vocab.roles])
        assert torch.all(out.probs["roles"][b][:, other_task] == 0)
        assert torch.all(out.probs["roles"][b][:, ~other_task] > 0)
        assert all(vocab.roles[vocab.index("roles", r)].task == plan.task for r in plan.roles)
        assert mode.min_agents <= plan.k <= high
    assert torch.all(out.probs["llms"] > 0)


def test_given_task_label_decides_the_task_and_is_not_a_policy_decision(router, vocab):
    labels = ["code"] * len(QUERIES)
    with torch.no_grad():
        out = router(list(QUERIES), vocab, task_labels=labels,
                     generator=torch.Generator().manual_seed(3))
    assert {p.task for p in out.plans} == {"code"}
    assert torch.all(out.stage_log_probs["task"] == 0)
    assert not bool(out.task_decided.any())
    code_roles = {r.name for r in vocab.roles_of("code")}
    assert all(set(p.roles) <= code_roles for p in out.plans)


def test_gradient_reaches_every_parameter_of_every_stage(vocab):
    torch.manual_seed(0)
    # Double precision: a parameter whose gradient is zero in exact arithmetic (e.g. a shift
    # that cancels in a softmax) shows ~1e-17 instead of float32 noise that can pass for signal.
    router = MasRouter(RouterConfig(max_agents=5), encoder=shared_encoder()).double()
    queries = list(QUERIES) * 3
    labels = [None, "math", None, "code"] * 6
    # λ > 0 on most queries: the λ embedding and the LLM stage's cost term act only then.
    lambdas = torch.linspace(0.0, 1000.0, len(queries))
    out = router(queries, vocab, task_labels=labels, cost_lambda=lambdas,
                 generator=torch.Generator().manual_seed(4))
    advantage = torch.linspace(-1, 1, len(queries))
    labelled = [i for i, label in enumerate(labels) if label]
    ce = F.cross_entropy(
        out.task_logits[labelled], torch.tensor([vocab.index("tasks", labels[i]) for i in labelled])
    )
    loss = -(advantage * out.log_prob).mean() - 0.01 * out.entropy.mean() + ce + out.kl.mean()
    loss.backward()
    dead = [
        name for name, param in router.named_parameters()
        if param.grad is None or not bool(param.grad.abs().max() > 1e-12)
    ]
    assert dead == []
    stages = {name.split(".")[0] for name, _ in router.named_parameters()}
    assert stages == {"graph_encoder", "task_classifier", "mode_selector", "agent_counter",
                      "role_allocator", "llm_router", "lambda_encoder", "query_projection"}


def test_a_query_routes_the_same_whatever_its_batch(router, vocab):
    query = QUERIES[0]
    with torch.no_grad():
        alone = router([query], vocab, greedy=True)
        batched = router([query, *QUERIES[1:]], vocab, greedy=True)
        reordered = router([*QUERIES[3:], query], vocab, greedy=True)
    k = alone.plans[0].k
    for other, row in ((batched, 0), (reordered, len(QUERIES) - 3)):
        assert other.plans[row] == alone.plans[0]
        torch.testing.assert_close(other.log_prob[row], alone.log_prob[0])
        torch.testing.assert_close(other.latent[row], alone.latent[0])
        for name in ("task", "mode", "count"):
            torch.testing.assert_close(other.probs[name][row], alone.probs[name][0])
        for name in ("roles", "llms"):
            torch.testing.assert_close(other.probs[name][row, :k], alone.probs[name][0, :k])


def test_no_edge_leaves_a_query_node_and_edges_grow_linearly(router, vocab):
    static = router.static_graph(vocab)
    data = attach_queries(static, shared_encoder().encode(list(QUERIES)), query_role_topk=4,
                          query_llm_topk=4)
    assert set(data.edge_types) == set(EDGE_TYPES)
    assert all(src != "query" for src, _, _ in data.edge_types)
    k = router.config.role_llm_topk
    n_roles, n_llms = len(vocab.roles), len(vocab.llms)
    assert data["role", "suits", "llm"].num_edges <= min(n_roles * n_llms, k * (n_roles + n_llms))
    assert data["llm", "informs", "query"].num_edges == 4 * len(QUERIES)
    # Every LLM node receives messages from some role.
    assert set(data["role", "suits", "llm"].edge_index[1].tolist()) == set(range(n_llms))


def test_plans_the_router_could_not_produce_are_rejected(router, vocab):
    math_roles = [r.name for r in vocab.roles_of("math")]
    llm = vocab.llms[0].name
    bad = {
        "unknown LLM": Plan("Chain", math_roles[:2], [llm, "gpt-17"], task="math"),
        "mixed tasks": Plan("Chain", [math_roles[0], "Historian"], [llm, llm], task="math"),
        "count outside mode": Plan("IO", math_roles[:2], [llm, llm], task="math"),
        "unknown mode": Plan("Swarm", math_roles[:1], [llm], task="math"),
    }
    for what, plan in bad.items():
        with pytest.raises(RoutingError) as info:
            router.log_prob_of([QUERIES[0]], [plan], vocab)
        assert plan.mode in str(info.value) or "gpt-17" in str(info.value) or "Historian" in str(
            info.value), what
    with pytest.raises(RoutingError, match="empty batch"):
        router.route([], vocab)
    with pytest.raises(RoutingError, match="single string"):
        router.route(QUERIES[0], vocab)


def test_a_mode_needing_more_agents_than_the_router_allows_is_named(vocab):
    router = MasRouter(RouterConfig(max_agents=1), encoder=shared_encoder())
    with pytest.raises(RoutingError, match="'Chain' needs at least 2 agents"):
        router.route([QUERIES[0]], vocab)


def test_plugin_assigns_pool_llms_conditioned_on_roles_and_edges(router, vocab):
    roles = ["Python Programmer", "Test Engineer", "A security auditor who reviews code for "
             "injection flaws"]
    names = vocab.names("llms")
    chain = assign_llms(router, QUERIES[1], roles, [(0, 1), (1, 2)], vocab)
    assert len(chain) == 3 and all(name in names for name in chain)

    # It is the router's own LLM head: with the team of a routed plan and the plan's
    # "earlier slots" predecessors, it returns the plan's greedy LLMs.
    with torch.no_grad():
        out = router([QUERIES[1]], vocab, greedy=True)
    plan = out.plans[0]
    earlier = [(i, j) for j in range(plan.k) for i in range(j)]
    assert assign_llms(router, QUERIES[1], plan.roles, earlier, vocab, mode=plan.mode) == list(
        plan.llms
    )

    sampled = {
        tuple(assign_llms(router, QUERIES[1], roles, [], vocab, greedy=False,
                          generator=torch.Generator().manual_seed(seed)))
        for seed in range(10)
    }
    assert len(sampled) > 1
    with pytest.raises(RoutingError, match="edge"):
        assign_llms(router, QUERIES[1], roles, [(0, 3)], vocab)
    with pytest.raises(RoutingError, match="unknown mode"):
        assign_llms(router, QUERIES[1], roles, [], vocab, mode="Swarm")


def test_entropy_matches_the_distributions(router, vocab):
    with torch.no_grad():
        out = router(list(QUERIES), vocab, generator=torch.Generator().manual_seed(5))

    def entropy(p: torch.Tensor) -> float:
        p = p[p > 0]
        return float(-(p * p.log()).sum())

    for b, k in enumerate(out.choices["count"].tolist()):
        expected = entropy(out.probs["task"][b]) + entropy(out.probs["mode"][b]) + entropy(
            out.probs["count"][b]
        ) + sum(entropy(out.probs["roles"][b, s]) + entropy(out.probs["llms"][b, s])
                for s in range(k))
        assert math.isclose(float(out.entropy[b]), expected, rel_tol=1e-4)


def test_static_and_query_passes_equal_one_pass_over_the_whole_graph(router, vocab):
    query_emb = shared_encoder().encode(list(QUERIES))
    data = attach_queries(router.static_graph(vocab), query_emb)
    with torch.no_grad():
        whole = router.graph_encoder(data.x_dict, data.edge_index_dict)
        split = router.embed_graph(query_emb, vocab)
    for node_type, h in whole.items():
        torch.testing.assert_close(split[node_type], h, msg=node_type)


def test_reused_static_pass_follows_weight_updates(vocab):
    torch.manual_seed(0)
    router = MasRouter(RouterConfig(hidden_dim=32, heads=2), encoder=shared_encoder())
    other = MasRouter(RouterConfig(hidden_dim=32, heads=2), encoder=shared_encoder())
    with torch.no_grad():
        before = router(list(QUERIES), vocab, greedy=True).probs["mode"]
        torch.testing.assert_close(router(list(QUERIES), vocab, greedy=True).probs["mode"], before)
        router.load_state_dict(other.state_dict())  # in-place copy into the same tensors
        loaded = router(list(QUERIES), vocab, greedy=True).probs["mode"]
        expected = other(list(QUERIES), vocab, greedy=True).probs["mode"]
        assert not torch.allclose(expected, before)
        torch.testing.assert_close(loaded, expected)
        # An optimizer step changes the weights in place too.
        for param in router.graph_encoder.parameters():
            param.mul_(0.5)
        halved = router(list(QUERIES), vocab, greedy=True).probs["mode"]
        router._static_pass_cache = None
        torch.testing.assert_close(halved, router(list(QUERIES), vocab, greedy=True).probs["mode"])
        assert not torch.allclose(halved, loaded)
