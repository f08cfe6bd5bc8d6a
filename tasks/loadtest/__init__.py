"""Load testing of OpenAI-compatible servers: TTFT, TPOT, ITL, E2EL, throughput, goodput vs an SLO.

    from tasks.loadtest import run_load_test, arun_load_test, LoadReport, LoadProfile, SLO

The engine has no Prefect import; tasks.loadtest.artifacts publishes a report as Prefect artifacts.
"""

from .config import SLO, LoadProfile
from .engine import arun_load_test, discover_model, run_load_test
from .report import LoadReport, RequestRecord, SweepPoint, evaluate_slo

__all__ = [
    "SLO", "LoadProfile", "LoadReport", "RequestRecord", "SweepPoint",
    "arun_load_test", "run_load_test", "discover_model", "evaluate_slo",
]
