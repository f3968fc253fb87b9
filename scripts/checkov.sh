#!/usr/bin/env bash
# Scans infra/outboxtable.yaml with checkov (installed into .venv-checkov/
# by scripts/python.sh), offline. checkov evaluates the template's
# Conditions with the parameters' defaults, so it scans twice: as it is
# (lambda relay, no certificate) and as a copy whose defaults are the
# daemon relay and a certificate, so that the resources of those
# conditions are scanned too. Every finding is either fixed or skipped on
# its resource (Metadata: checkov: skip) with the reason; the list of the
# accepted ones is in docs/DEPLOY.md, "checkov". Exits non-zero on any
# other finding.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/python.sh
source scripts/python.sh
checkov_tools

template=infra/outboxtable.yaml
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The variant: only the two defaults differ (checked, so that a renamed
# parameter fails here rather than scanning the same template twice).
variant="$work/outboxtable-daemon-https.yaml"
sed -e '/^  RelayMode:$/,/^  [A-Za-z]*:$/ s/^    Default: lambda$/    Default: daemon/' \
  -e '/^  CertificateArn:$/,/^  [A-Za-z]*:$/ s|^    Default: ""$|    Default: arn:aws:acm:us-east-1:123456789012:certificate/example|' \
  "$template" >"$variant"
if [ "$(diff "$template" "$variant" | grep -c '^>')" -ne 2 ]; then
  echo "checkov.sh: could not make the daemon/HTTPS variant of $template (RelayMode or CertificateArn changed?)" >&2
  exit 1
fi

# --skip-download: no call to the Prisma Cloud platform; checkov runs
# offline with its bundled checks.
for file in "$template" "$variant"; do
  echo "checkov: $file" >&2
  checkov --quiet --compact --skip-download --framework cloudformation --file "$file"
done
