"""Model registries: resolve `models:/name@alias` to a version and a location, record promotions.

MLflow lives in `mlflow_registry`, Hugging Face branch heads in `hf_hub`, and the scheduled
promotion's decision in `champion`.
"""

from tasks.registry.mlflow_registry import (
    SERVING_ALIAS,
    ModelRef,
    RegistryVersion,
    lookup,
    parse_models_uri,
    record_promotion,
    record_serving,
    resolve,
)

__all__ = [
    "SERVING_ALIAS",
    "ModelRef",
    "RegistryVersion",
    "lookup",
    "parse_models_uri",
    "record_promotion",
    "record_serving",
    "resolve",
]
