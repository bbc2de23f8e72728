#!/usr/bin/env bash
# Installs whatever is missing, idempotently: Debian's Fashion-MNIST (where apt can), a .venv with uv,
# and this project (editable) with its pinned stack. Fast when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1

# 1. Data: Debian ships Fashion-MNIST as a package; elsewhere the pipeline falls back (see README).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "setup: could not apt-get dataset-fashion-mnist; prepare will use data.root, torchvision or fail with the fix") || true
fi

# 1b. The team stack's PostgreSQL server binaries (`lifelong stack up`) and the browser of the UI check:
# Debian's postgresql and chromium. Without root or apt, `lifelong stack up` names what is missing.
missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; } \
    || echo "setup: could not apt-get ${missing[*]}; the team stack and the UI check need them") || true
fi

# 2. Python environment: uv resolves and installs the whole pinned set in well under a minute.
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.lifelong-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check uv
  extra=()
  # Machines with a local wheel mirror (pip's config names it) let uv take torch from disk.
  for idx in /opt/pypi-more/simple /opt/pypi/simple; do
    [ -d "$idx" ] && extra+=(--extra-index-url "file://$idx")
  done
  [ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)
  VIRTUAL_ENV="$PWD/.venv" .venv/bin/uv pip install -q --index-strategy unsafe-best-match "${extra[@]}" -e ".[dev]"
  echo "$want" > "$stamp"
fi
