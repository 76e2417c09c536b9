#!/usr/bin/env bash
# Runs Lepton's default test suite (the command README.md gives and .ci/run calls).
#
# Creates .venv on first use and installs the project with its test extras, so
# a fresh machine needs nothing but Python >= 3.11. Extra arguments go to pytest
# (e.g. `./run-tests.sh -m soak`, `./run-tests.sh tests/test_units.py`).
set -euo pipefail
cd "$(dirname "$0")"
LEPTON_EXTRAS="[test]"
# shellcheck source=tools/venv.sh
. tools/venv.sh

# Network-namespace tests need ip(8) and iptables; install them when we can.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=""
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
      || echo "run-tests.sh: could not install$missing; namespace tests will be skipped" >&2
  fi
fi

ruff check .
ruff format --check .
exec python -m pytest "$@"
