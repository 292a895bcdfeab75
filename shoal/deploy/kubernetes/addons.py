"""Cluster add-ons a plan needs: NodeLocal DNSCache, and the NVIDIA or Neuron device plugin.

Why we render them: the reference went from 1,536 to 6,230 req/s with DNS caching alone,
and accelerator pods never schedule without a device plugin advertising the devices.
All live in kube-system and are shared by every plan on the cluster.
"""

from __future__ import annotations

import yaml

from shoal.deploy.kubernetes.options import KubeOptions

NS = "kube-system"
NODE_CACHE_IMAGE = "registry.k8s.io/dns/k8s-dns-node-cache:1.26.4"
NVIDIA_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.1"
NEURON_PLUGIN_IMAGE = "public.ecr.aws/neuron/neuron-device-plugin:2.16.18.0"
PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
_HARDENED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _meta(name: str, app: str) -> dict:
    return {"name": name, "namespace": NS, "labels": {"k8s-app": app, "app.kubernetes.io/part-of": "shoal"}}


def _instance_affinity(types: list[str]) -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                               "values": sorted(set(types))}]}]}}}


def _zone(name: str, opts: KubeOptions, upstream: str, cache: str) -> str:
    return (f"{name}:53 {{\n    errors\n    {cache}\n    reload\n    loop\n"
            f"    bind {opts.local_dns_ip} {opts.cluster_dns_ip}\n    forward . {upstream}\n"
            f"    prometheus :9253\n" + (f"    health {opts.local_dns_ip}:8080\n" if name == opts.cluster_domain
                                          else "") + "}\n")


def corefile(opts: KubeOptions) -> str:
    """CoreDNS config of the node cache. The two ``__PILLAR__`` names are filled in by the
    node-cache binary at start (cluster DNS via the kube-dns-upstream Service, and the node's
    own resolvers); ``force_tcp`` to cluster DNS avoids conntrack races on UDP."""
    cluster = "__PILLAR__CLUSTER__DNS__ {\n        force_tcp\n    }"
    long_cache = "cache {\n        success 9984 30\n        denial 9984 5\n    }"
    zones = [_zone(opts.cluster_domain, opts, cluster, long_cache),
             _zone("in-addr.arpa", opts, cluster, "cache 30"), _zone("ip6.arpa", opts, cluster, "cache 30"),
             _zone(".", opts, "__PILLAR__UPSTREAM__SERVERS__", "cache 30")]
    return "".join(zones)


def node_local_dns(opts: KubeOptions) -> list[dict]:
    """NodeLocal DNSCache in iptables mode: pods keep their resolv.conf (the kube-dns IP), and the
    node cache answers on that IP and on a link-local one, so no kubelet change is needed."""
    app, dns_ports = "node-local-dns", [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]
    container = {
        "name": "node-cache", "image": NODE_CACHE_IMAGE,
        "args": ["-localip", f"{opts.local_dns_ip},{opts.cluster_dns_ip}", "-conf", "/etc/Corefile",
                 "-upstreamsvc", "kube-dns-upstream", "-pidfile", "/tmp/node-cache.pid"],
        "resources": {"requests": {"cpu": "25m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9253, "protocol": "TCP"}],
        "livenessProbe": {"httpGet": {"host": opts.local_dns_ip, "path": "/health", "port": 8080},
                          "initialDelaySeconds": 60, "timeoutSeconds": 5},
        "volumeMounts": [{"name": "xtables-lock", "mountPath": "/run/xtables.lock"},
                         {"name": "config-volume", "mountPath": "/etc/coredns"},
                         {"name": "kube-dns-config", "mountPath": "/etc/kube-dns"}],
    }
    daemonset = {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(app, app),
        "spec": {
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}},
            "selector": {"matchLabels": {"k8s-app": app}},
            "template": {
                "metadata": {"labels": {"k8s-app": app},
                             "annotations": {"prometheus.io/port": "9253", "prometheus.io/scrape": "true"}},
                "spec": {
                    "priorityClassName": "system-node-critical", "serviceAccountName": app,
                    "hostNetwork": True, "dnsPolicy": "Default",
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"effect": "NoExecute", "operator": "Exists"},
                                    {"effect": "NoSchedule", "operator": "Exists"}],
                    "containers": [container],
                    "volumes": [
                        {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                        {"name": "kube-dns-config", "configMap": {"name": "kube-dns", "optional": True}},
                        {"name": "config-volume", "configMap": {
                            "name": app, "items": [{"key": "Corefile", "path": "Corefile.base"}]}}],
                },
            },
        },
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(app, app)},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("kube-dns-upstream", "kube-dns"),
         "spec": {"ports": dns_ports, "selector": {"k8s-app": "kube-dns"}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(app, app), "data": {"Corefile": corefile(opts)}},
        daemonset,
        {"apiVersion": "v1", "kind": "Service", "metadata": {**_meta(app, app), "annotations": {
            "prometheus.io/port": "9253", "prometheus.io/scrape": "true"}},
         "spec": {"clusterIP": "None", "selector": {"k8s-app": app},
                  "ports": [{"name": "metrics", "port": 9253, "targetPort": 9253}]}},
    ]


def time_slicing_config(slices: int) -> str:
    """NVIDIA device plugin config: each GPU advertised as ``slices`` nvidia.com/gpu, one per server
    (``slices`` 1: no sharing, every server owns a whole GPU)."""
    config: dict = {"version": "v1", "flags": {"migStrategy": "none"}}
    if slices > 1:
        config["sharing"] = {"timeSlicing": {"renameByDefault": False, "failRequestsGreaterThanOne": True,
                                             "resources": [{"name": "nvidia.com/gpu", "replicas": slices}]}}
    return yaml.safe_dump(config, sort_keys=False)


def nvidia_device_plugin(gpu_types: list[str], opts: KubeOptions) -> list[dict]:
    app, config = "nvidia-device-plugin", "nvidia-device-plugin-config"
    container = {
        "name": "nvidia-device-plugin", "image": NVIDIA_PLUGIN_IMAGE,
        "env": [{"name": "CONFIG_FILE", "value": "/etc/nvidia-device-plugin/config.yaml"},
                {"name": "FAIL_ON_INIT_ERROR", "value": "false"}],
        "securityContext": _HARDENED,
        "volumeMounts": [{"name": "device-plugin", "mountPath": PLUGIN_DIR},
                         {"name": "config", "mountPath": "/etc/nvidia-device-plugin", "readOnly": True}],
    }
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(config, app),
         "data": {"config.yaml": time_slicing_config(opts.gpu_slices)}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(app, app), "spec": {
            "selector": {"matchLabels": {"k8s-app": app}}, "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"k8s-app": app}}, "spec": {
                "priorityClassName": "system-node-critical", "affinity": _instance_affinity(gpu_types),
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "CriticalAddonsOnly", "operator": "Exists"}],
                "containers": [container],
                "volumes": [{"name": "device-plugin", "hostPath": {"path": PLUGIN_DIR}},
                            {"name": "config", "configMap": {"name": config}}]}}}},
    ]


def neuron_device_plugin(neuron_types: list[str]) -> list[dict]:
    """Advertises aws.amazon.com/neuron (chips) and aws.amazon.com/neuroncore on inf1/inf2 nodes."""
    app = "neuron-device-plugin"
    role_meta = {"name": app, "labels": {"k8s-app": app, "app.kubernetes.io/part-of": "shoal"}}
    rules = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["update", "patch", "get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch", "update"]}]
    container = {
        "name": app, "image": NEURON_PLUGIN_IMAGE,
        "env": [{"name": "KUBECONFIG", "value": "/etc/kubernetes/kubelet.conf"},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "securityContext": _HARDENED,
        "volumeMounts": [{"name": "device-plugin", "mountPath": PLUGIN_DIR},
                         {"name": "infa-map", "mountPath": "/run"}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(app, app)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": role_meta,
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": role_meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": app},
         "subjects": [{"kind": "ServiceAccount", "name": app, "namespace": NS}]},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(app, app), "spec": {
            "selector": {"matchLabels": {"k8s-app": app}}, "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"k8s-app": app}}, "spec": {
                "serviceAccountName": app, "priorityClassName": "system-node-critical",
                "affinity": _instance_affinity(neuron_types),
                "tolerations": [{"key": "aws.amazon.com/neuron", "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "CriticalAddonsOnly", "operator": "Exists"}],
                "containers": [container],
                "volumes": [{"name": "device-plugin", "hostPath": {"path": PLUGIN_DIR}},
                            {"name": "infa-map", "hostPath": {"path": "/run"}}]}}}},
    ]
