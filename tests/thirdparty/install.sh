#!/usr/bin/env bash
# Creates the venv of the third-party upstream (LiteLLM proxy, pinned in
# requirements.txt beside this file) at $1, default target/thirdparty-venv.
# Needs the network once; the tests then run it offline. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/target/thirdparty-venv}"
req="$root/tests/thirdparty/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/litellm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
"$venv/bin/pip" check --disable-pip-version-check >/dev/null
echo "$want" > "$stamp"
