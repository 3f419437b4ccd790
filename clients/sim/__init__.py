"""Multi-agent scenarios, the sampled-data simulator, baseline filters, metrics and trainer wrappers.

Public API:
- scenarios: :func:`make_scenario` (``random``, ``corridor``, ``two_lines``, ``dense``, ``merge``,
  ``intersection``), :class:`Scenario`, ``SCENARIOS``;
- simulation: :class:`Simulator`, :func:`run_episode`, :class:`EpisodeResult`;
- filters: :func:`make_filter` (``none``, ``layered``, ``ecbf``, ``braking``), :class:`ECBFFilter`,
  :class:`BrakingCBFFilter`, :class:`LayeredFilter`;
- metrics: :func:`episode_metrics`, :func:`aggregate`, :func:`markdown_table`;
- command line: :mod:`clients.sim.cli` (``reach simulate``);
- near-collision forensics: :mod:`clients.sim.forensics` (``scripts/diagnose_near_collisions.py``);
- trainers: :mod:`clients.sim.wrappers` (PettingZoo / Gymnasium wrappers and built-in environments).
"""
from .baselines import FILTER_NAMES, BrakingCBFFilter, ECBFFilter, LayeredFilter, NoFilter, make_filter
from .metrics import aggregate, episode_metrics, markdown_table
from .scenarios import SCENARIOS, Scenario, UnknownScenarioError, make_scenario
from .simulator import EpisodeResult, Simulator, run_episode

__all__ = ["FILTER_NAMES", "SCENARIOS", "BrakingCBFFilter", "ECBFFilter", "EpisodeResult", "LayeredFilter",
           "NoFilter", "Scenario", "Simulator", "UnknownScenarioError", "aggregate", "episode_metrics",
           "make_filter", "make_scenario", "markdown_table", "run_episode"]
