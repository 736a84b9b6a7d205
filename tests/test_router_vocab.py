"""Node vocabularies, the text-embedding cache and the static routing graph."""
from __future__ import annotations

import pytest
import torch

from masr_graph import ConfigError
from masr_graph.llm.types import LLMSpec
from masr_graph.router import (
    DEFAULT_TASKS, LLMNode, MasRouter, ModeNode, NodeVocab, RoleNode, TextEncoder,
)
from masr_graph.router.encoder import text_key
from masr_graph.router.graph import build_static_graph
from masr_graph.runtime.roles import load_roles
from masr_graph.runtime.topology import get_topology, topology_names

from router_support import MODES, ROLES, one_torch_thread, shared_encoder, small_vocab


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def test_vocab_edits_return_new_validated_vocabularies():
    vocab = small_vocab()
    extra = LLMNode("tiny-1b", "A tiny fast model for trivial questions.", 0.01, 0.02)
    grown = vocab.add_llm(extra)
    assert grown.names("llms")[-1] == "tiny-1b" and len(vocab.llms) == 9
    assert grown.remove_llm("tiny-1b") == vocab
    assert grown.fingerprint != vocab.fingerprint
    assert grown.remove_llm("tiny-1b").fingerprint == vocab.fingerprint
    assert NodeVocab.from_dict(grown.to_dict()) == grown
    with_mode = vocab.add_mode(ModeNode("Star", "Spokes answer, a hub merges them.", 2, None))
    assert with_mode.modes[-1].max_agents is None
    assert vocab.remove_role("Historian").index("roles", "Physician") == 7


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: v.add_llm(v.llms[0]), "duplicate name"),
        (lambda v: v.remove_llm("gpt-17"), "unknown llm 'gpt-17'"),
        (lambda v: v.add_role(RoleNode("Poet", "poetry", "Writes verse.")),
         "belongs to task 'poetry'; known tasks: math, code, knowledge"),
        (lambda v: v.remove_role("Historian").remove_role("Physician").remove_role(
            "Option Eliminator"), "task 'knowledge' has no role"),
        (lambda v: v.add_mode(ModeNode("Pair", "Two agents.", 3, 2)), "below min_agents"),
        (lambda v: v.add_llm(LLMNode("free?", "Unknown price.", float("nan"), 0.1)),
         "price_in must be a finite number"),
        (lambda v: v.add_llm(LLMNode("neg", "Negative price.", 0.1, -1.0)), "price_out"),
        (lambda v: v.add_llm(LLMNode("blank", " ", 0.1, 0.1)), "description"),
    ],
)
def test_invalid_vocabularies_are_refused_with_the_reason(edit, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        edit(small_vocab())


def test_vocab_from_registries_uses_every_topology_and_role():
    llms = small_vocab().llms
    specs = [LLMSpec(m.name, m.name, "replay://llmrouter", m.price_in, m.price_out, m.description)
             for m in llms]
    vocab = NodeVocab.from_registries(specs)
    assert vocab.names("modes") == topology_names()
    assert vocab.names("roles") == list(load_roles())
    assert vocab.names("llms") == [m.name for m in llms]
    assert {r.task for r in vocab.roles} == {t.name for t in DEFAULT_TASKS}
    debate = vocab.modes[vocab.index("modes", "Debate")]
    assert (debate.min_agents, debate.max_agents) == (
        get_topology("Debate").min_agents, get_topology("Debate").max_agents)


def test_encoder_encodes_each_distinct_text_once_and_persists(tmp_path):
    encoder = TextEncoder(tmp_path / "emb.pt")
    texts = ["alpha beta", "gamma delta", "alpha beta"]
    first = encoder.encode(texts)
    assert first.shape == (3, 384) and encoder.texts_encoded == 2
    torch.testing.assert_close(first.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(first[0], first[2])
    again = encoder.encode(["gamma delta", "epsilon"])
    assert encoder.texts_encoded == 3
    torch.testing.assert_close(again[0], first[1])
    encoder.save_cache()

    reloaded = TextEncoder(tmp_path / "emb.pt")
    cached = reloaded.encode(texts)
    assert reloaded.texts_encoded == 0  # served from the file, the model never ran
    torch.testing.assert_close(cached, first)
    # The cache never changes what the model computes.
    torch.testing.assert_close(encoder.encode(["epsilon"], use_cache=False), again[1:],
                               atol=1e-5, rtol=1e-4)


def test_encoders_sharing_a_cache_file_keep_each_others_embeddings(tmp_path):
    """Two runs side by side on one --out: each saves what it encoded; neither drops the other's
    embeddings, and a text both encoded keeps the one saved first."""
    path = tmp_path / "emb.pt"
    first, second = TextEncoder(path), TextEncoder(path)  # both open before either saves
    mine = first.encode(["only the first run's query", "a query both runs see"])
    first.save_cache()
    second.encode(["only the second run's query", "a query both runs see"])
    second._cache[text_key("a query both runs see")] = torch.zeros(384)  # as if encoded apart
    second.save_cache()

    reloaded = TextEncoder(path)
    cached = reloaded.encode(["only the first run's query", "only the second run's query",
                              "a query both runs see"])
    assert reloaded.texts_encoded == 0 and len(reloaded) == 3
    torch.testing.assert_close(cached[0], mine[0])
    torch.testing.assert_close(cached[2], mine[1])  # the file's, saved first
    assert not (tmp_path / "emb.pt.tmp").exists()


def test_encoder_cache_is_bounded_and_refuses_foreign_files(tmp_path):
    encoder = TextEncoder(max_cache_entries=2)
    encoder.encode(["one", "two", "three"])
    assert len(encoder) == 2
    encoder.encode(["two", "three"])
    assert encoder.texts_encoded == 3
    encoder.encode(["one"])  # evicted as least recently used, so encoded again
    assert encoder.texts_encoded == 4
    bogus = tmp_path / "other.pt"
    torch.save({"format": 1, "model": "word2vec", "keys": [], "embeddings": torch.empty(0, 384)},
               bogus)
    with pytest.raises(ConfigError, match="'word2vec'"):
        TextEncoder(bogus)
    with pytest.raises(ConfigError, match="texts\\[1\\] must be a str"):
        encoder.encode(["fine", 3])


def test_static_graph_features_and_edges():
    vocab = small_vocab()
    graph = build_static_graph(vocab, shared_encoder(), role_llm_topk=3, mode_role_topk=2)
    assert graph["llm"].x.shape == (9, 386) and graph["mode"].x.shape == (6, 387)
    torch.testing.assert_close(graph["llm"].x[:, -2:], graph["llm"].price.log1p())
    assert graph["role"].task_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    pairs = graph["role", "suits", "llm"].edge_index
    assert pairs.size(1) <= 3 * (len(ROLES) + 9)
    assert len(set(map(tuple, pairs.T.tolist()))) == pairs.size(1)  # no duplicate edge
    assert set(pairs[0].tolist()) == set(range(len(ROLES)))
    # Each role's most similar LLM by text is among its neighbours.
    sim = graph["role"].text_emb @ graph["llm"].text_emb.T
    for role, best in enumerate(sim.argmax(1).tolist()):
        assert best in pairs[1][pairs[0] == role].tolist()
    torch.testing.assert_close(
        graph["task", "includes", "role"].edge_index,
        torch.stack([graph["role"].task_index, torch.arange(len(ROLES))]),
    )
    assert graph["mode", "hosts", "role"].edge_index[0].unique().numel() == len(MODES)


def test_router_builds_the_static_graph_once_per_vocabulary():
    encoder = shared_encoder()
    router = MasRouter(encoder=encoder)
    vocab = small_vocab()
    graph = router.static_graph(vocab)
    encoded = encoder.texts_encoded
    assert router.static_graph(NodeVocab.from_dict(vocab.to_dict())) is graph
    with torch.no_grad():
        router(["What is 1 + 1?"], vocab)
        router(["What is 1 + 1?"], vocab)
    assert encoder.texts_encoded - encoded <= 1  # only the new query text
