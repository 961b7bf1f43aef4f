"""The global budget: every layer's rank chosen together, greedily over singular values.

Start every layer at rank 1 (the cheapest factorisation) and then, while the budget allows,
buy the single next singular value -- in any layer -- that removes the most (sensitivity-
weighted, relative squared) error per parameter (or MAC) it costs. A layer may also be
bought back whole ("kept dense"): once its rank nears the break-even point a factorisation
costs as much as the dense layer, so that is the only way up. Because each layer's singular
values fall, the error removed per parameter falls too, and the greedy order is the order of
the Lagrangian relaxation of "least total error at this cost" (exact up to the last step).
"""

from __future__ import annotations

from penjing.low_rank.plan import Candidate, State


def budget_states(candidates: list[Candidate], *, metric: str, fraction: float, total: int,
                  fixed: int) -> dict[str, State]:
    """Ranks for ``candidates`` so that at most ``fraction`` of ``total`` is kept.

    ``total`` is the cost the budget is over and ``fixed`` the part of it that is not a
    candidate (``pj.lowrank`` passes the candidates' own cost and 0: the budget counts only
    the layers it can act on). Raises ValueError when even rank 1 everywhere is over budget.
    """
    target = fraction * total
    states: dict[str, State] = {}
    for cand in candidates:
        start = cand.min_state()
        states[cand.name] = start if cand.pays(start, metric) else None
    current = fixed + sum(c.cost(states[c.name], metric) for c in candidates)
    if current > target:
        unit = "parameters" if metric == "params" else "multiply-accumulates"
        raise ValueError(
            f"a budget of {fraction:.1%} of the factorisable layers' {unit} cannot be met: at "
            f"rank 1 in every one of them {current:,} of {total:,} {unit} are left "
            f"({current / total:.1%}); raise the budget or select more layers")
    while True:
        best: tuple[float, Candidate, State, int] | None = None
        for cand in candidates:
            state = states[cand.name]
            if state is None:
                continue
            here_cost, here_error = cand.cost(state, metric), cand.weighted_error(state)
            options = [s for s in cand.next_states(state) if cand.pays(s, metric)] + [None]
            for option in options:
                extra = cand.cost(option, metric) - here_cost
                gain = here_error - cand.weighted_error(option)
                if gain <= 0 or current + extra > target:
                    continue
                ratio = float("inf") if extra <= 0 else gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, cand, option, extra)
        if best is None:
            return states
        _, cand, option, extra = best
        states[cand.name] = option
        current += extra
