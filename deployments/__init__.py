"""Prefect deployments and the model-registry webhook receiver."""
