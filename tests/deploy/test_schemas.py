"""Every generated file validates offline against the schema of the system that reads it:
Kubernetes (kubernetes-validate), the KServe InferenceService CRD and the Compose
specification (JSON Schemas shipped in schemas/, see schemas/README.md), SkyPilot's task
schema (shipped, and SkyPilot itself where it is installed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

SCHEMAS = Path(__file__).parent / "schemas"


def load_yaml(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def validate(instance, schema) -> None:
    # the compose schema says draft-07 by an https URI jsonschema does not know by name
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def k8s_validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_manifests_validate(deployments):
    docs = load_yaml(deployments["k8s"] / "kubernetes.yaml")
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    for doc in docs:
        k8s_validate(doc)
    deployment, service, hpa = docs
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    (container,) = pod["spec"]["containers"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["runAsNonRoot"] is True
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "nimbleml_queue_seconds_per_request"
    assert re.fullmatch(r"[0-9]+m", metric["pods"]["target"]["averageValue"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_inference_service_validates_against_the_crd_and_its_container_against_kubernetes(
    deployments,
):
    (isvc,) = load_yaml(deployments["kserve"] / "inferenceservice.yaml")
    validate(isvc, json.loads((SCHEMAS / "inferenceservice-v1beta1.json").read_text()))
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] >= 1
    (container,) = predictor["containers"]
    assert [p["name"] for p in container["ports"]] == ["http1"]  # Knative: one port, http1
    # the CRD embeds the core/v1 Container: check it as Kubernetes would, in a Pod
    k8s_validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                  "spec": {"containers": [container]}})  # fmt: skip


def test_the_trimmed_crd_schema_still_refuses_what_the_crd_refuses():
    schema = json.loads((SCHEMAS / "inferenceservice-v1beta1.json").read_text())
    bad = {"spec": {"predictor": {"scaleMetric": "latency", "containers": [{"name": "x"}]}}}
    with pytest.raises(jsonschema.ValidationError, match="latency"):
        jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):  # a typo
        jsonschema.validate({"spec": {"predictor": {"containers": [
            {"name": "x", "readinesProbe": {}}]}}}, schema)  # fmt: skip


def test_compose_file_validates_against_the_compose_specification(deployments):
    (doc,) = load_yaml(deployments["compose"] / "compose.yaml")
    validate(doc, json.loads((SCHEMAS / "compose-spec.json").read_text()))
    services = doc["services"]
    assert set(services) == {"server", "redis", "postgres", "prometheus", "grafana"}
    for name, service in services.items():
        assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency]
    for volume in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        source = volume.split(":")[0]
        assert (deployments["compose"] / source).exists(), source


def test_compose_monitoring_files_are_well_formed(deployments):
    d = deployments["compose"]
    (prom,) = load_yaml(d / "prometheus/prometheus.yml")
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["server:8000"]}]
    (datasources,) = load_yaml(d / "grafana/provisioning/datasources/prometheus.yaml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (providers,) = load_yaml(d / "grafana/provisioning/dashboards/nimbleml.yaml")
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    board = json.loads((d / "grafana/dashboards/nimbleml.json").read_text())
    titles = [p["title"] for p in board["panels"]]
    for word in ("Latency", "Throughput", "Queue time", "Cache hit rate", "Shed"):
        assert any(word in t for t in titles), word
    for panel in board["panels"]:
        assert panel["targets"] and all(t["datasource"]["uid"] == source["uid"]
                                        for t in panel["targets"])  # fmt: skip


def test_prometheus_config_passes_promtool_where_installed(deployments):
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus); structure is "
                    "checked by test_compose_monitoring_files_are_well_formed")  # fmt: skip
    proc = subprocess.run([promtool, "check", "config",
                           str(deployments["compose"] / "prometheus/prometheus.yml")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_promql_expression_parses_in_promtool(deployments, tmp_path):
    """The dashboard's queries and the adapter rule's, as recording rules for promtool to
    parse (Grafana's $__rate_interval and the adapter's <<...>> templating filled in as
    Grafana and the adapter would)."""
    import shutil
    import subprocess

    from nimbleml.deploy.observability import adapter_rule, queries

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rule = adapter_rule()
    templated = rule["metricsQuery"].replace("<<.Series>>", "nimbleml_queue_seconds_per_request")
    templated = templated.replace("<<.LabelMatchers>>", 'namespace="default",pod=~"a|b"')
    templated = templated.replace("<<.GroupBy>>", "pod")
    exprs = [q.replace("$__rate_interval", "1m").replace("$__interval", "1m")
             for q in queries()] + [templated]  # fmt: skip
    assert all("$" not in e and "<<" not in e for e in exprs)
    rules = {"groups": [{"name": "nimbleml", "rules": [
        {"record": f"nimbleml:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}  # fmt: skip
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    proc = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(exprs)} rules found" in proc.stdout


def test_adapter_values_hold_a_well_formed_rule(deployments):
    (values,) = load_yaml(deployments["k8s"] / "prometheus-adapter-values.yaml")
    (rule,) = values["rules"]["custom"]
    assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}  # fmt: skip
    assert re.fullmatch(rule["name"]["matches"], "nimbleml_queue_seconds_per_request")
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_skypilot_task_validates_against_skypilots_schema(deployments):
    schemas = json.loads((SCHEMAS / "skypilot-0.14.1.json").read_text())
    (task,) = load_yaml(deployments["skypilot"] / "task.yaml")
    validate(task, schemas["task"])
    validate(task["resources"], schemas["resources"])
    validate(task["service"], schemas["service"])
    assert task["resources"]["use_spot"] is True
    assert task["service"]["readiness_probe"]["path"] == "/v2/health/ready"


def test_skypilot_train_task_validates_and_resumes_from_its_bucket(tmp_path):
    import typer.main

    import nimbleml
    from nimbleml.cli import app

    config = tmp_path / "train.yaml"
    config.write_text("model: {factory: mypkg.models:build}\ndata: {train: train.npz}\n"
                      "training: {epochs: 3}\n")  # fmt: skip
    nimbleml.deploy(target="skypilot", out=tmp_path / "job", train=config, bucket="ckpt-b",
                    accelerators="T4:1")  # fmt: skip
    schemas = json.loads((SCHEMAS / "skypilot-0.14.1.json").read_text())
    (task,) = load_yaml(tmp_path / "job" / "task.yaml")
    validate(task, schemas["task"])
    validate(task["resources"], schemas["resources"])
    for storage in task["file_mounts"].values():
        validate(storage, schemas["storage"])
    assert task["file_mounts"] == {"/checkpoints": {"name": "ckpt-b", "mode": "MOUNT"}}
    argv = task["run"].split()
    assert argv[:2] == ["nimbleml", "train"] and "--resume" in argv
    assert argv[argv.index("--checkpoint-dir") + 1].startswith("/checkpoints/")
    assert (tmp_path / "job" / "train.yaml").read_text() == config.read_text()
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    assert {a for a in argv if a.startswith("--")} <= options


@pytest.mark.parametrize("what", ["serve", "train"])
def test_skypilot_task_loads_in_skypilot(deployments, tmp_path, monkeypatch, what):
    sky = pytest.importorskip("sky", reason="skypilot is an optional extra (see docs/deploy.md)")
    folder = deployments["skypilot"]
    if what == "train":
        import nimbleml

        (tmp_path / "train.yaml").write_text("training: {epochs: 3}\n")
        nimbleml.deploy(target="skypilot", out=tmp_path / "job", train=tmp_path / "train.yaml")
        folder = tmp_path / "job"
    monkeypatch.chdir(folder)
    task = sky.Task.from_yaml(str(folder / "task.yaml"))
    assert task.run is not None
