"""Preflight: the memory plan that runs before any GPU time is spent.

Plain functions; the Prefect table artifact lives in tasks.preflight.prefect.
"""

from tasks.preflight.plan import MemoryPlan, ModelShape, plan_memory, read_shape, require_fit

__all__ = ["MemoryPlan", "ModelShape", "plan_memory", "read_shape", "require_fit"]
