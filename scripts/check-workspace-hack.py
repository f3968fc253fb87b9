#!/usr/bin/env python3
"""Checks that a build without the mysql feature reuses every third-party
crate of the all-features build, so that the AWS SDK compiles once per
run, not twice (tools/workspace-hack/Cargo.toml says why it would not).

    scripts/check-workspace-hack.py

Builds both (a no-op when scripts/test.sh has built them already), and
lists each third-party crate that the two compile with different
features. A dependency change can bring such a crate back: turn on, in
tools/workspace-hack/Cargo.toml, the features the all-features build
gives it (`cargo tree -e features -i CRATE --all-features` shows them).
Exits 1 if there is one.
"""

import json
import subprocess
import sys

BUILDS = {
    "all features": ["--all-features"],
    # As scripts/test.sh builds it (sso is among all features).
    "without mysql": ["--features", "obt-runtime/sso"],
}


def units(features: list[str]) -> dict[str, set[str]]:
    """Each compiled crate's artifacts (their names carry cargo's hash of
    the crate's features and dependencies), by package."""
    out = subprocess.run(
        ["cargo", "build", "--workspace", "--bins", "--quiet", "--message-format=json", *features],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found: dict[str, set[str]] = {}
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact":
            package = message["package_id"].rsplit("#", 1)[-1]
            found.setdefault(package, set()).update(message["filenames"])
    return found


def main() -> int:
    everything, without = (units(flags) for flags in BUILDS.values())
    twice = sorted(
        package
        for package, files in without.items()
        if not package.startswith("obt-") and not files <= everything.get(package, set())
    )
    if twice:
        print("compiled again without the mysql feature (tools/workspace-hack/Cargo.toml):")
        for package in twice:
            print(f"  {package}")
        return 1
    print(f"{len(without)} crates: a build without the mysql feature compiles only the workspace's own again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
