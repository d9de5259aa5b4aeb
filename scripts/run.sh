#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the main job: diagnose this machine, pick the fastest working route
# and train on it, and show what each route is worth here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec "$VENV/bin/navitrain" run "$@"
