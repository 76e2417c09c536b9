#!/usr/bin/env bash
# One command from a fresh checkout to a working local Lepton cluster:
# installs Lepton into .venv, starts 3 controllers + 2 agents on loopback,
# submits the idea's worked example (examples/worked-example.yaml) and shows
# where each task landed and why the others did not.
#
#   ./quickstart.sh          # start (or reuse) the cluster and run the example
#   ./quickstart.sh down     # stop everything it started
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=tools/venv.sh
. tools/venv.sh

if [ "${1:-}" = down ]; then
  exec python tools/local_cluster.py down
fi

python tools/local_cluster.py status >/dev/null 2>&1 || python tools/local_cluster.py up
export LEPTON_CONTROLLERS
LEPTON_CONTROLLERS=$(cat .lepton-local/controllers)

echo "waiting for a leader and two ready nodes..."
for _ in $(seq 1 60); do
  ready=$(lepton-ctl nodes list -o json 2>/dev/null | python -c \
    'import json,sys; print(sum(1 for n in json.load(sys.stdin) if n["state"].startswith("ready")))' 2>/dev/null || echo 0)
  [ "$ready" -ge 2 ] && break
  sleep 1
done
lepton-ctl cluster status
echo
lepton-ctl nodes list
echo
echo "\$ lepton-ctl jobs submit examples/worked-example.yaml"
lepton-ctl jobs submit examples/worked-example.yaml -o table || true
sleep 3
echo
echo "\$ lepton-ctl tasks list"
lepton-ctl tasks list
echo
echo "\$ lepton-ctl nodes list"
lepton-ctl nodes list
cat <<MSG

The cluster keeps running. Try:
  source .venv/bin/activate; export LEPTON_CONTROLLERS=$LEPTON_CONTROLLERS
  lepton-ctl top            lepton-ctl events        lepton-ctl jobs list
Stop it with: ./quickstart.sh down
MSG
