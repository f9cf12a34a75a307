#!/usr/bin/env bash
# A macOS worker: serves the `macos` queue (compile + bundle) and, on Apple silicon, `convert` too.
# Needs Xcode (xcrun coremlcompiler), Python 3.11 and this repository installed: pip install -e .
# The environment comes from ~/.config/coreml-publisher/env (COREML_PUBLISH_DATABASE_URL, _BROKER_URL,
# _ARTIFACT_STORE pointing at the same database, Redis and shared store as the Linux side, and HF_TOKEN).
set -euo pipefail
env_file="${HOME}/.config/coreml-publisher/env"
if [ -f "$env_file" ]; then set -a; . "$env_file"; set +a; fi
xcrun --find coremlcompiler >/dev/null || { echo "xcrun coremlcompiler not found: install Xcode" >&2; exit 1; }
exec coreml-publish worker "$@"
