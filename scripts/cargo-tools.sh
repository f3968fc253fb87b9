# shellcheck shell=bash
# Sourced by scripts/test.sh: the cargo subcommands the tests use, at pinned
# versions, built from crates.io with `cargo install --locked` into the
# project-local .run/tools/ (not committed). The first run builds them (see
# docs/DEPENDENCIES.md for how long); later runs find them there.
#
# After `cargo_tools`, .run/tools/bin is first on PATH, so `cargo deny` is
# found.

# cargo-deny: licenses, bans and sources of the dependency tree (deny.toml).
CARGO_DENY_VERSION=0.20.2
CARGO_TOOLS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.run/tools"

cargo_tools() {
  local deny="$CARGO_TOOLS_ROOT/bin/cargo-deny"
  if [ "$("$deny" --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    printf '[cargo-tools] installing cargo-deny %s into %s\n' "$CARGO_DENY_VERSION" "$CARGO_TOOLS_ROOT" >&2
    # Its own target dir, so that the install neither uses nor evicts the
    # workspace's build; --debug because the check takes seconds either
    # way and an unoptimised build takes less than half the CPU.
    cargo install --locked --debug --quiet --root "$CARGO_TOOLS_ROOT" \
      --target-dir "$CARGO_TOOLS_ROOT/build" --version "$CARGO_DENY_VERSION" cargo-deny >&2
    rm -rf "$CARGO_TOOLS_ROOT/build"
  fi
  export PATH="$CARGO_TOOLS_ROOT/bin:$PATH"
}
