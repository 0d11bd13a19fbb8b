"""Checks deploy/ without a container engine or a cluster (run by scripts/check-deploy.sh).

- Kubernetes: renders the base and the example overlay (`kubectl kustomize` where kubectl is on
  the machine; otherwise each kustomization's own lists are followed and each file read), then
  validates every built-in object against the Kubernetes JSON schemas bundled with
  kubernetes-validate (strict: an unknown field is an error), for the oldest and the newest
  Kubernetes version supported, and every custom resource (RabbitmqCluster, ScaledObject,
  TriggerAuthentication, RedisReplication, RedisSentinel) against its operator's published CRD
  (../shared/crds, strict as well). Then what no schema sees: selectors against pod templates,
  PodDisruptionBudgets with exactly one of minAvailable / maxUnavailable, KEDA's bounds, trigger
  types and authentication, scale targets, probes and ports, ConfigMaps, the configuration's keys
  against src/config.rs, grace periods against the worker's drain, the queue KEDA watches
  against amqp.prefix.
- Compose: the Compose Specification's JSON schema (vendored by check-jsonschema), then the
  services, each command and healthcheck against the binary's real subcommands and flags (read
  from the clap definitions in src/ and crates/), the config mount, host ports that leave 5672
  and 6379 to a local RabbitMQ and Redis, and that the workers can be scaled.
- Dockerfile: stages, non-root user, files it copies exist, its `--bin` is a binary of
  Cargo.toml, and no configuration (no partner) is baked into the image.
- Grafana and the alert rules (deploy/prometheus): every autorenew_* metric and label a query
  names is one the code exports; the PrometheusRule and the plain rules file hold the same
  groups; every alert has a runbook line in deploy/README.md.
- OpenAPI: src/intake/openapi.json is a valid OpenAPI 3 document.

`scripts/check_deploy_faults.py` plants faults in copies of the repository and checks that each
is caught.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from openapi_spec_validator import validate as validate_openapi

# kubernetes-validate reads and parses a schema file for each object it validates; the same few
# serve every object (and every copy the planted-fault test checks), so keep them parsed.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
    kubernetes_validate.utils.schema_contents)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "example"]
QUIET = False


def check_jobs_trigger(label, metadata, prefix):
    """The worker scales on every queue jobs are worked from, summed: the shared jobs queue,
    each partner's lane and the expired jobs; never on the dead letters or the delay queues
    (jobs there are not ready to work)."""
    work = [f"{prefix}.jobs", f"{prefix}.jobs.partner.P000818", f"{prefix}.jobs.expired"]
    idle = [f"{prefix}.dead", f"{prefix}.delay.10s", f"{prefix}.jobsx", f"x{prefix}.jobs"]
    name = metadata.get("queueName", "")
    if metadata.get("useRegex") != "true":
        fail(f"{label} ScaledObject: watches {name} alone, the jobs wait in {prefix}.jobs and the partners' lanes "
             f"{prefix}.jobs.partner.<code> (useRegex \"true\" with operation sum)")
        return
    if metadata.get("protocol") != "http":
        fail(f"{label} ScaledObject: useRegex needs protocol http (the management API); it has {metadata.get('protocol')}")
    if metadata.get("operation") != "sum":
        fail(f"{label} ScaledObject: operation {metadata.get('operation')}: the lanes' depths must be summed (sum)")
    try:
        pattern = re.compile(name)
    except re.error as error:
        fail(f"{label} ScaledObject: queueName {name} is not a regular expression: {error}")
        return
    missed = [q for q in work if not pattern.fullmatch(q)]
    extra = [q for q in idle if pattern.fullmatch(q)]
    if missed or extra:
        fail(f"{label} ScaledObject: queueName {name} misses {missed} or takes {extra}; the jobs queues are "
             f"{prefix}.jobs, {prefix}.jobs.partner.<code> and {prefix}.jobs.expired")
    else:
        ok(f"{label} ScaledObject scales on the sum of {prefix}.jobs and its lanes (amqp.prefix)")


def set_root(root: Path) -> None:
    """Checks another copy of the repository (the planted-fault test runs on copies)."""
    global ROOT, DEPLOY, K8S, KUSTOMIZATIONS
    ROOT = root
    DEPLOY = root / "deploy"
    K8S = DEPLOY / "k8s"
    KUSTOMIZATIONS = [K8S / "base", K8S / "overlays" / "example"]
# Oldest version with lifecycle.preStop.sleep (1.30), and the newest bundled.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    if not QUIET:
        print(f"  FAIL {message}")


def ok(message: str) -> None:
    if not QUIET:
        print(f"  ok   {message}")


# --- the operators' CRDs ------------------------------------------------------------------------
#
# A custom resource is validated against the openAPIV3Schema its operator publishes in its CRD,
# the schema the API server enforces. The CRDs come from ../shared/crds beside the repository
# (their README names each one's source repository and commit); AUTORENEW_CRDS_DIR overrides it.
# The API server prunes unknown fields, and rejects them under `kubectl apply --validate=strict`
# (the default since 1.25 is a warning): here they are errors, except under
# x-kubernetes-preserve-unknown-fields, as on the server.

def crds_dir(root: Path) -> Path:
    return Path(os.environ.get("AUTORENEW_CRDS_DIR") or root.parent / "shared" / "crds")


def structural(schema: dict) -> dict:
    """An OpenAPI v3 structural schema (with Kubernetes extensions) as a strict JSON schema."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: structural(sub) for name, sub in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = structural(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [structural(sub) for sub in out[key]]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    # Unknown fields are an error wherever the schema lists the fields and does not keep others.
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


# ObjectMeta's fields a manifest may set (the API server checks metadata itself, not the CRD).
OBJECT_META = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


_CRD_CACHE: dict[Path, dict] = {}


def load_crds(directory: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict schema of that served version (parsed once per run:
    the CRDs are over a megabyte of YAML, and the planted-fault test checks many copies)."""
    if directory in _CRD_CACHE:
        return _CRD_CACHE[directory]
    if not directory.is_dir():
        fail(f"CRDs: {directory} is missing: the operators' CRDs are read from ../shared/crds beside "
             "the repository (or AUTORENEW_CRDS_DIR); custom resources cannot be validated without them")
        return {}
    schemas = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in load_yaml_docs(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served", True):
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = structural(schema)
    ok(f"CRDs from {directory}: {', '.join(sorted(f'{k} {v}' for v, k in schemas))}")
    _CRD_CACHE[directory] = schemas
    return schemas


CRD_GROUPS = ("keda.sh", "rabbitmq.com", "redis.redis.opstreelabs.in", "monitoring.coreos.com")


def validate_custom(label: str, doc: dict, schemas: dict) -> None:
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        fail(f"{label} {name}: no served CRD version for {doc.get('apiVersion')} {doc.get('kind')}")
        return
    for key in set(doc.get("metadata", {})) - OBJECT_META:
        fail(f"{label} {name}: metadata.{key}: not an ObjectMeta field")
    for error in sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str):
        path = ".".join(map(str, error.absolute_path)) or "(top)"
        fail(f"{label} {name} (operator's CRD): {path}: {error.message}")

# --- rendering ----------------------------------------------------------------------------------

def load_yaml_docs(path: Path) -> list[dict]:
    # libyaml's loader where PyYAML has it: the CRDs are large.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as f:
        return [doc for doc in yaml.load_all(f, Loader=loader) if doc]


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

def validate_objects(label: str, docs: list[dict], crd_schemas: dict) -> None:
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if str(doc.get("apiVersion", "")).split("/")[0] in CRD_GROUPS:
            validate_custom(label, doc, crd_schemas)
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
    ok(f"{label}: {len(docs)} objects validated (Kubernetes {', '.join(K8S_VERSIONS)}; custom resources: their operators' CRDs)")


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


# KEDA 2.x's scalers (keda.sh/docs/latest/scalers): a trigger's `type` is a free string in the CRD.
KEDA_SCALERS = {
    "activemq", "apache-kafka", "arangodb", "artemis-queue", "aws-cloudwatch", "aws-dynamodb",
    "aws-dynamodb-streams", "aws-kinesis-stream", "aws-sqs-queue", "azure-app-insights",
    "azure-blob", "azure-data-explorer", "azure-eventhub", "azure-log-analytics", "azure-monitor",
    "azure-pipelines", "azure-queue", "azure-servicebus", "beanstalkd", "cassandra", "couchdb",
    "cpu", "cron", "datadog", "dynatrace", "elasticsearch", "etcd", "external", "external-push",
    "gcp-cloudtasks", "gcp-pubsub", "gcp-stackdriver", "gcp-storage", "github-runner", "graphite",
    "huawei-cloudeye", "ibmmq", "influxdb", "kafka", "kubernetes-workload", "liiklus", "loki",
    "memory", "metrics-api", "mongodb", "mssql", "mysql", "nats-jetstream", "new-relic", "nsq",
    "openstack-metric", "openstack-swift", "postgresql", "predictkube", "prometheus", "pulsar",
    "rabbitmq", "redis", "redis-cluster", "redis-cluster-streams", "redis-sentinel",
    "redis-sentinel-streams", "redis-streams", "selenium-grid", "solace-event-queue", "solr",
    "splunk", "stan", "temporal",
}


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
    for name, deployment in deployments.items():
        selector = deployment["spec"].get("selector", {}).get("matchLabels", {})
        labels = deployment["spec"]["template"].get("metadata", {}).get("labels", {})
        if not selector or not selects(selector, labels):
            fail(f"{label} Deployment/{name}: spec.selector {selector} does not select its own pod template's labels {labels}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        given = [key for key in ("minAvailable", "maxUnavailable") if key in pdb["spec"]]
        if len(given) != 1:
            fail(f"{label} PodDisruptionBudget/{pdb['metadata']['name']}: needs exactly one of minAvailable and maxUnavailable, has {given or 'neither'}")
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

    trigger_auths = {t["metadata"]["name"]: t for t in by_kind.get("TriggerAuthentication", [])}
    for scaled_object in by_kind.get("ScaledObject", []):
        so_name = f"{label} ScaledObject/{scaled_object['metadata']['name']}"
        spec = scaled_object["spec"]
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if low > high:
            fail(f"{so_name}: minReplicaCount {low} is above maxReplicaCount {high}")
        if "idleReplicaCount" in spec and spec["idleReplicaCount"] >= low:
            fail(f"{so_name}: idleReplicaCount must be below minReplicaCount")
        for trigger in spec["triggers"]:
            kind = trigger.get("type")
            if kind not in KEDA_SCALERS:
                fail(f"{so_name}: trigger type `{kind}` is not a KEDA scaler")
            ref = trigger.get("authenticationRef")
            provided = set()
            if ref:
                if ref.get("kind", "TriggerAuthentication") != "TriggerAuthentication":
                    print(f"  note {so_name}: authenticationRef {ref['name']} is a {ref['kind']}, not checked here")
                    provided = {"host"}
                elif ref["name"] not in trigger_auths:
                    fail(f"{so_name}: authenticationRef {ref['name']} is not here")
                else:
                    auth = trigger_auths[ref["name"]]["spec"]
                    provided = {entry.get("parameter") for entry in auth.get("secretTargetRef", []) + auth.get("env", [])}
            if kind == "rabbitmq":
                metadata = trigger.get("metadata", {})
                if not ({"host", "hostFromEnv"} & set(metadata)) and "host" not in provided:
                    fail(f"{so_name}: the rabbitmq trigger has no broker address: no metadata host/hostFromEnv and no authenticationRef giving `host`")
            if trigger["type"] == "rabbitmq":
                check_jobs_trigger(label, trigger["metadata"], config["amqp"]["prefix"])

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


# --- the binary's command line, from its clap definitions -----------------------------------------

def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower().replace("_", "-")


def clap_fields(body: str) -> tuple[set[str], set[str], int]:
    """(--flags, --flags that take no value, positional count) of one clap struct's body."""
    flags, switches, positional = set(), set(), 0
    attributes: list[str] = []
    for chunk in re.split(r"\n\s*(?=#\[|pub \w+:)", body):
        chunk = chunk.strip()
        if chunk.startswith("#["):
            attributes.append(chunk)
            continue
        field = re.match(r"pub (\w+):\s*([^,\n]+)", chunk)
        if not field:
            continue
        arg = " ".join(a for a in attributes if a.startswith("#[arg"))
        attributes = []
        if "#[command(" in chunk or re.search(r"\bsubcommand\b", arg):
            continue
        if re.search(r"\blong\b", arg):
            explicit = re.search(r'\blong\s*=\s*"([^"]+)"', arg)
            flag = "--" + (explicit.group(1) if explicit else kebab(field.group(1)))
            flags.add(flag)
            if field.group(2).strip() == "bool":
                switches.add(flag)
        elif not re.search(r"\bshort\b", arg):
            positional += 1
    return flags, switches, positional


def cli_commands() -> tuple[dict[str, tuple[set[str], set[str], int]], set[str]]:
    """The subcommands of src/cli.rs's `enum Command` with their flags, and the global flags.
    The flags of `stripe-sim` and `loadgen` are defined in their crates (crates/*/src)."""
    paths = [*(ROOT / "src").rglob("*.rs"), *(ROOT / "crates").glob("*/src/**/*.rs")]
    sources = {path: path.read_text() for path in paths}
    structs = {}
    for text in sources.values():
        for match in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            structs[match.group(1)] = match.group(2)
    cli = (ROOT / "src" / "cli.rs").read_text()
    enum = re.search(r"pub enum Command \{(.*?)\n\}", cli, re.S)
    commands = {}
    for match in re.finditer(r"^\s*(\w+)(?:\((\w+)\))?,", enum.group(1) if enum else "", re.M):
        body = structs.get(match.group(2) or "", "")
        commands[kebab(match.group(1))] = clap_fields(body)
    global_body = re.search(r"pub struct Cli \{(.*?)\n\}", cli, re.S)
    global_flags, global_switches, _ = clap_fields(global_body.group(1) if global_body else "")
    return commands, global_flags | {"--help", "--version"}, global_switches | {"--help", "--version"}


def check_command_line(label: str, argv: list[str]) -> str | None:
    """Checks argv (without the binary) against the CLI; returns the subcommand."""
    commands, global_flags, global_switches = cli_commands()
    subcommand = None
    positional = 0
    index = 0
    while index < len(argv):
        word = str(argv[index])
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            own, own_switches, _ = commands.get(subcommand, (set(), set(), 0))
            if flag not in global_flags and flag not in own:
                fail(f"{label}: {flag} is not a flag of `autorenew {subcommand or ''}`".replace(" `", " `").rstrip())
            elif "=" not in word and flag not in global_switches | own_switches:
                index += 1  # the flag's value
        elif subcommand is None:
            if word not in commands:
                fail(f"{label}: `{word}` is not a subcommand of autorenew (it has {', '.join(sorted(commands))})")
                return None
            subcommand = word
        else:
            positional += 1
        index += 1
    if subcommand is None:
        fail(f"{label}: no subcommand in {argv}")
    elif positional > commands[subcommand][2]:
        fail(f"{label}: `autorenew {subcommand}` takes {commands[subcommand][2]} argument(s), given {positional}")
    return subcommand


def cargo_binaries() -> set[str]:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    names = {b["name"] for b in cargo.get("bin", [])}
    if (ROOT / "src" / "main.rs").exists():
        names.add(cargo["package"]["name"])
    return names


# --- metrics and labels the code exports ----------------------------------------------------------

def exported_series() -> dict[str, set[str]]:
    """metric name -> its label names, from the code's `counter!` / `gauge!` / `histogram!` calls."""
    texts = [path.read_text() for path in (ROOT / "src").rglob("*.rs")]
    # Constants by file first: two modules may both name theirs REQUESTS_TOTAL.
    local = [dict(re.findall(r'const (\w+): &str = "(autorenew_[a-z0-9_]+)"', text)) for text in texts]
    anywhere = {key: value for constants in local for key, value in constants.items()}
    series: dict[str, set[str]] = {name: set() for constants in local for name in constants.values()}
    for text, constants in zip(texts, local):
        for match in re.finditer(r"\b(counter|gauge|histogram)!\(\s*([^,)]+)(.*?)\)\s*\.", text, re.S):
            target = match.group(2).strip()
            key = target.split("::")[-1]
            name = target.strip('"') if target.startswith('"') else constants.get(key, anywhere.get(key))
            if not name or not name.startswith("autorenew_"):
                continue
            labels = set(re.findall(r'"([a-z_]+)"\s*=>', match.group(3)))
            series.setdefault(name, set()).update(labels)
    return series


# Labels Prometheus adds to every scraped series (scrape config, Kubernetes service discovery).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "node"}


def check_promql(label: str, expr: str, exported: dict[str, set[str]]) -> set[str]:
    """Metric and label names of one query against the code; returns the autorenew metrics used."""
    used = set()
    labels_in_scope = set()
    for match in re.finditer(r"\b(autorenew_[a-z0-9_]+)\s*(\{[^}]*\})?", expr):
        metric, selector = match.group(1), match.group(2) or ""
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        if base not in exported:
            fail(f"{label}: {metric} is not exported by the code")
            continue
        used.add(base)
        allowed = exported[base] | ({"le"} if metric.endswith("_bucket") else set())
        labels_in_scope |= allowed
        for name in re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", selector):
            if name not in allowed:
                fail(f"{label}: {metric} has no label `{name}` (the code sets {sorted(allowed) or 'none'})")
    if used and not re.search(r"\brabbitmq_", expr):
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for name in re.findall(r"\w+", clause):
                if name not in labels_in_scope | TARGET_LABELS:
                    fail(f"{label}: groups by `{name}`, a label none of its autorenew metrics has")
    return used


# --- compose ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def compose_schema_check(tool: str, text: str) -> subprocess.CompletedProcess:
    """check-jsonschema on one Compose file's text (a few seconds each: run once per text)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as copy:
        copy.write(text)
        copy.flush()
        return subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", copy.name],
                              capture_output=True, text=True)


def check_compose() -> None:
    path = DEPLOY / "compose.yaml"
    venv_bin = Path(sys.executable).parent
    result = compose_schema_check(str(venv_bin / "check-jsonschema"), path.read_text())
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
    commands = {}
    for name, service in services.items():
        if service.get("image", "").startswith("autorenew") or "build" in service:
            commands[name] = check_compose_service(name, service)
    for name in ("intake", "worker"):
        if commands.get(name) != name:
            fail(f"compose.yaml {name}: its command does not run `autorenew {name}`")
    for name, service in services.items():
        for port in service.get("ports", []) or []:
            host = host_port(str(port.get("published", "")) if isinstance(port, dict) else str(port))
            if host in ("5672", "6379"):
                fail(f"compose.yaml {name}: publishes host port {host}, which a local RabbitMQ or Redis (the quick start's) already holds")
    grace = worker.get("stop_grace_period", "10s")
    if int(grace.rstrip("s")) <= 20:
        fail(f"compose.yaml: the worker's stop_grace_period {grace} does not cover its 20 s drain")
    ok(f"compose.yaml: services {', '.join(services)}; workers scale with --scale worker=N")


def host_port(mapping: str) -> str:
    """The host side of a Compose port ("127.0.0.1:${X:-5673}:5672" -> "5673"; "8080" -> "")."""
    mapping = re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", mapping)
    parts = mapping.split(":")
    return parts[-2] if len(parts) >= 2 else ""


def check_compose_service(name: str, service: dict) -> str | None:
    """An autorenew container: its command, its configuration mount, its healthcheck."""
    label = f"compose.yaml {name}"
    command = service.get("command")
    if not isinstance(command, list):
        fail(f"{label}: command must be a list of the binary's arguments, got {command!r}")
        return None
    subcommand = check_command_line(f"{label} command", command)
    environment = service.get("environment", {}) or {}
    mounts = [str(v).split(":")[1] for v in service.get("volumes", []) or [] if isinstance(v, str) and ":" in v]
    if subcommand in ("intake", "worker", "run", "dlq", "loadgen"):
        if "--config" not in command:
            fail(f"{label}: no --config: the image carries no configuration, so `{subcommand}` would find none")
        else:
            path = str(command[command.index("--config") + 1])
            if path not in mounts:
                fail(f"{label}: --config {path} is not a mounted file (mounts: {mounts})")
    listen = {"intake": environment.get("AUTORENEW__INTAKE__LISTEN"),
              "worker": environment.get("AUTORENEW__WORKER__LISTEN")}.get(subcommand)
    if subcommand == "stripe-sim" and "--listen" in command:
        listen = str(command[command.index("--listen") + 1])
    test = (service.get("healthcheck") or {}).get("test")
    if subcommand in ("intake", "worker", "stripe-sim"):
        if not isinstance(test, list) or test[:1] != ["CMD"] or not str(test[1:2] and test[1]).endswith("autorenew"):
            fail(f"{label}: no healthcheck running the binary (`[\"CMD\", \"/usr/local/bin/autorenew\", \"probe\", URL]`; the image has no shell)")
        else:
            if check_command_line(f"{label} healthcheck", test[2:]) == "probe":
                url = str(test[-1])
                port = re.match(r"http://[^/:]+:(\d+)/", url)
                if listen and (not port or port.group(1) != listen.rsplit(":", 1)[-1]):
                    fail(f"{label} healthcheck: probes {url}, but the service listens on {listen}")
                if subcommand in ("intake", "worker") and not url.endswith("/readyz"):
                    fail(f"{label} healthcheck: probes {url}, not /readyz")
            else:
                fail(f"{label} healthcheck: does not run `autorenew probe`")
    return subcommand


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
    binaries = cargo_binaries()
    for line in lines:
        for name in re.findall(r"--bin[ =](\S+)", line):
            if name not in binaries:
                fail(f"Dockerfile: --bin {name}: Cargo.toml builds no such binary (it has {', '.join(sorted(binaries))})")
    built = re.findall(r"target/release/(\S+)", " ".join(lines))
    for name in built:
        if name not in binaries:
            fail(f"Dockerfile: copies target/release/{name}, which Cargo.toml does not build")
    for line in final:
        if line.upper().startswith("COPY ") and "config" in line and ".toml" in line:
            fail(f"Dockerfile: the runtime image bakes in a configuration ({line}): it would carry partners and their secrets")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for line in lines:
        if line.upper().startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                if f"!{source}" not in ignore and f"!{source}/" not in ignore:
                    fail(f"Dockerfile: {source} is excluded from the build context by Dockerfile.dockerignore")
    ok(f"Dockerfile: {len(stages)} stages, runtime user {users[-1] if users else '?'}")


# --- Grafana -------------------------------------------------------------------------------------

def exported_metrics() -> set[str]:
    return set(exported_series())


def query_exprs(node) -> list[str]:
    exprs = []
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"])
        for value in node.values():
            exprs += query_exprs(value)
    elif isinstance(node, list):
        for value in node:
            exprs += query_exprs(value)
    return exprs


def check_grafana() -> None:
    exported = exported_series()
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs = query_exprs(dashboard.get("panels", []))
        used = set()
        for expr in exprs:
            used |= check_promql(path.name, expr, exported)
        rabbit = sorted({m for e in exprs for m in re.findall(r"\b(rabbitmq_[a-z0-9_]+)", e)})
        ok(f"{path.name}: {len(exprs)} queries; autorenew metrics {sorted(used)}; from RabbitMQ's plugin {rabbit}")
        missing = set(exported) - used
        if missing:
            fail(f"{path.name}: exported metrics without a panel: {sorted(missing)}")


# --- alert rules ----------------------------------------------------------------------------------

def check_alert_rules() -> None:
    directory = DEPLOY / "prometheus"
    plain_path, operator_path = directory / "autorenew.rules.yml", directory / "autorenew-rules.yaml"
    if not plain_path.is_file() or not operator_path.is_file():
        fail(f"deploy/prometheus: needs both {plain_path.name} and {operator_path.name}")
        return
    plain = yaml.safe_load(plain_path.read_text())
    operator = yaml.safe_load(operator_path.read_text())
    # The PrometheusRule's CRD is not among ../shared/crds: its whole schema is this (spec.groups
    # being a rules file's groups, which promtool checks in the plain file).
    if operator.get("apiVersion") != "monitoring.coreos.com/v1" or operator.get("kind") != "PrometheusRule":
        fail(f"{operator_path.name}: not a monitoring.coreos.com/v1 PrometheusRule")
    for key in set(operator) - {"apiVersion", "kind", "metadata", "spec"}:
        fail(f"{operator_path.name}: unknown field {key}")
    for key in set(operator.get("metadata", {})) - OBJECT_META:
        fail(f"{operator_path.name}: metadata.{key}: not an ObjectMeta field")
    for key in set(operator.get("spec", {})) - {"groups"}:
        fail(f"{operator_path.name}: unknown field spec.{key}")
    if operator.get("spec", {}).get("groups") != plain.get("groups"):
        fail(f"{operator_path.name} and {plain_path.name} hold different rules: keep them identical")
    exported = exported_series()
    config = tomllib.loads((K8S / "base" / "config.toml").read_text())
    prefix = config.get("amqp", {}).get("prefix", "autorenew")
    runbook = (DEPLOY / "README.md").read_text()
    alerts_section = runbook.split("## Alerts", 1)[1].split("\n## ", 1)[0] if "## Alerts" in runbook else ""
    names = []
    for group in plain.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            names.append(name)
            check_promql(f"{plain_path.name} {name}", str(rule.get("expr", "")), exported)
            for queue in re.findall(r'queue="([^"]+)"', str(rule.get("expr", ""))):
                if not queue.startswith(f"{prefix}."):
                    fail(f"{plain_path.name} {name}: queue {queue} is not under amqp.prefix {prefix}")
            if "alert" in rule:
                if not re.search(rf"^\|\s*`{re.escape(name)}`\s*\|", alerts_section, re.M):
                    fail(f"{plain_path.name} {name}: no runbook line in deploy/README.md's Alerts table")
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    fail(f"{plain_path.name} {name}: severity must be critical, warning or info")
    ok(f"alert rules: {len(names)} ({', '.join(names)}), each with a runbook line; PrometheusRule identical")


def run_checks(root: Path, quiet: bool = False) -> list[str]:
    """Runs every check on the repository at `root`; returns the failures."""
    global QUIET
    QUIET = quiet
    set_root(root)
    failures.clear()
    sections = [("OpenAPI", check_openapi), ("Kubernetes", check_kubernetes), ("Compose", check_compose),
                ("Dockerfile", check_dockerfile), ("Grafana", check_grafana), ("Alert rules", check_alert_rules)]
    for title, check in sections:
        if not quiet:
            print(f"== {title}")
        try:
            check()
        except Exception as error:  # a fault the checks did not foresee still fails, by name
            fail(f"{title}: the check stopped on {type(error).__name__}: {error}")
    return list(failures)


def check_openapi() -> None:
    try:
        validate_openapi(json.loads((ROOT / "src" / "intake" / "openapi.json").read_text()))
        ok("src/intake/openapi.json: valid OpenAPI 3")
    except Exception as error:  # the validator raises several types
        fail(f"src/intake/openapi.json: {error}")


def check_kubernetes() -> None:
    crd_schemas = load_crds(crds_dir(ROOT))
    for directory in KUSTOMIZATIONS:
        check_kustomization_lists(directory)
    for directory in KUSTOMIZATIONS:
        label = str(directory.relative_to(K8S))
        docs = render(directory)
        validate_objects(label, docs, crd_schemas)
        check_references(label, docs)


def main() -> int:
    found = run_checks(ROOT)
    if found:
        print(f"\ncheck-deploy: {len(found)} problem(s)")
        return 1
    print("\ncheck-deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
