"""Shared material of the router tests: one MiniLM encoder per test process and small vocabularies
built from real texts (the 9 LLMs of the LLMRouter outcome table, role and mode descriptions in
the style of the registries)."""
from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from masr_graph.router import DEFAULT_TASKS, LLMNode, ModeNode, NodeVocab, RoleNode, TextEncoder

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$MASR_DATA_DIR``, else ``../shared/data`` next to the repository."""
    return Path(os.environ.get("MASR_DATA_DIR") or REPO.parent / "shared" / "data")


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run with one intra-op thread: the router tests' tensors are tiny, and on a loaded 2-core
    machine thread synchronisation makes each small op 10x slower than the op itself."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def shared_encoder() -> TextEncoder:
    """Loading MiniLM takes seconds: every router test module shares this one."""
    return TextEncoder()


@functools.lru_cache(maxsize=None)
def outcome_llms() -> tuple[LLMNode, ...]:
    """The 9 LLMs that have recorded outcomes, with descriptions and prices from the data set."""
    folder = data_dir() / "outcomes" / "llmrouter"
    specs = json.loads((folder / "default_llm.json").read_text())
    scored = json.loads((folder / "test.json").read_text())[0]["scores"]
    return tuple(
        LLMNode(name, spec["feature"], spec["input_price"], spec["output_price"])
        for name, spec in specs.items()
        if name in scored
    )


MODES: tuple[ModeNode, ...] = (
    ModeNode("IO", "Input-output: one agent answers the query directly in a single pass, "
             "the cheapest mode, suited to easy or factual queries.", 1, 1),
    ModeNode("CoT", "Chain of thought: one agent reasons step by step before answering.", 1, 1),
    ModeNode("Chain", "Agents work one after another, each refining the previous agent's work.",
             2, 4),
    ModeNode("FullConnected", "Each agent reads all earlier agents' answers and adds its own "
             "perspective; a final node consolidates.", 2, 5),
    ModeNode("Debate", "Several agents answer independently, then argue over rounds and revise; "
             "a judge gives the final answer.", 2, 5),
    ModeNode("Reflection", "An agent answers, critiques its own answer and revises it.", 1, 3),
)

ROLES: tuple[RoleNode, ...] = (
    RoleNode("Algebra Specialist", "math", "Solves equations, manipulates expressions and "
             "systems; strong on symbolic algebra."),
    RoleNode("Number Theorist", "math", "Works with divisibility, primes, remainders and "
             "modular arithmetic."),
    RoleNode("Solution Verifier", "math", "Re-checks every step of a proposed solution and "
             "catches arithmetic slips."),
    RoleNode("Word Problem Modeler", "math", "Turns a story problem into quantities and "
             "equations before solving."),
    RoleNode("Python Programmer", "code", "Writes clean, correct Python functions from a "
             "specification."),
    RoleNode("Test Engineer", "code", "Designs unit tests and edge cases to expose bugs in "
             "code."),
    RoleNode("Bug Fixer", "code", "Reads failing code and error messages and repairs the "
             "defect."),
    RoleNode("Historian", "knowledge", "Knows historical events, dates and their causes."),
    RoleNode("Physician", "knowledge", "Answers medical and biological questions from "
             "clinical knowledge."),
    RoleNode("Option Eliminator", "knowledge", "Rules out wrong multiple-choice options one "
             "by one."),
)

QUERIES: tuple[str, ...] = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Write a Python function to find the longest common prefix of a list of strings.",
    "Which of the following was a cause of the French Revolution? A) The printing press "
    "B) Fiscal crisis of the monarchy C) The Cold War D) The steam engine",
    "Find the remainder when 2^100 is divided by 7.",
    'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""',
    "What is the main function of red blood cells? A) Fight infection B) Carry oxygen "
    "C) Clot blood D) Produce hormones",
    "A train travels 120 km in 1.5 hours. What is its average speed in km/h?",
    "Implement a function that returns the n-th Fibonacci number using iteration.",
)


def small_vocab(llms: tuple[LLMNode, ...] | None = None) -> NodeVocab:
    """3 tasks, 6 modes, 10 roles and (by default) the 9 outcome LLMs."""
    return NodeVocab(DEFAULT_TASKS, MODES, ROLES, llms if llms is not None else outcome_llms())
