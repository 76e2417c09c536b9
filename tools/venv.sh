# Sourced by quickstart.sh and run-tests.sh: finds Python >= 3.11, creates
# .venv on first use and installs the project (with the extras in $LEPTON_EXTRAS).
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$cand; break
    fi
  done
fi
[ -n "$PY" ] || { echo "Python >= 3.11 is required" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv || { echo "could not create .venv (on Debian: apt-get install python3-venv)" >&2; exit 2; }
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# pip's build warnings are noise for a newcomer; show them only when it fails.
if ! python -m pip install -q -e ".${LEPTON_EXTRAS:-}" >.venv/install.log 2>&1; then
  cat .venv/install.log >&2
  echo "installing Lepton failed (log above, also in .venv/install.log)" >&2
  exit 1
fi
