"""Method scores for tests of the protocol's reports (target checks, split comparisons)."""
from __future__ import annotations

from masr_graph.benchmarks.reporting.protocol import MethodScore


def method_score(pair: str, method: str, group: str, lam: float, accuracy: float,
                 usd: float) -> MethodScore:
    """``method``'s score at ``lam`` with the given accuracy and $/query: utility = accuracy −
    λ · $, CIs ± 0.05, 3 seeds of 100 queries; single LLMs and votes are λ-independent."""
    utility = accuracy - lam * usd
    return MethodScore(pair, method, group, lam, 3, 100, utility, utility - 0.05,
                       utility + 0.05, accuracy, accuracy - 0.05, accuracy + 0.05, usd, 0,
                       group in ("single LLM", "fixed vote"))
