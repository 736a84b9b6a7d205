import pytest

from masr_graph import Plan, RoutingError


def test_plan_round_trips_through_dict():
    plan = Plan(mode="Chain", roles=["Solver", "Checker"], llms=["a", "b"], task="math")
    assert plan.k == 2
    assert Plan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize(
    "roles, llms, edges",
    [([], [], None), (["A"], ["x", "y"], None), (["A", "B"], ["x", "y"], [[0.0]])],
)
def test_plan_rejects_inconsistent_shapes(roles, llms, edges):
    with pytest.raises(RoutingError):
        Plan(mode="IO", roles=roles, llms=llms, edge_logits=edges)
