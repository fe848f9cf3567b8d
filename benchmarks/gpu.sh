#!/usr/bin/env bash
# Run benchmarks/gpu.py unattended from any directory with this checkout's clipalign on the path; arguments
# pass through (e.g. --quick). Wheels in benchmarks/wheels/ are installed offline when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu.py "$@"
