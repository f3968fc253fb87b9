#!/usr/bin/env python3
"""Checks the relative links of the repository's Markdown files: each
linked file exists and each `#anchor` names a heading of its page (as
GitHub makes anchors from headings). Links to other sites are not followed.

    scripts/check-links.py [ROOT]      ROOT: the repository (default: here)

Prints each broken link and exits 1 if there is one. scripts/test.sh runs it.
"""

import pathlib
import re
import sys

SKIP = {"target", "node_modules", ".venv", ".venv-checkov", ".run", ".git"}
FENCED = re.compile(r"```.*?```", flags=re.S)
HEADING = re.compile(r"^#+\s+(.*)$", flags=re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped,
    spaces as hyphens."""
    heading = heading.strip().lower()
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def main() -> int:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    files = [
        p for p in root.rglob("*.md") if not set(p.relative_to(root).parts) & SKIP
    ]
    texts = {f.resolve(): FENCED.sub("", f.read_text()) for f in files}
    anchors = {f: {slug(h) for h in HEADING.findall(t)} for f, t in texts.items()}
    broken = 0
    for page, text in texts.items():
        for target in LINK.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = page.relative_to(root)
            if not dest.exists():
                print(f"{where}: {target}: no such file")
                broken += 1
            elif fragment and dest.suffix == ".md" and fragment not in anchors.get(dest, set()):
                print(f"{where}: {target}: no heading with that anchor")
                broken += 1
    print(f"{len(files)} Markdown files, {broken} broken links")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
