"""The deploy stage: Dockerfile, compose stack and KServe InferenceService for the signed
package, each checked offline with what is installed here: Docker's own parser
(dockerfile-parse), Kubernetes' schemas (kubernetes-validate, strict), JSON Schema for the
Compose specification and the KServe CRD where the repository's copies are beside this
checkout (tests/deploy/schemas), and the structure every file must have. A check that
cannot run says why; none needs docker, kubectl or a network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .story import Context, Stage, Table, timed

TARGETS = ("docker", "compose", "kserve")
# the schemas tests/deploy validates against, when this runs from a checkout of the repository
SCHEMAS = Path(__file__).resolve().parents[3] / "tests" / "deploy" / "schemas"


def deploy_stage(ctx: Context, package: Path, serve_report: dict[str, Any]) -> Stage:
    from ..deploy import deploy

    stage = Stage("deploy", "9. Deploy: the files, checked offline",
                  "nimbleml.deploy writes what runs `nimbleml serve` elsewhere, its settings "
                  "derived from what the package and the burst measured; each file is "
                  "checked here without docker, a cluster or a network.")  # fmt: skip
    checks: list[list[str]] = []
    with timed(stage):
        out = ctx.folder("deploy")
        report = out / "serve-report.json"
        report.write_text(json.dumps(serve_report, indent=2) + "\n")
        served_batch = int(serve_report["models"][0]["max_batch_size"])  # what the demo served
        for target in TARGETS:
            result = deploy([str(package)], target=target, out=out / target,
                            serve_report=report, max_batch_size=served_batch)  # fmt: skip
            for f in result.files:
                if f.is_file() and "models" not in f.relative_to(result.out).parts:
                    ctx.link(stage, f, f"{target}: {f.relative_to(result.out).as_posix()}")
            checks += [[target, what, verdict] for what, verdict in CHECKS[target](result.out)]
            if target == "docker":
                for key, (value, why) in result.settings.items():
                    stage.figure(f"--{key.replace('_', '-')}", f"{value} ({why})")
    stage.tables.append(Table("offline checks", ["target", "check", "result"], checks))
    failed = [c for c in checks if c[2].startswith("FAILED")]
    stage.figure("checks", f"{len(checks) - len(failed)} of {len(checks)} passed"
                           + (f", {len(failed)} FAILED" if failed else ""))  # fmt: skip
    ctx.echo(f"deploy: {', '.join(TARGETS)}; {stage.figures[-1][1]}")
    return stage


def _verdict(check: Any) -> str:
    try:
        note = check()
    except ImportError as exc:
        return f"skipped: {exc.name or exc} is not installed"
    except Exception as exc:  # a check that fails is reported, not raised
        return f"FAILED: {str(exc).splitlines()[0][:300]}"
    return note or "passed"


def _yaml(path: Path) -> list[Any]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _schema(name: str, instance: Any) -> str | None:
    import jsonschema

    path = SCHEMAS / name
    if not path.is_file():
        return f"skipped: the schema {name} is not beside this checkout (tests/deploy/schemas)"
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    errors = sorted(cls(schema).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        raise ValueError("; ".join(f"{list(e.path)}: {e.message}" for e in errors[:3]))
    return None


def _dockerfile(d: Path) -> list[tuple[str, str]]:
    def parse() -> str:
        from dockerfile_parse import DockerfileParser

        parser = DockerfileParser(path=str(d / "Dockerfile"))
        seen = {i["instruction"] for i in parser.structure}
        missing = {"FROM", "COPY", "USER", "HEALTHCHECK", "ENTRYPOINT", "CMD"} - seen
        if missing:
            raise ValueError(f"no {', '.join(sorted(missing))} instruction")
        for i in parser.structure:
            if i["instruction"] in ("ENTRYPOINT", "CMD"):
                json.loads(i["value"])  # exec form, as Docker parses it
        return f"passed ({len(parser.structure)} instructions, exec forms are JSON)"

    return [("Dockerfile parsed as Docker reads it", _verdict(parse))]


def _compose(d: Path) -> list[tuple[str, str]]:
    def spec() -> str | None:
        (doc,) = _yaml(d / "compose.yaml")
        return _schema("compose-spec.json", doc)

    def health() -> str:
        (doc,) = _yaml(d / "compose.yaml")
        services = doc["services"]
        for name, service in services.items():
            if "healthcheck" not in service:
                raise ValueError(f"service {name} has no healthcheck")
            for dep in service.get("depends_on", {}):
                if dep not in services:
                    raise ValueError(f"{name} depends on {dep}, which is not a service")
        return f"passed ({', '.join(services)})"

    def monitoring() -> str:
        _yaml(d / "prometheus" / "prometheus.yml")
        json.loads((d / "grafana" / "dashboards" / "nimbleml.json").read_text())
        return "passed"

    return [("compose.yaml against the Compose specification", _verdict(spec)),
            ("every service has a healthcheck; dependencies exist", _verdict(health)),
            ("Prometheus and Grafana files parse", _verdict(monitoring)),
            *_dockerfile(d)]  # fmt: skip


def _kserve(d: Path) -> list[tuple[str, str]]:
    def crd() -> str | None:
        (doc,) = _yaml(d / "inferenceservice.yaml")
        if (doc.get("apiVersion"), doc.get("kind")) != (
            "serving.kserve.io/v1beta1",
            "InferenceService",
        ):
            raise ValueError("not a serving.kserve.io/v1beta1 InferenceService")
        return _schema("inferenceservice-v1beta1.json", doc)

    def container() -> str:
        import kubernetes_validate

        (doc,) = _yaml(d / "inferenceservice.yaml")
        (c,) = doc["spec"]["predictor"]["containers"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
               "spec": {"containers": [c]}}  # fmt: skip
        version = kubernetes_validate.latest_version()
        kubernetes_validate.validate(pod, version, strict=True)
        return f"passed (Kubernetes {version}, strict)"

    return [("InferenceService against the KServe CRD's schema", _verdict(crd)),
            ("its container against Kubernetes' Pod schema", _verdict(container)),
            *_dockerfile(d)]  # fmt: skip


CHECKS = {"docker": _dockerfile, "compose": _compose, "kserve": _kserve}
