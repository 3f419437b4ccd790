"""reach embedded client library (numba): value-function lookups and the layered multi-agent safety filter.

    from clients import ValueFunction, LayeredSafetyFilter
    coop = ValueFunction.load("store", "quadrotor/cooperative")
    worst = ValueFunction.load("store", "quadrotor/worst_case")
    safety = LayeredSafetyFilter("quadrotor", cooperative=coop, worst_case=worst)
    result = safety.filter(states, nominal_actions)      # result.actions, result.partner, ...

Never imports JAX.
"""

from clients.filter import FilterResult, LayeredSafetyFilter, solve_halfspace_box
from clients.neighbors import neighbors
from clients.value_function import StateError, ValueFunction

__all__ = ["FilterResult", "LayeredSafetyFilter", "StateError", "ValueFunction", "neighbors",
           "solve_halfspace_box"]
