#!/usr/bin/env python3
"""Checks that the test command's second builds reuse every third-party
crate of its first ones, so that the AWS SDK (and all under serde) is
compiled once per run, not twice (tools/workspace-hack/Cargo.toml says
why it would not).

    scripts/check-workspace-hack.py bins
        a build without the mysql feature against the all-features build
    scripts/check-workspace-hack.py tests CARGO_TEST_ARGS...
        the tests CARGO_TEST_ARGS select (`-p obt-api ...`, the MySQL
        pass) against the whole workspace's

Builds both (a no-op when scripts/test.sh has built them already, and
when it has not, a build it is about to need), and lists each third-party
crate that the two compile differently. A dependency change can bring
such a crate back: turn on, in tools/workspace-hack/Cargo.toml, the
features the first build gives it (`cargo tree -e features -i CRATE
--workspace --all-features` shows them). Exits 1 if there is one.
"""

import json
import subprocess
import sys


def units(cargo_args: list[str]) -> dict[str, set[str]]:
    """Each compiled crate's artifacts (their names carry cargo's hash of
    the crate's features and dependencies), by package."""
    out = subprocess.run(
        ["cargo", *cargo_args, "--quiet", "--message-format=json"],
        check=True,
        stdout=subprocess.PIPE,
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
    what, extra = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if what == "bins" and not extra:
        first = ["build", "--workspace", "--bins", "--all-features"]
        # As scripts/test.sh builds it (sso is among all features).
        second = ["build", "--workspace", "--bins", "--features", "obt-runtime/sso"]
        label = "a build without the mysql feature"
    elif what == "tests" and extra:
        first = ["test", "--no-run", "--workspace", "--all-features"]
        second = ["test", "--no-run", "--all-features", *extra]
        label = f"the tests of {' '.join(extra)}"
    else:
        print(__doc__, file=sys.stderr)
        return 2
    everything, again = units(first), units(second)
    twice = sorted(
        package
        for package, files in again.items()
        if not package.startswith("obt-") and not files <= everything.get(package, set())
    )
    if twice:
        print(f"{label} compiles these again (tools/workspace-hack/Cargo.toml):")
        for package in twice:
            print(f"  {package}")
        return 1
    print(f"{len(again)} crates: {label} compiles only the workspace's own again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
