"""The test of scripts/check_deploy.py: plants one fault at a time in a copy of the repository and
checks that the checker reports it (run by scripts/check-deploy.sh, in its virtualenv).

Each row of FAULTS is a fault someone could make: the file, the text replaced, its replacement,
and a piece of the message the checker must give. A row whose text is no longer in the file fails
too, so the table cannot silently go stale. The unchanged copy must pass.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_deploy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COPIED = ["deploy", "src", "crates", "benches", "Cargo.toml", "Cargo.lock", "config.toml"]

WORKER = "deploy/k8s/base/worker.yaml"
INTAKE = "deploy/k8s/base/intake.yaml"
RABBIT = "deploy/k8s/base/rabbitmq.yaml"
REDIS = "deploy/k8s/base/redis.yaml"
SCALING = "deploy/k8s/overlays/example/worker-scaling.yaml"
COMPOSE = "deploy/compose.yaml"
DOCKERFILE = "deploy/Dockerfile"
GRAFANA = "deploy/grafana/autorenew.json"
RULES = "deploy/prometheus/autorenew.rules.yml"
OPERATOR_RULES = "deploy/prometheus/autorenew-rules.yaml"
K8S_CONFIG = "deploy/k8s/base/config.toml"

# (what, file, text, replaced by, expected in a failure message)
FAULTS = [
    # The 19 the hand-made schemas let through, among them the eight the issue names.
    ("KEDA trigger type typo", WORKER, "- type: rabbitmq", "- type: rabbitmqq", "is not a KEDA scaler"),
    ("KEDA trigger without its authenticationRef", WORKER,
     "      authenticationRef:\n        name: autorenew-rabbitmq\n", "", "no broker address"),
    ("minReplicaCount above maxReplicaCount", SCALING, "minReplicaCount: 2", "minReplicaCount: 5",
     "minReplicaCount 5 is above maxReplicaCount 3"),
    ("RabbitMQ storage in words", RABBIT, "storage: 20Gi", 'storage: "20 gigs"', "persistence.storage"),
    ("Deployment selector that misses its template", WORKER,
     "  selector:\n    matchLabels:\n      app.kubernetes.io/name: autorenew\n      app.kubernetes.io/component: worker\n  template:",
     "  selector:\n    matchLabels:\n      app.kubernetes.io/name: autorenew\n      app.kubernetes.io/component: workers\n  template:",
     "does not select its own pod template"),
    ("PDB with minAvailable and maxUnavailable", INTAKE, "  minAvailable: 1\n",
     "  minAvailable: 1\n  maxUnavailable: 1\n", "exactly one of minAvailable and maxUnavailable"),
    ("Compose worker command typo", COMPOSE, '"/etc/autorenew/config.toml", "worker"]',
     '"/etc/autorenew/config.toml", "wroker"]', "`wroker` is not a subcommand"),
    ("Dockerfile --bin typo", DOCKERFILE, "--bin autorenew", "--bin autorenw", "--bin autorenw"),
    ("unknown field in a RabbitmqCluster", RABBIT, "  replicas: 3\n", "  replicas: 3\n  replicaz: 3\n",
     "Additional properties are not allowed ('replicaz'"),
    ("RabbitmqCluster replicas as a string", RABBIT, "  replicas: 3\n", '  replicas: "3"\n', "spec.replicas"),
    ("RabbitMQ plugin list as a string", RABBIT,
     "    additionalPlugins:\n      - rabbitmq_management\n      - rabbitmq_prometheus\n",
     "    additionalPlugins: rabbitmq_management,rabbitmq_prometheus\n", "spec.rabbitmq.additionalPlugins"),
    ("RedisReplication field misspelt", REDIS, "    imagePullPolicy: IfNotPresent\n    redisSecret:",
     "    imagePulPolicy: IfNotPresent\n    redisSecret:", "'imagePulPolicy'"),
    ("RedisReplication clusterSize as a string", REDIS, "spec:\n  clusterSize: 3\n  podSecurityContext:\n    runAsUser: 1000\n    fsGroup: 1000\n  kubernetesConfig:\n    image: quay.io/opstree/redis:v7",
     'spec:\n  clusterSize: "3"\n  podSecurityContext:\n    runAsUser: 1000\n    fsGroup: 1000\n  kubernetesConfig:\n    image: quay.io/opstree/redis:v7', "spec.clusterSize"),
    ("RedisSentinel config field misspelt", REDIS, "    downAfterMilliseconds:", "    downAfterMiliseconds:",
     "'downAfterMiliseconds'"),
    ("RedisReplication storage under the wrong key", REDIS, "  storage:\n    volumeClaimTemplate:",
     "  storage:\n    volumeClaimTemplates:", "'volumeClaimTemplates'"),
    ("TriggerAuthentication entry misspelt", WORKER, "    - parameter: host", "    - paramter: host", "'paramter'"),
    ("ScaledObject field misspelt", WORKER, "  pollingInterval: 15", "  pollingIntervall: 15", "'pollingIntervall'"),
    ("ScaledObject cooldown as a string", WORKER, "  cooldownPeriod: 300", '  cooldownPeriod: "300"',
     "spec.cooldownPeriod"),
    ("unknown field in a custom resource's metadata", RABBIT, "kind: RabbitmqCluster\nmetadata:\n",
     "kind: RabbitmqCluster\nmetadata:\n  labelz: {}\n", "metadata.labelz"),
    # What was caught before, and must stay caught.
    ("the ScaledObject watches another queue", WORKER, "queueName: ^autorenew\\.jobs(\\..+)?$",
     "queueName: ^autorenew\\.job(\\..+)?$", "misses"),
    ("the ScaledObject watches the shared queue alone", WORKER, '        useRegex: "true"\n', "",
     "watches ^autorenew"),
    ("the ScaledObject takes the largest lane, not the sum", WORKER, "        operation: sum", "        operation: max",
     "operation max"),
    ("authenticationRef to a missing TriggerAuthentication", WORKER, "        name: autorenew-rabbitmq\n",
     "        name: autorenew-rabbit\n", "authenticationRef autorenew-rabbit is not here"),
    ("Service selector typo", INTAKE, "  selector:\n    app.kubernetes.io/name: autorenew\n    app.kubernetes.io/component: intake\n  ports:",
     "  selector:\n    app.kubernetes.io/name: autorenew\n    app.kubernetes.io/component: intak\n  ports:",
     "its selector matches no pod template"),
    ("unknown field in a Deployment", WORKER, "          image: autorenew\n", "          image: autorenew\n          imagePullPolice: Always\n",
     "imagePullPolice"),
    ("readiness probe on the wrong path", WORKER, "              path: /readyz", "              path: /ready", "expected /readyz"),
    ("unknown configuration key", K8S_CONFIG, "concurrency = 32", "concurency = 32", "unknown key worker.concurency"),
    ("worker grace period shorter than its drain", WORKER, "terminationGracePeriodSeconds: 40",
     "terminationGracePeriodSeconds: 25", "does not cover the drain"),
    ("a Compose flag the subcommand does not have", COMPOSE, '"--rate-limit", "test"', '"--rate-limt", "test"',
     "--rate-limt is not a flag of `autorenew stripe-sim`"),
    ("Compose healthcheck on the wrong port", COMPOSE, '"probe", "http://127.0.0.1:9090/readyz"',
     '"probe", "http://127.0.0.1:8080/readyz"', "but the service listens on 0.0.0.0:9090"),
    ("Compose healthcheck that is not `autorenew probe`", COMPOSE,
     '["CMD", "/usr/local/bin/autorenew", "probe", "http://127.0.0.1:8080/readyz"]',
     '["CMD", "/usr/local/bin/autorenew", "prob", "http://127.0.0.1:8080/readyz"]', "`prob` is not a subcommand"),
    ("Compose publishes RabbitMQ on the quick start's port", COMPOSE, "${AUTORENEW_HOST_AMQP_PORT:-5673}",
     "${AUTORENEW_HOST_AMQP_PORT:-5672}", "publishes host port 5672"),
    ("Compose intake without its configuration", COMPOSE,
     'command: ["--config", "/etc/autorenew/config.toml", "intake"]', 'command: ["intake"]',
     "no --config: the image carries no configuration"),
    ("the image bakes in config.toml", DOCKERFILE, "WORKDIR /app\n", "COPY config.toml /app/config.toml\nWORKDIR /app\n",
     "bakes in a configuration"),
    ("a dashboard metric the code does not export", GRAFANA, "autorenew_worker_jobs_total[", "autorenew_worker_job_total[",
     "autorenew_worker_job_total is not exported"),
    ("a dashboard label the code does not set", GRAFANA, "sum by (outcome) (rate(autorenew_worker_jobs_total",
     "sum by (result) (rate(autorenew_worker_jobs_total", "groups by `result`"),
    ("a dashboard label matcher the code does not set", GRAFANA, 'autorenew_worker_jobs_total{outcome=\\"failed\\"}',
     'autorenew_worker_jobs_total{result=\\"failed\\"}', "has no label `result`"),
    ("an alert on a metric the code does not export", RULES, "autorenew_stripe_errors_total[5m]",
     "autorenew_stripe_error_total[5m]", "autorenew_stripe_error_total is not exported"),
    ("an alert without its runbook line", "deploy/README.md", "| `AutorenewDeadLettersGrowing` |", "| `DeadLetters` |",
     "AutorenewDeadLettersGrowing: no runbook line"),
    ("the PrometheusRule and the rules file drift apart", OPERATOR_RULES, "for: 15m", "for: 20m",
     "hold different rules"),
    ("an alert on another prefix's queue", RULES, 'queue="autorenew.dead"', 'queue="payments.dead"',
     "queue payments.dead is not under amqp.prefix autorenew"),
]


def copy_repository(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy2(source, target / name)


def main() -> int:
    # The copies sit in a temporary folder: the CRDs stay where the real repository finds them.
    os.environ.setdefault("AUTORENEW_CRDS_DIR", str(check_deploy.crds_dir(ROOT)))
    problems = []
    with tempfile.TemporaryDirectory(prefix="check-deploy-faults-") as scratch:
        clean = Path(scratch) / "clean" / "repo"
        copy_repository(clean)
        found = check_deploy.run_checks(clean, quiet=True)
        if found:
            problems.append(f"the unchanged copy does not pass: {found}")
        for index, (what, relative, text, replacement, expected) in enumerate(FAULTS):
            root = Path(scratch) / f"fault-{index}" / "repo"
            copy_repository(root)
            path = root / relative
            original = path.read_text()
            if text not in original:
                problems.append(f"{what}: the table is stale, {relative} no longer holds {text!r}")
                continue
            path.write_text(original.replace(text, replacement, 1))
            found = check_deploy.run_checks(root, quiet=True)
            caught = [message for message in found if expected in message]
            mark = "caught" if caught else "MISSED"
            print(f"  {mark:6} {what}: {caught[0] if caught else found or 'no failure at all'}"[:220])
            if not caught:
                problems.append(f"{what}: not caught with {expected!r} (got {found})")
    check_deploy.set_root(ROOT)
    if problems:
        print(f"\ncheck-deploy faults: {len(problems)} of {len(FAULTS)} not caught:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"\ncheck-deploy faults: all {len(FAULTS)} planted faults caught, the unchanged copy passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
