# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/deploy.sh: the Python tools of
# tools/python/requirements.txt (cargo-lambda, ziglang, cfn-lint) in the
# project-local venv .venv/, installed when missing or out of date; and
# checkov (tools/python/checkov-requirements.txt) in .venv-checkov/, a venv
# of its own because its pins conflict with those of .venv/.
#
# After `python_tools`, .venv/bin is first on PATH, so `cargo lambda` and
# `cfn-lint` are found. After `checkov_tools`, `checkov` runs
# .venv-checkov/bin/checkov (that venv is not put on PATH: its python and
# scripts would shadow those of .venv/).

PYTHON_TOOLS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# python_venv VENV REQUIREMENTS: VENV exists and holds exactly what
# REQUIREMENTS pins (reinstalled when the file changed).
python_venv() {
  local venv="$1" requirements="$2"
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
    printf '[python] installing %s\n' "${requirements#"$PYTHON_TOOLS_ROOT"/}" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
    cp "$requirements" "$stamp"
  fi
}

python_tools() {
  python_venv "$PYTHON_TOOLS_ROOT/.venv" "$PYTHON_TOOLS_ROOT/tools/python/requirements.txt" || return 1
  export PATH="$PYTHON_TOOLS_ROOT/.venv/bin:$PATH"
}

checkov_tools() {
  python_venv "$PYTHON_TOOLS_ROOT/.venv-checkov" "$PYTHON_TOOLS_ROOT/tools/python/checkov-requirements.txt"
}

checkov() {
  "$PYTHON_TOOLS_ROOT/.venv-checkov/bin/checkov" "$@"
}
