"""The router: query texts (and a cost preference λ) in, :class:`~masr_graph.plan.Plan` objects
out.

``MasRouter`` embeds the batch's queries (static node texts come from the encoder's cache),
attaches them to the vocabulary's static graph, runs the heterogeneous graph encoder once for the
whole batch, adds the embedding of each query's λ (utility per $, so one router covers the whole
accuracy–cost front and is steered at inference) and then runs the cascade, in order:

1. task (:class:`TaskClassifier`),
2. collaboration mode through the variational latent ``z`` (:class:`ModeSelector`),
3. agent count ``k`` masked to the mode's range (:class:`AgentCounter`),
4. one role per slot, sequentially, among the task's roles (:class:`RoleAllocator`),
5. one LLM per agent, sequentially, conditioned on the LLMs already chosen and carrying a
   ``-λ · price`` term (:class:`LLMRouter`).

Every decision is a categorical draw whose log-probability is kept, so ``log_prob`` of a plan is
exactly the sum of its stages' log-probabilities (slots at or beyond ``k`` excluded) and
:meth:`MasRouter.log_prob_of` recomputes it for any given plan. :meth:`MasRouter.plan_log_probs`
scores a whole library of candidate plans for every query of a batch at once (the graph pass runs
once per query), which is what library decoding (:meth:`MasRouter.route` with ``library=``) and
the library objective of :mod:`masr_graph.router.library` use.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional, Sequence, TypeVar, Union

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from ..errors import ConfigError, RoutingError
from ..plan import Plan
from .agent_counter import AgentCounter
from .encoder import EMBEDDING_DIM, TextEncoder
from .gnn import HeteroGraphEncoder
from .graph import attach_queries, build_static_graph
from .llm_router import LLMRouter, earlier_slots, typical_call_cost
from .mode_selector import ModeSelector
from .role_allocator import RoleAllocator
from .scoring import mlp
from .task_classifier import TaskClassifier
from .vocab import NodeVocab

STAGES: tuple[str, ...] = ("task", "mode", "count", "roles", "llms")
"""Names of the cascade stages, the keys of :attr:`RouterOutput.stage_log_probs`."""

Queries = Union[Sequence[str], Tensor]
Lambdas = Union[float, Sequence[float], Tensor]
"""The cost preference λ (utility per $): one value for the batch or one per query."""

LAMBDA_FEATURES = 3


def lambda_features(cost_lambda: Tensor) -> Tensor:
    """``[B, 3]`` features of ``[B]`` λ values: ``log10(1 + λ)`` on two scales (λ spans six
    orders of magnitude, from "cost is nothing" to "cost is everything") and ``λ > 0``."""
    scaled = torch.log10(1.0 + cost_lambda)
    return torch.stack([scaled / 5.0, torch.log10(1.0 + cost_lambda / 100.0) / 3.0,
                        (cost_lambda > 0).to(cost_lambda.dtype)], -1)


ConfigT = TypeVar("ConfigT")


def config_from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
    """Rebuild a config dataclass saved with ``asdict`` (checkpoints), naming unknown fields.

    Raises:
        ConfigError: ``data`` has fields ``cls`` does not (e.g. a checkpoint from a newer version).
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(sorted(known))}"
        )
    return cls(**data)


@dataclass(frozen=True)
class RouterConfig:
    """Sizes and graph-construction settings of a :class:`MasRouter` (stored in checkpoints).

    Args:
        text_dim: size of the text embeddings (384 for MiniLM).
        hidden_dim: size of the graph embeddings; divisible by ``heads``.
        latent_dim: size of the mode selector's latent ``z``.
        heads: attention heads of the HGT layers.
        num_layers: HGT layers.
        max_agents: largest agent count the router can choose; modes allowing more are capped,
            a mode needing more (``min_agents > max_agents``) cannot be routed to.
        role_llm_topk: role–LLM similarity edges per node (see :mod:`.graph`).
        mode_role_topk: mode–role similarity edges per node.
        query_role_topk: roles attached to each query node.
        query_llm_topk: LLMs attached to each query node.
        team_aware_llms: condition each slot's LLM on the LLMs chosen for earlier slots (their
            mean embedding and the repeat prior, see :mod:`.llm_router`); ``False`` chooses every
            slot's LLM independently (the ablation).

    Raises:
        ConfigError: a size is not a positive int, ``team_aware_llms`` not a bool, or
            ``hidden_dim % heads != 0``.
    """

    text_dim: int = EMBEDDING_DIM
    hidden_dim: int = 64
    latent_dim: int = 16
    heads: int = 4
    num_layers: int = 2
    max_agents: int = 6
    role_llm_topk: int = 8
    mode_role_topk: int = 8
    query_role_topk: int = 16
    query_llm_topk: int = 16
    team_aware_llms: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.team_aware_llms, bool):
            raise ConfigError(f"RouterConfig.team_aware_llms must be a bool "
                              f"(got {self.team_aware_llms!r})")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "team_aware_llms":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"RouterConfig.{f.name} must be an int >= 1 (got {value!r})")
        if self.hidden_dim % self.heads:
            raise ConfigError(
                f"RouterConfig.hidden_dim ({self.hidden_dim}) must be divisible by heads "
                f"({self.heads})"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RouterConfig":
        return config_from_dict(cls, data)


@dataclass
class RouterOutput:
    """What one forward pass of :class:`MasRouter` returns for a batch of ``B`` queries.

    Attributes:
        plans: one :class:`Plan` per query, with ``probs`` holding the probability of each
            decision for display.
        log_prob: ``[B]`` log-probability of each plan under the router, the sum of
            ``stage_log_probs`` (a task given as a label is not a decision and counts 0).
        stage_log_probs: ``[B]`` per stage in :data:`STAGES`; ``roles`` and ``llms`` are summed
            over the plan's ``k`` agents.
        entropy: ``[B]`` sum of the entropies of the distributions each decision was drawn from
            (same slots as ``log_prob``).
        kl: ``[B]`` KL divergence of the latent posterior to ``N(0, I)``.
        task_logits: ``[B, T]`` task logits (for the cross-entropy on labelled queries).
        latent: ``[B, Z]`` the latent ``z`` used (pass to :meth:`MasRouter.log_prob_of` to
            re-score sampled plans exactly).
        probs: the full distributions: ``task [B, T]``, ``mode [B, M]``, ``count [B, K]``
            (column ``j`` is ``k = j + 1``), ``roles [B, S, R]``, ``llms [B, S, L]`` where
            ``S`` is the largest ``k`` of the batch; zero on invalid choices.
        choices: chosen indices: ``task [B]``, ``mode [B]``, ``count [B]`` (``k``),
            ``roles [B, S]``, ``llms [B, S]``; slot ``s`` of query ``b`` is part of the plan iff
            ``s < count[b]``.
        task_decided: ``[B]`` bool, True where the task was the router's decision (no label).
    """

    plans: list[Plan]
    log_prob: Tensor
    stage_log_probs: dict[str, Tensor]
    entropy: Tensor
    kl: Tensor
    task_logits: Tensor
    latent: Tensor
    probs: dict[str, Tensor]
    choices: dict[str, Tensor]
    task_decided: Tensor


class MasRouter(nn.Module):
    """Graph-neural multi-agent-system router (MasRouter, arXiv 2502.11133) on PyG.

    Args:
        config: sizes and graph settings; default :class:`RouterConfig` ``()``.
        encoder: text encoder whose cache holds the node texts; created on first use when
            ``None`` (loading MiniLM takes a few seconds). Not part of the module's state.

    No parameter is tied to a particular task, mode, role or LLM: any :class:`NodeVocab` can be
    passed to any call, including vocabularies with nodes added after training.
    """

    def __init__(
        self, config: Optional[RouterConfig] = None, encoder: Optional[TextEncoder] = None
    ) -> None:
        super().__init__()
        self.config = config or RouterConfig()
        c = self.config
        self._encoder = encoder
        self.graph_encoder = HeteroGraphEncoder(c.text_dim, c.hidden_dim, c.heads, c.num_layers)
        self.task_classifier = TaskClassifier(c.hidden_dim)
        self.mode_selector = ModeSelector(c.hidden_dim, c.latent_dim)
        self.agent_counter = AgentCounter(c.hidden_dim, c.latent_dim, c.max_agents)
        self.role_allocator = RoleAllocator(c.hidden_dim, c.latent_dim)
        self.llm_router = LLMRouter(c.hidden_dim, c.latent_dim, team_aware=c.team_aware_llms)
        self.lambda_encoder = mlp(LAMBDA_FEATURES, c.hidden_dim, c.hidden_dim)
        # The query's own text embedding, straight to the cascade: after the graph layers a
        # query node is mostly what its neighbours say, and per-query choices need its identity.
        self.query_projection = nn.Linear(c.text_dim, c.hidden_dim)
        self._static_graphs: OrderedDict[str, HeteroData] = OrderedDict()
        self._static_pass_cache: Optional[tuple[Any, list[dict[str, Tensor]]]] = None

    @property
    def encoder(self) -> TextEncoder:
        """The text encoder (created on first use)."""
        if self._encoder is None:
            self._encoder = TextEncoder()
        return self._encoder

    # ---- graph ----------------------------------------------------------------------------
    def static_graph(self, vocab: NodeVocab) -> HeteroData:
        """The query-independent graph of ``vocab``, built once per distinct vocabulary.

        Raises:
            RoutingError: a mode needs more agents than ``config.max_agents``.
        """
        key = vocab.fingerprint
        cached = self._static_graphs.get(key)
        if cached is not None:
            self._static_graphs.move_to_end(key)
            return cached
        too_big = [m for m in vocab.modes if m.min_agents > self.config.max_agents]
        if too_big:
            raise RoutingError(
                f"mode {too_big[0].name!r} needs at least {too_big[0].min_agents} agents but "
                f"this router chooses at most max_agents={self.config.max_agents}; remove the "
                f"mode or use a router trained with a larger max_agents"
            )
        graph = build_static_graph(
            vocab, self.encoder,
            role_llm_topk=self.config.role_llm_topk, mode_role_topk=self.config.mode_role_topk,
        )
        self._static_graphs[key] = graph
        while len(self._static_graphs) > 4:
            self._static_graphs.popitem(last=False)
        return graph

    def embed_queries(self, queries: Queries) -> Tensor:
        """``[B, text_dim]`` embeddings of ``queries`` (texts, or embeddings passed through).

        Raises:
            RoutingError: the batch is empty or the embeddings have the wrong shape.
        """
        if isinstance(queries, Tensor):
            if queries.dim() != 2 or queries.size(1) != self.config.text_dim:
                raise RoutingError(
                    f"query embeddings must be [B, {self.config.text_dim}] "
                    f"(got {list(queries.shape)})"
                )
            embedded = queries.float()
        elif isinstance(queries, str):
            raise RoutingError("queries must be a list of strings, not a single string")
        else:
            embedded = self.encoder.encode(list(queries))
        if embedded.size(0) == 0:
            raise RoutingError("cannot route an empty batch of queries")
        return embedded

    def embed_graph(self, query_emb: Tensor, vocab: NodeVocab) -> dict[str, Tensor]:
        """Graph embeddings of every node for a batch.

        Args:
            query_emb: ``[B, text_dim]``.

        Returns:
            ``[N_type, hidden_dim]`` per node type (``query``, ``task``, ``mode``, ``role``,
            ``llm``).
        """
        static = self.static_graph(vocab)
        data = attach_queries(
            static, query_emb,
            query_role_topk=self.config.query_role_topk,
            query_llm_topk=self.config.query_llm_topk,
        )
        static_layers = self._static_pass(static, vocab)
        query_edges = {e: data[e].edge_index for e in data.edge_types if e[-1] == "query"}
        dtype = next(self.parameters()).dtype
        h = dict(static_layers[-1])
        h["query"] = self.graph_encoder.encode_queries(
            data["query"].x.to(dtype), static_layers, query_edges
        )
        return h

    def _static_pass(self, static: HeteroData, vocab: NodeVocab) -> list[dict[str, Tensor]]:
        """Static-node embeddings of every layer; without autograd (routing, evaluation) they are
        reused until the vocabulary or the encoder's weights change."""
        params = list(self.graph_encoder.parameters())
        key = (vocab.fingerprint, tuple((p.data_ptr(), p._version, p.dtype) for p in params))
        grad = torch.is_grad_enabled()
        if not grad and self._static_pass_cache is not None and self._static_pass_cache[0] == key:
            return self._static_pass_cache[1]
        dtype = params[0].dtype
        layers = self.graph_encoder.encode_static(
            {t: static[t].x.to(dtype) for t in static.node_types},
            {e: static[e].edge_index for e in static.edge_types},
        )
        self._static_pass_cache = None if grad else (key, layers)
        return layers

    # ---- cascade --------------------------------------------------------------------------
    def lambdas(self, cost_lambda: Lambdas, batch: int) -> Tensor:
        """``[batch]`` λ values from a scalar or one per query.

        Raises:
            RoutingError: a negative or non-finite λ, or the wrong number of values.
        """
        values = torch.as_tensor(cost_lambda, dtype=torch.float32).reshape(-1)
        if values.numel() == 1:
            values = values.expand(batch)
        if values.numel() != batch:
            raise RoutingError(f"cost_lambda has {values.numel()} values for {batch} queries")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise RoutingError(f"cost_lambda must be finite and >= 0 (got {values.tolist()[:4]})")
        return values.to(self._device())

    def query_states(self, queries: Queries, vocab: NodeVocab, cost_lambda: Lambdas
                      ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Graph embeddings of every node, the queries' cascade states (graph embedding plus
        λ embedding, ``[B, H]``) and their λ values ``[B]``."""
        query_emb = self.embed_queries(queries).to(self._device())
        h = self.embed_graph(query_emb, vocab)
        lam = self.lambdas(cost_lambda, query_emb.size(0))
        dtype = h["query"].dtype
        q = (h["query"] + self.query_projection(query_emb.to(dtype))
             + self.lambda_encoder(lambda_features(lam).to(dtype)))
        return h, q, lam

    def forward(
        self,
        queries: Queries,
        vocab: NodeVocab,
        *,
        cost_lambda: Lambdas = 0.0,
        greedy: bool = False,
        task_labels: Optional[Sequence[Optional[str]]] = None,
        generator: Optional[torch.Generator] = None,
        plans: Optional[Sequence[Plan]] = None,
        latent: Optional[Tensor] = None,
    ) -> RouterOutput:
        """Route a batch of queries over ``vocab``.

        Args:
            queries: ``B`` query texts, or their ``[B, text_dim]`` embeddings.
            vocab: the tasks, modes, roles and LLMs to choose from.
            cost_lambda: λ, utility per $ (one value, or one per query): the cost preference
                the plans are chosen for.
            greedy: take the most probable choice at every stage (and the posterior mean of
                ``z``) instead of sampling.
            task_labels: optional task name per query (``None`` where unknown). A labelled
                query uses its label as task; it is not a decision (log-prob 0 for that stage).
            generator: random source for sampling (seeded training, reproducible sampling).
            plans: score these plans instead of choosing (see :meth:`log_prob_of`).
            latent: ``[B, Z]`` latent to use instead of drawing one.

        Returns:
            :class:`RouterOutput`.

        Raises:
            RoutingError: empty batch, bad shapes, a bad λ, a mode needing more agents than
                ``max_agents``, or a given plan the router could never produce.
            ConfigError: a task label is not a task of ``vocab``.
        """
        h, q, lam = self.query_states(queries, vocab, cost_lambda)
        batch = q.size(0)
        for label, given in (("task_labels", task_labels), ("plans", plans)):
            if given is not None and len(given) != batch:
                raise RoutingError(f"{label} has {len(given)} entries for {batch} queries")
        forced = _plan_indices(plans, vocab, self.config.max_agents) if plans is not None else {}
        labels = _task_label_indices(task_labels, vocab, batch)
        return self._cascade(h, q, lam, vocab, forced, labels, greedy=greedy,
                             generator=generator, latent=latent)

    def _prefix_stages(
        self,
        h: dict[str, Tensor],
        q: Tensor,
        vocab: NodeVocab,
        forced: dict[str, Tensor],
        labels: Tensor,
        *,
        greedy: bool,
        generator: Optional[torch.Generator],
        latent: Optional[Tensor],
    ) -> "_Prefix":
        """Stages 1-4 (task, mode, agent count, roles) for ``[B, H]`` query states."""
        batch = q.size(0)
        if latent is not None and latent.shape != (batch, self.config.latent_dim):
            raise RoutingError(
                f"latent must be [{batch}, {self.config.latent_dim}] (got {list(latent.shape)})"
            )
        static = self.static_graph(vocab)
        forced_task = forced.get("task", torch.full((batch,), -1))
        task_logits, task = self.task_classifier(
            q, h["task"], forced=torch.where(labels >= 0, labels, forced_task),
            greedy=greedy, generator=generator,
        )
        task_emb = h["task"][task.index]
        mode_valid = torch.ones(len(vocab.modes), dtype=torch.bool)
        mode = self.mode_selector(
            q, task_emb, h["mode"], mode_valid, forced=forced.get("mode"), latent=latent,
            greedy=greedy, generator=generator,
        )
        mode_index = mode.choice.index
        mode_emb = h["mode"][mode_index]
        k, count = self.agent_counter(
            q, mode.latent, mode_emb,
            static["mode"].min_agents[mode_index],
            static["mode"].max_agents[mode_index].clamp_max(self.config.max_agents),
            forced=forced.get("count"), greedy=greedy, generator=generator,
        )
        slots = int(k.max())
        active = torch.arange(slots).unsqueeze(0) < k.unsqueeze(1)  # [B, S]
        allowed = static["role"].task_index.unsqueeze(0) == task.index.unsqueeze(1)  # [B, R]
        roles = self.role_allocator(
            q, task_emb, mode_emb, mode.latent, h["role"], allowed, slots,
            forced=_slots(forced.get("roles"), slots), greedy=greedy, generator=generator,
        )
        return _Prefix(task_logits, task, labels < 0, mode, mode_emb, k, count, active, roles)

    def _cascade(
        self,
        h: dict[str, Tensor],
        q: Tensor,
        lam: Tensor,
        vocab: NodeVocab,
        forced: dict[str, Tensor],
        labels: Tensor,
        *,
        greedy: bool,
        generator: Optional[torch.Generator],
        latent: Optional[Tensor],
    ) -> RouterOutput:
        """The five stages for ``[B, H]`` query states (rows may repeat a query)."""
        pre = self._prefix_stages(h, q, vocab, forced, labels, greedy=greedy,
                                  generator=generator, latent=latent)
        static = self.static_graph(vocab)
        task, mode, count, roles, active = pre.task, pre.mode, pre.count, pre.roles, pre.active
        slots = active.size(1)
        llms = self.llm_router(
            q, mode.latent, pre.mode_emb, h["role"][roles.index], earlier_slots(slots), h["llm"],
            typical_call_cost(static["llm"].price).to(q.dtype), lam,
            forced=_slots(forced.get("llms"), slots), greedy=greedy, generator=generator,
        )
        stage_log_probs = {**pre.stage_log_probs(), "llms": (llms.log_prob * active).sum(1)}
        entropy = pre.entropy() + (llms.entropy * active).sum(1)
        choices = {
            "task": task.index, "mode": mode.choice.index, "count": pre.k,
            "roles": roles.index, "llms": llms.index,
        }
        decision_probs = {
            "task": task.log_prob.exp(), "mode": mode.choice.log_prob.exp(),
            "k": count.log_prob.exp(), "roles": roles.log_prob.exp(), "llms": llms.log_prob.exp(),
        }
        return RouterOutput(
            plans=_make_plans(vocab, choices, decision_probs),
            log_prob=sum(stage_log_probs.values()),
            stage_log_probs=stage_log_probs,
            entropy=entropy,
            kl=mode.kl,
            task_logits=pre.task_logits,
            latent=mode.latent,
            probs={
                "task": task.probs, "mode": mode.choice.probs, "count": count.probs,
                "roles": roles.probs, "llms": llms.probs,
            },
            choices=choices,
            task_decided=pre.task_decided,
        )

    def plan_log_probs(
        self,
        queries: Queries,
        library: Sequence[Plan],
        vocab: NodeVocab,
        *,
        cost_lambda: Lambdas = 0.0,
        task_labels: Optional[Sequence[Optional[str]]] = None,
    ) -> Tensor:
        """``[B, P]`` log-probability of every plan of ``library`` for every query, at the
        posterior mean of ``z`` (what greedy decoding uses).

        The graph pass runs once per query; only the cascade runs per (query, plan) pair.

        Raises:
            RoutingError: as :meth:`forward`, or an empty library.
        """
        return self.score_library(queries, library, vocab, cost_lambda=cost_lambda,
                                  task_labels=task_labels)[0]

    def score_library(
        self,
        queries: Queries,
        library: Sequence[Plan],
        vocab: NodeVocab,
        *,
        cost_lambda: Lambdas = 0.0,
        task_labels: Optional[Sequence[Optional[str]]] = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`plan_log_probs` with the per-query task logits ``[B, T]`` and latent KL
        ``[B]`` of the same pass (what training on a library also needs).

        Plans sharing their task, mode, agent count and roles share stages 1-4, so those run
        once per (query, distinct prefix) and only the LLM stage runs per (query, plan)."""
        if not library:
            raise RoutingError("a plan library needs at least one plan (got none)")
        h, q, lam = self.query_states(queries, vocab, cost_lambda)
        batch, size = q.size(0), len(library)
        prefix_of: dict[tuple, int] = {}
        prefix_plans: list[Plan] = []
        for plan in library:
            key = (plan.task, plan.mode, plan.k, plan.roles)
            if key not in prefix_of:
                prefix_of[key] = len(prefix_plans)
                prefix_plans.append(plan)
        which = torch.tensor([prefix_of[(p.task, p.mode, p.k, p.roles)] for p in library])
        prefixes = len(prefix_plans)
        forced_prefix = _plan_indices(prefix_plans, vocab, self.config.max_agents)
        forced = {key: value.repeat(batch, *([1] * (value.dim() - 1)))
                  for key, value in forced_prefix.items() if key != "llms"}
        labels = _task_label_indices(task_labels, vocab, batch).repeat_interleave(prefixes)
        pre = self._prefix_stages(h, q.repeat_interleave(prefixes, 0), vocab, forced, labels,
                                  greedy=True, generator=None, latent=None)
        prefix_log_prob = sum(pre.stage_log_probs().values()).view(batch, prefixes)
        rows = (torch.arange(batch).unsqueeze(1) * prefixes + which.unsqueeze(0)).reshape(-1)
        static = self.static_graph(vocab)
        slots = pre.active.size(1)
        forced_llms = _plan_indices(library, vocab, self.config.max_agents)["llms"]
        padded = torch.full((size, slots), -1, dtype=torch.long)
        padded[:, : forced_llms.size(1)] = forced_llms[:, :slots]
        llms = self.llm_router(
            q.repeat_interleave(size, 0), pre.mode.latent[rows], pre.mode_emb[rows],
            h["role"][pre.roles.index[rows]], earlier_slots(slots), h["llm"],
            typical_call_cost(static["llm"].price).to(q.dtype), lam.repeat_interleave(size),
            forced=padded.repeat(batch, 1), greedy=True,
        )
        llm_log_prob = (llms.log_prob * pre.active[rows]).sum(1).view(batch, size)
        scores = prefix_log_prob.gather(1, which.unsqueeze(0).expand(batch, -1)) + llm_log_prob
        return (scores, pre.task_logits.view(batch, prefixes, -1)[:, 0],
                pre.mode.kl.view(batch, prefixes)[:, 0])

    @torch.no_grad()
    def route(
        self,
        queries: Queries,
        vocab: NodeVocab,
        greedy: bool = True,
        *,
        cost_lambda: Lambdas = 0.0,
        library: Optional[Sequence[Plan]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> list[Plan]:
        """Plans for ``queries`` without tracking gradients.

        Args:
            queries: query texts or ``[B, text_dim]`` embeddings.
            vocab: the pool to route over.
            greedy: most probable choice at every stage; ``False`` samples one plan.
            cost_lambda: λ, utility per $, one value or one per query.
            library: candidate plans; when given, each query gets the library plan of highest
                probability under the router (its MAP plan among them; ``greedy`` is then
                ignored). Stage-wise greedy decoding can miss that plan when probability mass
                is spread over many plans sharing an early decision.
            generator: random source when sampling.
        """
        if library is not None:
            scores = self.plan_log_probs(queries, library, vocab, cost_lambda=cost_lambda)
            best = scores.argmax(-1).tolist()
            probs = scores.exp()
            return [library[i].with_probs({"plan": float(probs[b, i])})
                    for b, i in enumerate(best)]
        return self.forward(queries, vocab, cost_lambda=cost_lambda, greedy=greedy,
                            generator=generator).plans

    def log_prob_of(
        self,
        queries: Queries,
        plans: Sequence[Plan],
        vocab: NodeVocab,
        *,
        cost_lambda: Lambdas = 0.0,
        latent: Optional[Tensor] = None,
        task_labels: Optional[Sequence[Optional[str]]] = None,
    ) -> Tensor:
        """``[B]`` log-probability of the given plans under the router.

        The mode selector conditions on a latent ``z``: pass the ``latent`` of the
        :class:`RouterOutput` that sampled the plans to reproduce its ``log_prob`` exactly;
        without it the posterior mean is used (what greedy decoding uses).

        Raises:
            RoutingError: a plan names an unknown mode, role or LLM, mixes roles of several
                tasks, or has an agent count outside its mode's range or above ``max_agents``.
        """
        return self.forward(
            queries, vocab, cost_lambda=cost_lambda, greedy=True, plans=plans, latent=latent,
            task_labels=task_labels,
        ).log_prob

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def _slots(forced: Optional[Tensor], slots: int) -> Optional[Tensor]:
    return None if forced is None else forced[:, :slots]


def _task_label_indices(
    labels: Optional[Sequence[Optional[str]]], vocab: NodeVocab, batch: int
) -> Tensor:
    if labels is None:
        return torch.full((batch,), -1, dtype=torch.long)
    return torch.tensor(
        [-1 if label is None else vocab.index("tasks", label) for label in labels],
        dtype=torch.long,
    )


def _plan_indices(plans: Sequence[Plan], vocab: NodeVocab, max_agents: int) -> dict[str, Tensor]:
    """Index tensors of given plans (``-1`` pads slots beyond a plan's ``k``)."""
    width = max(plan.k for plan in plans)
    out = {
        "task": torch.empty(len(plans), dtype=torch.long),
        "mode": torch.empty(len(plans), dtype=torch.long),
        "count": torch.empty(len(plans), dtype=torch.long),
        "roles": torch.full((len(plans), width), -1, dtype=torch.long),
        "llms": torch.full((len(plans), width), -1, dtype=torch.long),
    }
    for b, plan in enumerate(plans):
        try:
            mode = vocab.modes[vocab.index("modes", plan.mode)]
            roles = [vocab.roles[vocab.index("roles", name)] for name in plan.roles]
            llms = [vocab.index("llms", name) for name in plan.llms]
            task = plan.task if plan.task is not None else roles[0].task
            out["task"][b] = vocab.index("tasks", task)
        except ConfigError as exc:
            raise RoutingError(f"plan {b}: {exc}") from exc
        strangers = sorted({r.name for r in roles if r.task != task})
        if strangers:
            raise RoutingError(
                f"plan {b}: role(s) {', '.join(strangers)} do not belong to task {task!r}; the "
                f"router only staffs a plan with roles of its task"
            )
        high = max_agents if mode.max_agents is None else min(mode.max_agents, max_agents)
        if not mode.min_agents <= plan.k <= high:
            raise RoutingError(
                f"plan {b}: {plan.k} agents in mode {mode.name!r}, which allows "
                f"{mode.min_agents}..{high} here"
            )
        out["mode"][b] = vocab.index("modes", plan.mode)
        out["count"][b] = plan.k
        out["roles"][b, : plan.k] = torch.tensor([vocab.index("roles", n) for n in plan.roles])
        out["llms"][b, : plan.k] = torch.tensor(llms)
    return out


def _make_plans(
    vocab: NodeVocab, choices: dict[str, Tensor], decision_probs: dict[str, Tensor]
) -> list[Plan]:
    # One .tolist() per tensor: converting element by element dominates large batches.
    task, mode, count = (choices[key].tolist() for key in ("task", "mode", "count"))
    roles, llms = choices["roles"].tolist(), choices["llms"].tolist()
    p = {key: value.detach().tolist() for key, value in decision_probs.items()}
    plans = []
    for b, k in enumerate(count):
        plans.append(
            Plan(
                mode=vocab.modes[mode[b]].name,
                roles=tuple(vocab.roles[i].name for i in roles[b][:k]),
                llms=tuple(vocab.llms[i].name for i in llms[b][:k]),
                task=vocab.tasks[task[b]].name,
                probs={
                    "task": p["task"][b], "mode": p["mode"][b], "k": p["k"][b],
                    "roles": p["roles"][b][:k], "llms": p["llms"][b][:k],
                },
            )
        )
    return plans


@dataclass
class _Prefix:
    """What stages 1-4 decided for a batch of rows (see :meth:`MasRouter._prefix_stages`)."""

    task_logits: Tensor
    task: Any
    task_decided: Tensor
    mode: Any
    mode_emb: Tensor
    k: Tensor
    count: Any
    active: Tensor
    roles: Any

    def stage_log_probs(self) -> dict[str, Tensor]:
        return {
            "task": self.task.log_prob * self.task_decided,
            "mode": self.mode.choice.log_prob,
            "count": self.count.log_prob,
            "roles": (self.roles.log_prob * self.active).sum(1),
        }

    def entropy(self) -> Tensor:
        return (self.task.entropy * self.task_decided + self.mode.choice.entropy
                + self.count.entropy + (self.roles.entropy * self.active).sum(1))
