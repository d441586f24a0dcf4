#!/usr/bin/env bash
# Install the benchmark's peers (Bytewax, Pathway, Tenzir, orjson) into their own virtualenv, so
# they never touch LogBus's dependencies. bench/bench_pipeline.py finds it at bench/.venv-peers
# (or pass --peers-venv PATH). jq is a system package: apt-get install jq.
#
#   bench/setup_peers.sh                 # creates bench/.venv-peers with python3
#   PYTHON=python3.11 bench/setup_peers.sh /opt/peers
#
# Versions are pinned to the ones whose APIs bench/peers/ was written against (Bytewax's windowing
# API and Pathway's temporal API change between minor versions); override with PEERS="..." to try others.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.venv-peers}"
python="${PYTHON:-python3}"
peers="${PEERS:-bytewax==0.21.1 pathway==0.33.0 tenzir==6.20.0 orjson}"

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086  # $peers is a list of requirement specifiers
"$venv/bin/python" -m pip install $peers

# Prove each peer runs, not just that it installed.
"$venv/bin/python" -c "import bytewax.operators.windowing, orjson, pathway; print('bytewax, pathway, orjson: ok')"
"$venv/bin/tenzir" 'from {x: 1} | write_ndjson' >/dev/null && echo "tenzir: ok"
command -v jq >/dev/null && echo "jq: ok ($(jq --version))" || echo "jq: not installed (apt-get install jq)"
echo "peers ready in $venv"
