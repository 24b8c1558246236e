"""``--target kserve`` and ``--target k8s``: the server image on Kubernetes.

kserve: an InferenceService whose predictor is the server's container (one port, named
``http1`` as Knative requires), ready only once every model ran a real inference
(/v2/health/ready), live on /v2/health/live, resources from the measured footprint, and
Knative autoscaling on concurrency with the target from the measured capacity.

k8s: Deployment + Service + HorizontalPodAutoscaler on the mean queue time per request, the
gauge the server exports, read through prometheus-adapter (as Triton's Helm chart scales on
its queue time); the adapter's rule is written beside them as Helm values.
"""

from __future__ import annotations

from typing import Any

from . import docker, observability
from .files import yaml_text
from .plan import KEYS, PORT, Plan, quantity_seconds


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": PORT}, "periodSeconds": period,
            "timeoutSeconds": 2, "failureThreshold": failures}  # fmt: skip


def resources(plan: Plan) -> dict[str, Any]:
    """Requests = limits (Guaranteed QoS): ONNX Runtime's threads are sized to these cores,
    and the memory cache is bounded by --cache-mb, so the footprint is known."""
    amount = {"cpu": str(plan["cpu"]), "memory": f"{plan['memory_mib']}Mi"}
    return {"requests": dict(amount), "limits": dict(amount)}


def container(plan: Plan, port_name: str) -> dict[str, Any]:
    return {
        "name": "kserve-container" if port_name == "http1" else "server",
        "image": plan.image,
        "command": ["nimbleml", "serve"],
        "args": plan.serve_args(),
        "ports": [{"name": port_name, "containerPort": PORT, "protocol": "TCP"}],
        # the models warm up before ready: a generous start, then a short period
        "readinessProbe": {**_probe("/v2/health/ready", 5, 3), "initialDelaySeconds": 2},
        "livenessProbe": {**_probe("/v2/health/live", 10, 6), "initialDelaySeconds": 30},
        "resources": resources(plan),
        "securityContext": {"runAsNonRoot": True, "runAsUser": docker.UID,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip


def inference_service(plan: Plan, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": plan.name, "labels": {"app.kubernetes.io/name": plan.name}},
        "spec": {"predictor": {
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "scaleMetric": "concurrency",
            "scaleTarget": int(plan["concurrency_target"]),
            "annotations": observability.scrape_annotations(),
            "containers": [container(plan, "http1")],
        }},
    }  # fmt: skip


def _labels(plan: Plan) -> dict[str, str]:
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": "server"}


def deployment(plan: Plan, min_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": plan.name, "labels": _labels(plan)},
        "spec": {
            "replicas": min_replicas,
            "selector": {"matchLabels": _labels(plan)},
            "template": {
                "metadata": {"labels": _labels(plan),
                             "annotations": observability.scrape_annotations()},
                # SIGTERM drains what was accepted; give it time before the kill
                "spec": {"terminationGracePeriodSeconds": 30,
                         "containers": [container(plan, "http")]},
            },
        },
    }  # fmt: skip


def service(plan: Plan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": plan.name, "labels": _labels(plan)},
        "spec": {"selector": _labels(plan),
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http",
                            "protocol": "TCP"}]},
    }  # fmt: skip


def autoscaler(plan: Plan, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": plan.name, "labels": _labels(plan)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": observability.QUEUE_GAUGE},
                "target": {"type": "AverageValue",
                           "averageValue": quantity_seconds(plan["queue_target_s"])},
            }}],
            # scale out at once, in slowly: a warm-up costs more than an idle pod
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }  # fmt: skip


def kserve_files(plan: Plan, min_replicas: int, max_replicas: int) -> dict[str, str]:
    head = plan.comment("KServe InferenceService", KEYS["kserve"])
    head += [f"Build and push the image first (Dockerfile beside this file) as {plan.image}.",
             "Apply: kubectl apply -f inferenceservice.yaml"]  # fmt: skip
    return {
        **docker.files(plan),
        "inferenceservice.yaml": yaml_text(
            [inference_service(plan, min_replicas, max_replicas)], head
        ),
    }


def k8s_files(plan: Plan, min_replicas: int, max_replicas: int) -> dict[str, str]:
    head = plan.comment("Kubernetes Deployment, Service and HorizontalPodAutoscaler", KEYS["k8s"])
    head += [f"Build and push the image first (Dockerfile beside this file) as {plan.image}.",
             "The autoscaler needs prometheus-adapter serving the queue gauge: helm install "
             "prometheus-adapter prometheus-community/prometheus-adapter -f "
             "prometheus-adapter-values.yaml (set prometheus.url there)",
             "Apply: kubectl apply -f kubernetes.yaml"]  # fmt: skip
    docs = [deployment(plan, min_replicas), service(plan),
            autoscaler(plan, min_replicas, max_replicas)]  # fmt: skip
    return {
        **docker.files(plan),
        "kubernetes.yaml": yaml_text(docs, head),
        "prometheus-adapter-values.yaml": yaml_text(
            [observability.adapter_values()],
            [
                "Helm values for prometheus-community/prometheus-adapter (written by nimbleml "
                "deploy):",
                f"serves {observability.QUEUE_GAUGE} per pod to the "
                "HorizontalPodAutoscaler in kubernetes.yaml. Pods are scraped by their "
                "prometheus.io/* annotations.",
            ],
        ),
    }
