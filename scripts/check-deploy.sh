#!/usr/bin/env bash
# Checks deploy/ (Kubernetes manifests against Kubernetes' and the operators' schemas, Compose
# file, Dockerfile, Grafana dashboard, alert rules with promtool) and the OpenAPI document, without
# a container engine or a cluster: see scripts/check_deploy.py; then plants faults in copies of
# the repository and checks that each is caught (scripts/check_deploy_faults.py).
# Installs its Python tools into a cached virtualenv on first use (about 20 s), then runs in a few.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${AUTORENEW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/autorenew}
VENV=$TOOLS/check-deploy
REQUIREMENTS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 openapi-spec-validator==0.9.0 pyyaml)

if ! "$VENV/bin/python" -c 'import kubernetes_validate, check_jsonschema, openapi_spec_validator, yaml' 2>/dev/null; then
  echo "== check-deploy: installing ${REQUIREMENTS[*]} into $VENV"
  mkdir -p "$TOOLS"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
fi
if ! command -v kubectl >/dev/null; then
  echo "== check-deploy: kubectl not found: kustomizations are checked file by file, without rendering"
fi
"$VENV/bin/python" scripts/check_deploy.py

# The alert rules and their unit tests. Debian's `prometheus` package carries promtool (its
# server is not started where there is no service manager, as in CI).
if ! command -v promtool >/dev/null; then
  echo "== check-deploy: installing promtool (Debian's prometheus package)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo "== promtool"
promtool check rules deploy/prometheus/autorenew.rules.yml
promtool test rules deploy/prometheus/tests.yml

# The checker's own test: every planted fault in its table must be caught.
exec "$VENV/bin/python" scripts/check_deploy_faults.py
