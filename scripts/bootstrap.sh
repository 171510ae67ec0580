#!/usr/bin/env bash
# Installs what c2pg needs on a fresh machine, and nothing twice:
#   - Debian packages: PostgreSQL 15 (the local stack's target), OpenJDK 17 and Maven
#     (Cassandra, Kafka and the Debezium connector come from Maven Central at `stack up`),
#     Chromium (headless: the control plane's status-page test and its screenshot);
#   - a virtual environment .venv with the project and its test and stack extras (stack:
#     OpenBao's `bao` server for `c2pg stack up`).
# Java 21+ for the schema registry (Apicurio 3.3) is the Temurin JDK under /usr/lib/jvm on
# our machines; see docs/local-stack.md when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || packages+=(postgresql-15)
[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ] || packages+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
if ((${#packages[@]})); then
  echo "bootstrap: installing ${packages[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

python=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $python"
  "$python" -m venv .venv
fi
stamp=.venv/.c2pg-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing the project into .venv (pip's cache makes reruns fast)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,stack]'
  touch "$stamp"
fi

# The KubeRay harness (kuberay/harness, a Go module): built here once so that its module
# download and cold compile (about 3.5 minutes on 2 cores) land in Go's caches, and the
# tests' own build takes seconds. It needs Go 1.25 or newer (Debian's golang-go is older).
if command -v go >/dev/null 2>&1; then
  echo "bootstrap: building kuberay/harness ($(go version | cut -d' ' -f3); Go's build cache makes reruns fast)"
  (cd kuberay/harness && go build -o /dev/null .) || { echo "bootstrap: kuberay/harness does not build"; exit 1; }
else
  echo "bootstrap: no Go: the KubeRay harness tests will fail; install Go 1.25 or newer (see kuberay/README.md)"
fi
