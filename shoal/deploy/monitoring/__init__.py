"""Monitoring for operators: the Grafana dashboard and the Prometheus alert rules of shoal servers.

``python -m shoal.deploy.monitoring`` writes them to deploy/grafana/ and deploy/prometheus/;
``shoal deploy kubernetes --dashboards`` renders them as a ConfigMap and a PrometheusRule.
"""
