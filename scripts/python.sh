# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/deploy.sh: the Python tools of
# tools/python/requirements.txt (cargo-lambda, ziglang, cfn-lint) in the
# project-local venv .venv/, installed when missing or out of date.
#
# After `python_tools`, .venv/bin is first on PATH, so `cargo lambda` and
# `cfn-lint` are found.

PYTHON_TOOLS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

python_tools() {
  local venv="$PYTHON_TOOLS_ROOT/.venv"
  local requirements="$PYTHON_TOOLS_ROOT/tools/python/requirements.txt"
  local stamp="$venv/.requirements.txt"
  if ! command -v python3 >/dev/null; then
    printf '[python] python3 is missing: install it (apt-get install python3 python3-venv)\n' >&2
    return 1
  fi
  if [ ! -x "$venv/bin/python" ]; then
    printf '[python] creating the venv %s\n' "$venv" >&2
    python3 -m venv "$venv" >&2 || {
      printf '[python] cannot create a venv: install python3-venv (apt-get install python3-venv)\n' >&2
      return 1
    }
  fi
  if ! cmp -s "$requirements" "$stamp"; then
    printf '[python] installing tools/python/requirements.txt\n' >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$stamp"
  fi
  export PATH="$venv/bin:$PATH"
}
