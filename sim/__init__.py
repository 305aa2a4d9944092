"""Token Factory Simulator: a discrete-event simulator of LLM inference serving and its cost.

Public API (for notebooks and scripts):

    from sim import load_scenario, run
    result = run(load_scenario("scenarios/quickstart.yaml"), seed=1)
    result.summary["usd_per_m_output_tokens"], result.requests, result.iterations
"""

from sim.errors import InputError
from sim.runner import Result, build, execute, run
from sim.scenario import Scenario, load_scenario, scenario_from_dict

__version__ = "0.1.0"

__all__ = ["InputError", "Result", "Scenario", "build", "execute", "load_scenario", "run", "scenario_from_dict",
           "__version__"]
