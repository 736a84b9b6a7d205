"""The graph-neural router: query → task → mode (variational latent) → agent count → roles →
LLM per agent, over a heterogeneous PyG graph of queries, tasks, modes, roles and LLMs.

Typical use::

    from masr_graph.router import MasRouter, NodeVocab, TextEncoder, Trainer
    vocab = NodeVocab.from_registries(pool.specs.values())
    router = MasRouter(encoder=TextEncoder("~/.cache/masr/embeddings.pt"))
    plans = router.route(["What is 17 * 23?"], vocab)
"""
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .controller import STAGES, MasRouter, RouterConfig, RouterOutput
from .encoder import TextEncoder
from .plugin import assign_llms
from .trainer import RewardBaseline, RewardError, StepStats, Trainer, TrainerConfig
from .vocab import DEFAULT_TASKS, LLMNode, ModeNode, NodeVocab, RoleNode, TaskNode

__all__ = [
    "Checkpoint",
    "DEFAULT_TASKS",
    "LLMNode",
    "MasRouter",
    "ModeNode",
    "NodeVocab",
    "RewardBaseline",
    "RewardError",
    "RoleNode",
    "RouterConfig",
    "RouterOutput",
    "STAGES",
    "StepStats",
    "TaskNode",
    "TextEncoder",
    "Trainer",
    "TrainerConfig",
    "assign_llms",
    "load_checkpoint",
    "save_checkpoint",
]
