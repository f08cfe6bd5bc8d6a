"""Monitoring of served models: the Grafana dashboard (and its ConfigMap) rendered beside the alerts.

    from tasks.monitoring import dashboard, dashboard_configmap, monitoring_manifests

Plain functions over the spec; `tasks.kserve.render.render_all` appends `monitoring_manifests(spec)`.
"""

from tasks.monitoring.dashboard import (
    DCGM_METRICS,
    dashboard,
    dashboard_configmap,
    dashboards_in,
    interpolate,
    monitoring_manifests,
    panel_queries,
    pod_regex,
)

__all__ = [
    "DCGM_METRICS", "dashboard", "dashboard_configmap", "dashboards_in", "interpolate", "monitoring_manifests",
    "panel_queries", "pod_regex",
]
