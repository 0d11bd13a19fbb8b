"""Checks deploy/ without a container engine or a cluster (run by scripts/check-deploy.sh).

- Kubernetes: renders the base and the example overlay (`kubectl kustomize` where kubectl is on
  the machine; otherwise each kustomization's own lists are followed and each file read), then
  validates every built-in object against the Kubernetes JSON schemas bundled with
  kubernetes-validate (strict: an unknown field is an error), for the oldest and the newest
  Kubernetes version supported, and every custom resource (RabbitmqCluster, ScaledObject,
  TriggerAuthentication, RedisReplication, RedisSentinel) against a minimal schema of the fields
  we use (below: their operators publish no schema that installs from the reachable registries).
  Then the references between objects: selectors, scale targets, probes and ports, ConfigMaps,
  the configuration's keys against src/config.rs, grace periods against the worker's drain, the
  queue KEDA watches against amqp.prefix.
- Compose: the Compose Specification's JSON schema (vendored by check-jsonschema), then that the
  services are there and the workers can be scaled.
- Dockerfile: stages, non-root user, files it copies exist.
- Grafana: every autorenew_* metric a panel queries is one the code exports.
- OpenAPI: src/intake/openapi.json is a valid OpenAPI 3 document.
"""

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from openapi_spec_validator import validate as validate_openapi

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "example"]
# Oldest version with lifecycle.preStop.sleep (1.30), and the newest bundled.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"  FAIL {message}")


def ok(message: str) -> None:
    print(f"  ok   {message}")


# --- minimal schemas of the custom resources we use ---------------------------------------------

def obj(properties: dict, required: tuple = (), extra: bool = False) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": extra}


STR = {"type": "string"}
INT = {"type": "integer"}
ANY_OBJECT = {"type": "object"}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": STR}}
SECRET_KEY_REF = obj({"name": STR, "key": STR}, ("name", "key"))


def crd(api_version: str, kind: str, spec: dict) -> dict:
    return obj({"apiVersion": {"const": api_version}, "kind": {"const": kind},
                "metadata": METADATA, "spec": spec}, ("apiVersion", "kind", "metadata", "spec"))


CRD_SCHEMAS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): crd("rabbitmq.com/v1beta1", "RabbitmqCluster", obj({
        "replicas": {"type": "integer", "minimum": 1},
        "image": STR,
        "service": obj({"type": {"enum": ["ClusterIP", "LoadBalancer", "NodePort"]}, "annotations": ANY_OBJECT}),
        "persistence": obj({"storage": STR, "storageClassName": STR}),
        "resources": ANY_OBJECT,
        "rabbitmq": obj({"additionalPlugins": {"type": "array", "items": STR},
                         "additionalConfig": STR, "advancedConfig": STR, "envConfig": STR}),
        "affinity": ANY_OBJECT,
        "tolerations": {"type": "array"},
        "override": ANY_OBJECT,
        "terminationGracePeriodSeconds": INT,
    }, ("replicas",))),
    ("keda.sh/v1alpha1", "ScaledObject"): crd("keda.sh/v1alpha1", "ScaledObject", obj({
        "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": STR, "envSourceContainerName": STR}, ("name",)),
        "pollingInterval": INT, "cooldownPeriod": INT, "initialCooldownPeriod": INT,
        "idleReplicaCount": INT, "minReplicaCount": INT, "maxReplicaCount": INT,
        "advanced": obj({"restoreToOriginalReplicaCount": {"type": "boolean"},
                         "horizontalPodAutoscalerConfig": obj({"name": STR, "behavior": ANY_OBJECT})}),
        "fallback": obj({"failureThreshold": INT, "replicas": INT}, ("failureThreshold", "replicas")),
        "triggers": {"type": "array", "minItems": 1, "items": obj({
            "type": STR, "name": STR, "useCachedMetrics": {"type": "boolean"},
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
            "metadata": {"type": "object", "additionalProperties": STR},
            "authenticationRef": obj({"name": STR, "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]}}, ("name",)),
        }, ("type", "metadata"))},
    }, ("scaleTargetRef", "triggers"))),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): crd("keda.sh/v1alpha1", "TriggerAuthentication", obj({
        "secretTargetRef": {"type": "array", "items": obj({"parameter": STR, "name": STR, "key": STR},
                                                          ("parameter", "name", "key"))},
        "env": {"type": "array"},
        "podIdentity": ANY_OBJECT,
    })),
    ("redis.redis.opstreelabs.in/v1beta2", "RedisReplication"): crd("redis.redis.opstreelabs.in/v1beta2", "RedisReplication", obj({
        "clusterSize": {"type": "integer", "minimum": 1},
        "kubernetesConfig": obj({"image": STR, "imagePullPolicy": STR, "resources": ANY_OBJECT,
                                 "redisSecret": SECRET_KEY_REF, "service": ANY_OBJECT}, ("image",)),
        "redisConfig": obj({"additionalRedisConfig": STR}),
        "storage": obj({"volumeClaimTemplate": ANY_OBJECT, "keepAfterDelete": {"type": "boolean"}}),
        "podSecurityContext": ANY_OBJECT, "securityContext": ANY_OBJECT,
        "affinity": ANY_OBJECT, "tolerations": {"type": "array"}, "nodeSelector": ANY_OBJECT,
        "redisExporter": ANY_OBJECT,
    }, ("clusterSize", "kubernetesConfig"))),
    ("redis.redis.opstreelabs.in/v1beta2", "RedisSentinel"): crd("redis.redis.opstreelabs.in/v1beta2", "RedisSentinel", obj({
        "clusterSize": {"type": "integer", "minimum": 1},
        "redisSentinelConfig": obj({
            "redisReplicationName": STR, "masterGroupName": STR, "quorum": STR,
            "downAfterMilliseconds": STR, "failoverTimeout": STR, "parallelSyncs": STR,
            "redisReplicationPassword": obj({"secretKeyRef": SECRET_KEY_REF}, ("secretKeyRef",)),
            "resolveHostnames": STR, "announceHostnames": STR,
        }, ("redisReplicationName",)),
        "kubernetesConfig": obj({"image": STR, "imagePullPolicy": STR, "resources": ANY_OBJECT,
                                 "redisSecret": SECRET_KEY_REF, "service": ANY_OBJECT}, ("image",)),
        "podSecurityContext": ANY_OBJECT, "securityContext": ANY_OBJECT,
        "affinity": ANY_OBJECT, "tolerations": {"type": "array"}, "nodeSelector": ANY_OBJECT,
        "redisExporter": ANY_OBJECT,
    }, ("clusterSize", "redisSentinelConfig", "kubernetesConfig"))),
}


# --- rendering ----------------------------------------------------------------------------------

def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def check_kustomization_lists(directory: Path) -> None:
    """Every file a kustomization names exists (resources, patches, generators)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    named = list(kustomization.get("resources", []))
    named += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
    named += kustomization.get("patchesStrategicMerge", [])
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        named += [f.split("=", 1)[-1] for f in generator.get("files", [])]
    for name in named:
        target = directory / name
        if target.is_dir():
            if not (target / "kustomization.yaml").exists():
                fail(f"{directory.relative_to(ROOT)}: {name} is a folder without kustomization.yaml")
            else:
                check_kustomization_lists(target)
        elif not target.is_file():
            fail(f"{directory.relative_to(ROOT)}: {name} does not exist")
    ok(f"{directory.relative_to(ROOT)}: every listed file exists ({len(named)})")


def render(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"kubectl kustomize {directory.relative_to(ROOT)}: {result.stderr.strip()}")
            return []
        docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        ok(f"kubectl kustomize {directory.relative_to(ROOT)}: {len(docs)} objects")
        return docs
    # No kustomize: the resources as written (generators and patches not applied).
    print(f"  note kubectl not found: {directory.relative_to(ROOT)} checked file by file, unrendered")
    docs = []
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for name in kustomization.get("resources", []):
        target = directory / name
        docs += render(target) if target.is_dir() else load_yaml_docs(target)
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for entry in generator.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (directory / path).read_text()
        docs = [d for d in docs if not (d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"])]
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return docs


# --- schema validation --------------------------------------------------------------------------

def validate_objects(label: str, docs: list[dict]) -> None:
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        schema = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is not None:
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
            for error in errors:
                fail(f"{label} {name} (minimal CRD schema): {'.'.join(map(str, error.absolute_path))}: {error.message}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                fail(f"{label} {name}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
                break
            except kubernetes_validate.ValidationError as error:
                path = ".".join(map(str, error.path))
                fail(f"{label} {name} (Kubernetes {version}): {path}: {error.message}")
    ok(f"{label}: {len(docs)} objects validated (Kubernetes {', '.join(K8S_VERSIONS)}; CRDs: minimal schemas)")


# --- references between objects -----------------------------------------------------------------

def config_fields() -> dict[str, set[str]]:
    """The keys each section of config.toml may hold, read from src/config.rs's structs."""
    source = (ROOT / "src" / "config.rs").read_text()
    structs = {}
    for match in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", source, re.S):
        structs[match.group(1)] = set(re.findall(r"^\s*pub (\w+):", match.group(2), re.M))
    sections = {"intake": "IntakeSettings", "amqp": "AmqpSettings", "redis": "RedisSettings",
                "worker": "WorkerSettings", "stripe": "StripeSettings", "log": "LogSettings",
                "partners": "PartnerSettings", "plans": "PlanSettings"}
    return {section: structs.get(struct, set()) for section, struct in sections.items()}


def check_config(label: str, text: str) -> dict:
    config = tomllib.loads(text)
    fields = config_fields()
    for section, value in config.items():
        if section not in fields:
            fail(f"{label}: unknown section [{section}]")
            continue
        entries = value if isinstance(value, list) else ([] if section == "plans" else [value])
        if section == "plans":
            entries = list(value.values())
        for entry in entries:
            for key in entry:
                if key not in fields[section]:
                    fail(f"{label}: unknown key {section}.{key} (not a field of src/config.rs)")
    return config


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def check_references(label: str, docs: list[dict]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]

    # The configuration every Deployment mounts.
    config = {}
    for name, cm in configmaps.items():
        if "config.toml" in cm.get("data", {}):
            config = check_config(f"{label} ConfigMap {name} config.toml", cm["data"]["config.toml"])
    if not config:
        fail(f"{label}: no ConfigMap holds config.toml")
        return
    known_sections = config_fields()

    # Pods that operators make from a custom resource: RabbitMQ's carry
    # app.kubernetes.io/name=<cluster>, the redis-operator's app=<name>.
    operator_pods = [{"app.kubernetes.io/name": d["metadata"]["name"]} for d in by_kind.get("RabbitmqCluster", [])]
    operator_pods += [{"app": d["metadata"]["name"]} for d in by_kind.get("RedisReplication", []) + by_kind.get("RedisSentinel", [])]

    def operator_made(selector: dict) -> bool:
        return any(all(selector.get(k) == v for k, v in pod.items()) for pod in operator_pods)

    for service in by_kind.get("Service", []):
        selector = service["spec"].get("selector", {})
        if operator_made(selector):
            continue  # selects pods an operator makes, which are not in these manifests
        if not any(selects(selector, labels) for labels in pod_labels):
            fail(f"{label} Service/{service['metadata']['name']}: its selector matches no pod template")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selector = pdb["spec"]["selector"]["matchLabels"]
        if operator_made(selector):
            continue
        if not any(selects(selector, labels) for labels in pod_labels):
            fail(f"{label} PodDisruptionBudget/{pdb['metadata']['name']}: its selector matches no pod template")

    scaled = set()
    for scaler in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        target = scaler["spec"]["scaleTargetRef"]["name"]
        scaled.add(target)
        if target not in deployments:
            fail(f"{label} {scaler['kind']}/{scaler['metadata']['name']}: scales {target}, which is not here")
    for name, deployment in deployments.items():
        if name in scaled and "replicas" in deployment["spec"]:
            fail(f"{label} Deployment/{name}: sets replicas although an autoscaler owns them")
        if name not in scaled:
            fail(f"{label} Deployment/{name}: no autoscaler")

    for scaled_object in by_kind.get("ScaledObject", []):
        for trigger in scaled_object["spec"]["triggers"]:
            if trigger["type"] == "rabbitmq":
                expected = f"{config['amqp']['prefix']}.jobs"
                if trigger["metadata"].get("queueName") != expected:
                    fail(f"{label} ScaledObject: watches {trigger['metadata'].get('queueName')}, the jobs queue is {expected}")
                else:
                    ok(f"{label} ScaledObject scales on {expected} (amqp.prefix)")
        auth = [t.get("authenticationRef", {}).get("name") for t in scaled_object["spec"]["triggers"]]
        names = {t["metadata"]["name"] for t in by_kind.get("TriggerAuthentication", [])}
        for name in auth:
            if name and name not in names:
                fail(f"{label} ScaledObject: authenticationRef {name} is not here")

    drain = config.get("worker", {}).get("drain_timeout_secs", 20)
    stripe_call = config.get("stripe", {}).get("request_timeout_ms", 10000) / 1000
    max_wait = config.get("intake", {}).get("max_wait_secs", 30)
    secrets_used = set()
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        args = pod["containers"][0].get("args", [])
        role = args[-1] if args else ""
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if role == "worker":
            need = drain + stripe_call
            if grace <= need:
                fail(f"{label} Deployment/{name}: terminationGracePeriodSeconds {grace} does not cover the drain ({drain} s) and one Stripe call ({stripe_call:g} s)")
            else:
                ok(f"{label} Deployment/{name}: grace {grace} s > drain {drain} s + Stripe call {stripe_call:g} s")
        elif role == "intake":
            pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
            if grace < pre_stop + max_wait:
                fail(f"{label} Deployment/{name}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} s + max_wait_secs {max_wait} s")
            else:
                ok(f"{label} Deployment/{name}: grace {grace} s >= preStop {pre_stop} s + held request {max_wait} s")
        else:
            fail(f"{label} Deployment/{name}: its args end in neither intake nor worker: {args}")
        listen = config.get(role, {}).get("listen", "")
        if not listen.startswith("0.0.0.0:"):
            fail(f"{label} {role}.listen is {listen!r}: a pod must listen on 0.0.0.0")
        if pod.get("securityContext", {}).get("runAsNonRoot") is not True:
            fail(f"{label} Deployment/{name}: not runAsNonRoot")
        for volume in pod.get("volumes", []):
            ref = volume.get("configMap", {}).get("name")
            if ref and ref not in configmaps:
                fail(f"{label} Deployment/{name}: mounts ConfigMap {ref}, which is not here")
        for container in pod["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if listen and port_of(listen) not in ports.values():
                fail(f"{label} Deployment/{name}: no containerPort for {role}.listen {listen}")
            for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
                spec = container.get(probe)
                if not spec:
                    fail(f"{label} Deployment/{name}: no {probe}")
                    continue
                if spec["httpGet"]["path"] != path:
                    fail(f"{label} Deployment/{name}: {probe} on {spec['httpGet']['path']}, expected {path}")
                port = spec["httpGet"]["port"]
                if port not in ports and port not in ports.values():
                    fail(f"{label} Deployment/{name}: {probe} port {port} is not a container port")
            if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
                fail(f"{label} Deployment/{name}: root filesystem not read-only")
            env = {e["name"]: e for e in container.get("env", [])}
            for variable, entry in env.items():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secrets_used.add((ref["name"], ref["key"]))
                if variable.startswith("AUTORENEW__"):
                    parts = variable.split("__")
                    if len(parts) != 3 or parts[2].lower() not in known_sections.get(parts[1].lower(), set()):
                        fail(f"{label} Deployment/{name}: {variable} names no configuration key")
            for partner in config.get("partners", []):
                variable = partner.get("secret_env")
                if variable and variable not in env:
                    fail(f"{label} Deployment/{name}: partner {partner['code']}'s secret_env {variable} is not set")
            if role == "worker" and "AUTORENEW__STRIPE__SECRET_KEY" not in env:
                fail(f"{label} Deployment/{name}: no Stripe key")
    for trigger_auth in by_kind.get("TriggerAuthentication", []):
        for ref in trigger_auth["spec"].get("secretTargetRef", []):
            secrets_used.add((ref["name"], ref["key"]))
    for cr in by_kind.get("RedisReplication", []) + by_kind.get("RedisSentinel", []):
        secret = cr["spec"].get("kubernetesConfig", {}).get("redisSecret")
        if secret:
            secrets_used.add((secret["name"], secret["key"]))
        if cr["kind"] == "RedisSentinel":
            replication = cr["spec"]["redisSentinelConfig"]["redisReplicationName"]
            if replication not in {r["metadata"]["name"] for r in by_kind.get("RedisReplication", [])}:
                fail(f"{label} RedisSentinel: watches {replication}, which is not here")
        extra = cr["spec"].get("redisConfig", {}).get("additionalRedisConfig")
        if extra and extra not in configmaps:
            fail(f"{label} {cr['kind']}: additionalRedisConfig {extra} is not here")
    for cluster in by_kind.get("RabbitmqCluster", []):
        if cluster["spec"]["replicas"] < 3:
            fail(f"{label} RabbitmqCluster: fewer than 3 nodes cannot keep a quorum through a node's loss")
        plugins = cluster["spec"].get("rabbitmq", {}).get("additionalPlugins", [])
        if "rabbitmq_prometheus" not in plugins:
            fail(f"{label} RabbitmqCluster: rabbitmq_prometheus is off (the dashboard reads queue depths from it)")
    defined = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    outside = sorted(f"{n}/{k}" for n, k in secrets_used if n not in defined)
    ok(f"{label}: Secrets to create outside git: {', '.join(outside)}")


# --- compose ------------------------------------------------------------------------------------

def check_compose(venv_bin: Path) -> None:
    path = DEPLOY / "compose.yaml"
    result = subprocess.run([str(venv_bin / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"compose.yaml against the Compose Specification schema:\n{result.stdout}{result.stderr}")
    else:
        ok("compose.yaml: valid against the Compose Specification schema")
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    for name in ["rabbitmq", "redis", "stripe-sim", "intake", "worker"]:
        if name not in services:
            fail(f"compose.yaml: no service {name}")
    if "management" not in services.get("rabbitmq", {}).get("image", ""):
        fail("compose.yaml: rabbitmq without the management plugin")
    worker = services.get("worker", {})
    if "container_name" in worker or worker.get("ports"):
        fail("compose.yaml: the worker has a container_name or host ports, so --scale cannot multiply it")
    fields = config_fields()
    for name, service in services.items():
        for variable in service.get("environment", {}) or {}:
            if variable.startswith("AUTORENEW__"):
                parts = variable.split("__")
                if len(parts) != 3 or parts[2].lower() not in fields.get(parts[1].lower(), set()):
                    fail(f"compose.yaml {name}: {variable} names no configuration key")
        for dependency in service.get("depends_on", {}) or {}:
            if dependency not in services:
                fail(f"compose.yaml {name}: depends on {dependency}, which is not a service")
    grace = worker.get("stop_grace_period", "10s")
    if int(grace.rstrip("s")) <= 20:
        fail(f"compose.yaml: the worker's stop_grace_period {grace} does not cover its 20 s drain")
    ok(f"compose.yaml: services {', '.join(services)}; workers scale with --scale worker=N")


# --- Dockerfile ---------------------------------------------------------------------------------

def check_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    stages = [line for line in lines if line.upper().startswith("FROM ")]
    if len(stages) < 2:
        fail("Dockerfile: not multi-stage")
    final = lines[lines.index(stages[-1]):]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        fail("Dockerfile: the runtime stage does not switch to a non-root user")
    if not any(line.upper().startswith("ENTRYPOINT") and "autorenew" in line for line in final):
        fail("Dockerfile: the runtime stage's ENTRYPOINT is not the autorenew binary")
    for line in lines:
        if line.upper().startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                if not (ROOT / source).exists():
                    fail(f"Dockerfile: COPY {source}: not in the repository")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for line in lines:
        if line.upper().startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                if f"!{source}" not in ignore and f"!{source}/" not in ignore:
                    fail(f"Dockerfile: {source} is excluded from the build context by Dockerfile.dockerignore")
    ok(f"Dockerfile: {len(stages)} stages, runtime user {users[-1] if users else '?'}")


# --- Grafana ------------------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    names = set()
    for path in (ROOT / "src").rglob("*.rs"):
        names |= set(re.findall(r'"(autorenew_[a-z0-9_]+)"', path.read_text()))
    return names


def check_grafana() -> None:
    exported = exported_metrics()
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs = []

        def walk(node):
            if isinstance(node, dict):
                if isinstance(node.get("expr"), str):
                    exprs.append(node["expr"])
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for value in node:
                    walk(value)
        walk(dashboard.get("panels", []))
        used = set()
        for expr in exprs:
            for metric in re.findall(r"\b(autorenew_[a-z0-9_]+)", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                used.add(base)
                if base not in exported:
                    fail(f"{path.name}: {metric} is not exported by the code")
        rabbit = sorted({m for e in exprs for m in re.findall(r"\b(rabbitmq_[a-z0-9_]+)", e)})
        ok(f"{path.name}: {len(exprs)} queries; autorenew metrics {sorted(used)}; from RabbitMQ's plugin {rabbit}")
        missing = exported - used
        if missing:
            fail(f"{path.name}: exported metrics without a panel: {sorted(missing)}")


def main() -> int:
    venv_bin = Path(sys.executable).parent
    print("== OpenAPI")
    try:
        validate_openapi(json.loads((ROOT / "src" / "intake" / "openapi.json").read_text()))
        ok("src/intake/openapi.json: valid OpenAPI 3")
    except Exception as error:  # the validator raises several types
        fail(f"src/intake/openapi.json: {error}")
    print("== Kubernetes")
    for directory in KUSTOMIZATIONS:
        check_kustomization_lists(directory)
    for directory in KUSTOMIZATIONS:
        label = str(directory.relative_to(K8S))
        docs = render(directory)
        validate_objects(label, docs)
        check_references(label, docs)
    print("== Compose")
    check_compose(venv_bin)
    print("== Dockerfile")
    check_dockerfile()
    print("== Grafana")
    check_grafana()
    if failures:
        print(f"\ncheck-deploy: {len(failures)} problem(s)")
        return 1
    print("\ncheck-deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
