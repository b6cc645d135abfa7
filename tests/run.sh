#!/usr/bin/env bash
# Installs everything the tests need (into .venv) and runs the whole suite:
# lint, import contracts, type checks, unit tests, integration tests against real nats-server processes.
# Extra arguments go to pytest, e.g. `tests/run.sh -k resume -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== import contracts (pyproject.toml [tool.importlinter])"
.venv/bin/lint-imports --no-cache
echo "== mypy"
.venv/bin/mypy
echo "== chromium (for tests/browser)"
if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
echo "== docker engine (for tests/simulate)"
if [ "${CI:-}" = true ]; then
    tests/docker_engine.sh
else
    tests/docker_engine.sh || echo "(no Docker engine: tests/simulate will be skipped)" >&2
fi
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
