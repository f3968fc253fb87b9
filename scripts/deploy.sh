#!/usr/bin/env bash
# Deploys outboxtable to AWS with CloudFormation (infra/outboxtable.yaml):
#
#   1. checks the template (cfn-lint, from the project venv);
#   2. builds the six release artifacts with cargo-lambda (zig cross-links
#      for Amazon Linux): the EC2 binaries api, consumer, stream-relay and
#      obt-admin (with the cargo features of --features, e.g. mysql for the MySQL
#      mode), and the Lambda zips stream-relay-lambda and
#      outbox-sweeper-lambda;
#   3. uploads them to s3://BUCKET/PREFIX/ (PREFIX names the release: the
#      commit, architecture and features, plus a timestamp when the tree is
#      dirty, so that a release is never overwritten by other bytes);
#   4. runs `aws cloudformation deploy` (creates or updates the stack) and
#      prints the stack's outputs (the api's URL among them).
#
# Every release artifact is uploaded whatever the relay mode, so that one
# release can run in any mode. See docs/DEPLOY.md for the variants, the
# alarms and what to do about them.
#
# Usage: scripts/deploy.sh [options]        (--help lists them)
#
#   scripts/deploy.sh --dry-run --region eu-west-1 --bucket my-releases \
#     --vpc vpc-0123 --private-subnets subnet-a,subnet-b \
#     --public-subnets subnet-c,subnet-d --relay-mode daemon \
#     --jwt-issuer https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_EXAMPLE
#
# Each option also reads an environment variable (in brackets in --help).
# Nothing secret is needed or kept here: AWS credentials come from the
# standard chain (environment, profile, SSO, instance role).
#
# Needs: cargo (Rust), python3 with venv (for cargo-lambda, zig and cfn-lint,
# installed into .venv/ by scripts/python.sh), and the AWS CLI v2 (or v1).
# --dry-run prints every command instead of running it, and needs none of
# them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TEMPLATE=infra/outboxtable.yaml

usage() {
  cat <<'EOF'
Usage: scripts/deploy.sh [options]

Builds outboxtable, uploads the release to S3 and deploys the CloudFormation
stack of infra/outboxtable.yaml. Options (environment variable in brackets):

  --stack NAME            stack name [OBT_STACK_NAME] (default: outboxtable)
  --region REGION         AWS region [AWS_REGION, AWS_DEFAULT_REGION] (required)
  --bucket BUCKET         S3 bucket for the release, in REGION [OBT_ARTIFACT_BUCKET] (required)
  --prefix PREFIX         key prefix of the release [OBT_ARTIFACT_PREFIX]
                          (default: outboxtable/<commit>-<arch>[-dirty-<UTC time>])
  --relay-mode MODE       lambda | daemon | none [OBT_RELAY_MODE] (default: lambda)
  --arch ARCH             x86_64 | arm64 [OBT_ARCH] (default: x86_64); sets the build
                          target, the AMI and the default instance types (t3 / t4g)
  --features LIST         cargo features of the EC2 binaries, comma-separated [OBT_FEATURES]
                          (default: none): mysql builds the MySQL mode, which the hosts
                          then need OBT_STORAGE=mysql and a database for, set by hand
                          (the template does not: docs/DEPLOY.md, "The MySQL mode")
  --vpc VPC_ID            VPC of the hosts and the load balancer [OBT_VPC_ID] (required)
  --private-subnets IDS   comma-separated subnets of the hosts [OBT_PRIVATE_SUBNETS] (required)
  --public-subnets IDS    comma-separated subnets of the load balancer [OBT_PUBLIC_SUBNETS] (required)
  --jwt-issuer URL        issuer of the api's bearer tokens, e.g. a Cognito user pool
                          https://cognito-idp.REGION.amazonaws.com/POOL_ID [OBT_JWT_ISSUER] (required)
  --jwt-audience ID       audience the tokens must name (aud, or client_id), e.g. the
                          app client id [OBT_JWT_AUDIENCE] (optional)
  --alarm-email ADDRESS   subscribed to the alarm topic [OBT_ALARM_EMAIL] (optional)
  --certificate-arn ARN   ACM certificate of REGION: the load balancer serves HTTPS, port 80
                          redirects to it [OBT_CERTIFICATE_ARN] (required unless --internal,
                          or the stack already has one)
  --internal              an internal load balancer, reachable from inside the VPC only, and
                          the one case where plain HTTP is allowed [OBT_INTERNAL_LOAD_BALANCER=true]
  --name-prefix PREFIX    prefix of table, queue and function names [OBT_NAME_PREFIX] (default: obt)
  --parameter KEY=VALUE   any other template parameter, e.g. ApiDesiredCount=3
                          (repeatable; overrides the values above)
  --skip-build            upload what target/lambda/ already holds
  --build-only            build the six artifacts into target/lambda/ and stop
                          (target/ is $CARGO_TARGET_DIR when that is set)
                          (no AWS settings or account needed)
  --dev-build             with --build-only: cargo's dev profile instead of release, a
                          check of the build and the packaging in a few minutes less,
                          never something to deploy (the test suite runs it)
  --dry-run               print every command instead of running it
  -h, --help              this help

Examples:
  scripts/deploy.sh --region eu-west-1 --bucket my-releases --vpc vpc-0123 \
    --private-subnets subnet-a,subnet-b --public-subnets subnet-c,subnet-d \
    --jwt-issuer https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_EXAMPLE \
    --certificate-arn arn:aws:acm:eu-west-1:123456789012:certificate/EXAMPLE
  scripts/deploy.sh ... --internal           # no certificate: HTTP inside the VPC only
  scripts/deploy.sh ... --relay-mode none     # then: --relay-mode daemon
  scripts/deploy.sh ... --features mysql   # EC2 binaries with the MySQL mode
  scripts/deploy.sh ... --dry-run

The AWS CLI must be installed and configured (credentials, or a profile via
AWS_PROFILE). Details: docs/DEPLOY.md.
EOF
}

die() {
  printf 'deploy: %s\n' "$*" >&2
  exit 1
}
step() { printf '\n==> %s\n' "$*" >&2; }

# ---- configuration: environment first, flags over it --------------------------

stack="${OBT_STACK_NAME:-outboxtable}"
region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
bucket="${OBT_ARTIFACT_BUCKET:-}"
prefix="${OBT_ARTIFACT_PREFIX:-}"
relay_mode="${OBT_RELAY_MODE:-lambda}"
arch="${OBT_ARCH:-x86_64}"
features="${OBT_FEATURES:-}"
vpc="${OBT_VPC_ID:-}"
private_subnets="${OBT_PRIVATE_SUBNETS:-}"
public_subnets="${OBT_PUBLIC_SUBNETS:-}"
alarm_email="${OBT_ALARM_EMAIL:-}"
jwt_issuer="${OBT_JWT_ISSUER:-}"
jwt_audience="${OBT_JWT_AUDIENCE:-}"
certificate_arn="${OBT_CERTIFICATE_ARN:-}"
internal="${OBT_INTERNAL_LOAD_BALANCER:-false}"
name_prefix="${OBT_NAME_PREFIX:-obt}"
extra_parameters=()
skip_build=false
dry_run=false
build_only=false
dev_build=false

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then
    die "$1 needs a value (see --help)"
  fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --stack) need_value "$@"; stack="$2"; shift 2 ;;
    --region) need_value "$@"; region="$2"; shift 2 ;;
    --bucket) need_value "$@"; bucket="$2"; shift 2 ;;
    --prefix) need_value "$@"; prefix="$2"; shift 2 ;;
    --relay-mode) need_value "$@"; relay_mode="$2"; shift 2 ;;
    --arch) need_value "$@"; arch="$2"; shift 2 ;;
    --features) need_value "$@"; features="$2"; shift 2 ;;
    --vpc) need_value "$@"; vpc="$2"; shift 2 ;;
    --private-subnets) need_value "$@"; private_subnets="$2"; shift 2 ;;
    --public-subnets) need_value "$@"; public_subnets="$2"; shift 2 ;;
    --alarm-email) need_value "$@"; alarm_email="$2"; shift 2 ;;
    --jwt-issuer) need_value "$@"; jwt_issuer="$2"; shift 2 ;;
    --jwt-audience) need_value "$@"; jwt_audience="$2"; shift 2 ;;
    --certificate-arn) need_value "$@"; certificate_arn="$2"; shift 2 ;;
    --internal) internal=true; shift ;;
    --name-prefix) need_value "$@"; name_prefix="$2"; shift 2 ;;
    --parameter)
      need_value "$@"
      [[ "$2" == ?*=* ]] || die "--parameter takes KEY=VALUE, not '$2'"
      extra_parameters+=("$2")
      shift 2
      ;;
    --skip-build) skip_build=true; shift ;;
    --build-only) build_only=true; shift ;;
    --dev-build) dev_build=true; shift ;;
    --dry-run) dry_run=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

if "$dev_build" && ! "$build_only"; then
  die "--dev-build goes with --build-only: unoptimized artifacts are a check of the build, never deployed"
fi
case "$relay_mode" in
  lambda | daemon | none) ;;
  *) die "--relay-mode is lambda, daemon or none, not '$relay_mode'" ;;
esac
case "$internal" in
  true | false) ;;
  *) die "OBT_INTERNAL_LOAD_BALANCER is true or false, not '$internal'" ;;
esac
case "$arch" in
  x86_64) cargo_arch=--x86-64; instance_type=t3.small ;;
  arm64) cargo_arch=--arm64; instance_type=t4g.small ;;
  *) die "--arch is x86_64 or arm64, not '$arch'" ;;
esac

# Each feature of the EC2 binaries' packages (a virtual workspace
# takes them as PACKAGE/FEATURE). The Lambdas read DynamoDB only.
feature_flags=()
feature_list=()
IFS=',' read -r -a requested_features <<<"$features"
for f in ${requested_features[@]+"${requested_features[@]}"}; do
  case "$f" in
    mysql) ;;
    "") continue ;;
    *) die "--features takes mysql (comma-separated), not '$f'" ;;
  esac
  feature_list+=("$f")
  feature_flags+=("obt-api/$f,obt-consumer/$f,obt-stream-relay/$f,obt-admin/$f")
done
if [ "${#feature_list[@]}" -gt 0 ]; then
  features="$(IFS=,; printf '%s' "${feature_list[*]}")"
  feature_flags=(--features "$(IFS=,; printf '%s' "${feature_flags[*]}")")
else
  features=""
fi

# A required value that is missing stops a real run; a dry run shows a
# placeholder instead, so that it can be tried without an account.
require() {
  local name="$1" flag="$2" value="$3"
  if [ -n "$value" ]; then
    printf '%s' "$value"
  elif "$dry_run"; then
    printf 'deploy: %s is not set (%s); the dry run shows a placeholder\n' "$name" "$flag" >&2
    printf '<%s>' "$name"
  else
    die "$name is required: pass $flag (see --help)"
  fi
}
if "$build_only"; then
  # Only the build's own settings matter.
  region="${region:-none}" bucket="${bucket:-none}" vpc="${vpc:-none}"
  private_subnets="${private_subnets:-none}" public_subnets="${public_subnets:-none}"
  jwt_issuer="${jwt_issuer:-none}"
fi
region="$(require region --region "$region")"
bucket="$(require bucket --bucket "$bucket")"
vpc="$(require vpc --vpc "$vpc")"
private_subnets="$(require private-subnets --private-subnets "$private_subnets")"
public_subnets="$(require public-subnets --public-subnets "$public_subnets")"
jwt_issuer="$(require jwt-issuer --jwt-issuer "$jwt_issuer")"

cd "$ROOT"

# The release's name. Read-only git calls; a dirty tree gets a timestamp so
# that its artifacts never replace those of the commit.
if [ -z "$prefix" ]; then
  if commit="$(git rev-parse --short=12 HEAD 2>/dev/null)"; then
    prefix="outboxtable/$commit-$arch${features:+-${features//,/-}}"
    if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
      prefix="$prefix-dirty-$(date -u +%Y%m%dT%H%M%SZ)"
    fi
  else
    prefix="outboxtable/$(date -u +%Y%m%dT%H%M%SZ)-$arch${features:+-${features//,/-}}"
  fi
fi
prefix="${prefix#/}"
prefix="${prefix%/}"

# ---- the commands --------------------------------------------------------------

# Prints a command, then runs it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ! "$dry_run"; then
    "$@"
  fi
}

# Template parameters, in order; a --parameter with the same key replaces one.
parameters=(
  "NamePrefix=$name_prefix"
  "ArtifactBucket=$bucket"
  "ArtifactPrefix=$prefix"
  "Architecture=$arch"
  "RelayMode=$relay_mode"
  "VpcId=$vpc"
  "PrivateSubnetIds=$private_subnets"
  "PublicSubnetIds=$public_subnets"
  "JwtIssuer=$jwt_issuer"
  "ImageId=/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-$arch"
  "ApiInstanceType=$instance_type"
  "ConsumerInstanceType=$instance_type"
  "RelayInstanceType=$instance_type"
)
# Optional ones only when given: on an update, a parameter left out keeps its
# previous value (so a redeploy does not drop the alarm subscription). To
# remove one: --parameter AlarmEmail= (or CertificateArn=, JwtAudience=).
[ -z "$alarm_email" ] || parameters+=("AlarmEmail=$alarm_email")
[ -z "$jwt_audience" ] || parameters+=("JwtAudience=$jwt_audience")
[ -z "$certificate_arn" ] || parameters+=("CertificateArn=$certificate_arn")
! "$internal" || parameters+=("LoadBalancerScheme=internal")
for extra in ${extra_parameters[@]+"${extra_parameters[@]}"}; do
  replaced=false
  for i in "${!parameters[@]}"; do
    if [ "${parameters[$i]%%=*}" = "${extra%%=*}" ]; then
      parameters[i]="$extra"
      replaced=true
    fi
  done
  "$replaced" || parameters+=("$extra")
done

# The value a parameter will have: the one passed, else (on an update) the
# stack's current one, else the template's default. Prints nothing when it
# is neither passed nor known.
passed_parameter() {
  local p
  for p in "${parameters[@]}"; do
    if [ "${p%%=*}" = "$1" ]; then
      printf '%s' "${p#*=}"
      return 0
    fi
  done
  return 1
}
stack_parameter() {
  "$dry_run" && return 0
  aws cloudformation describe-stacks --region "$region" --stack-name "$stack" \
    --query "Stacks[0].Parameters[?ParameterKey=='$1'].ParameterValue" \
    --output text 2>/dev/null | sed 's/^None$//' || true
}

# The AWS CLI is not part of the project's tools: say how to get it.
if ! "$build_only" && ! command -v aws >/dev/null 2>&1; then
  message="the AWS CLI (aws) is not installed. Install it with the AWS installer
  (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html),
  or into the project venv: source scripts/python.sh && python_tools && .venv/bin/pip install awscli"
  if "$dry_run"; then
    printf 'deploy: note: %s\n' "$message" >&2
  else
    die "$message"
  fi
fi
if ! "$dry_run" && ! "$skip_build" && ! command -v cargo >/dev/null 2>&1; then
  die "cargo is not installed: install Rust (https://rustup.rs)"
fi

# HTTPS by default: the template's rule refuses an internet-facing load
# balancer without a certificate; say so before the build rather than after.
if ! "$build_only"; then
  scheme="$(passed_parameter LoadBalancerScheme || stack_parameter LoadBalancerScheme)"
  scheme="${scheme:-internet-facing}"
  certificate="$(passed_parameter CertificateArn || stack_parameter CertificateArn)"
  if [ "$scheme" = internet-facing ] && [ -z "$certificate" ]; then
    message="an internet-facing load balancer serves HTTPS only: pass --certificate-arn ARN
  (an ACM certificate in $region: aws acm request-certificate, or import one), or
  --internal for a load balancer reachable from inside the VPC only. docs/DEPLOY.md, \"HTTPS\""
    if "$dry_run"; then
      printf 'deploy: %s; the dry run shows a placeholder\n' "$message" >&2
      parameters+=("CertificateArn=<certificate-arn>")
    else
      die "$message"
    fi
  fi
fi

if ! "$build_only"; then
  printf 'deploy: stack %s in %s, relay mode %s, %s, release s3://%s/%s/\n' \
    "$stack" "$region" "$relay_mode" "$arch" "$bucket" "$prefix" >&2
fi
printf 'deploy: cargo features of the EC2 binaries: %s\n' "${features:-none (DynamoDB mode only)}" >&2
if "$dry_run"; then
  printf 'deploy: dry run: the commands are printed, none is run\n' >&2
fi

step "project tools (cargo-lambda, zig, cfn-lint in .venv/)"
# shellcheck source=scripts/python.sh
source scripts/python.sh
run python_tools

if ! "$build_only"; then
  step "checking the template"
  run cfn-lint "$TEMPLATE"
fi

# obt-admin is the operator's command (status, parked identities): built and
# uploaded with the release so that a host can fetch the matching build.
binaries=(api consumer stream-relay obt-admin)
lambdas=(stream-relay-lambda outbox-sweeper-lambda)
# Where cargo-lambda puts them: the lambda/ directory of cargo's target
# directory.
artifacts=${CARGO_TARGET_DIR:-target}/lambda
if ! "$skip_build"; then
  step "building the EC2 binaries and the Lambda packages ($arch)"
  bin_flags=()
  for b in "${binaries[@]}"; do bin_flags+=(--bin "$b"); done
  lambda_flags=()
  for b in "${lambdas[@]}"; do lambda_flags+=(--bin "$b"); done
  profile=(--release)
  ! "$dev_build" || profile=()
  # Marks the artifacts' directory as holding dev-profile artifacts, which
  # no --skip-build deploys (below); a release build clears the mark.
  dev_mark=$artifacts/DEV-BUILD
  "$dry_run" || rm -f "$dev_mark"
  run cargo lambda build ${profile[@]+"${profile[@]}"} "$cargo_arch" ${feature_flags[@]+"${feature_flags[@]}"} "${bin_flags[@]}"
  run cargo lambda build ${profile[@]+"${profile[@]}"} "$cargo_arch" --output-format zip "${lambda_flags[@]}"
  if "$dev_build" && ! "$dry_run"; then
    echo "built with --dev-build: never to be deployed" >"$dev_mark"
  fi
fi

if "$build_only"; then
  for b in "${binaries[@]}"; do
    "$dry_run" || [ -x "$artifacts/$b/bootstrap" ] || die "the build made no $artifacts/$b/bootstrap"
  done
  for b in "${lambdas[@]}"; do
    "$dry_run" || [ -s "$artifacts/$b/bootstrap.zip" ] || die "the build made no $artifacts/$b/bootstrap.zip"
  done
  printf 'deploy: built %s and %s in %s/\n' "${binaries[*]}" "${lambdas[*]}" "$artifacts" >&2
  exit 0
fi

if ! "$dry_run" && [ -e "$artifacts/DEV-BUILD" ]; then
  die "$artifacts/ holds unoptimized artifacts of --build-only --dev-build: build the release first (drop --skip-build)"
fi
step "uploading the release to s3://$bucket/$prefix/"
for b in "${binaries[@]}"; do
  artifact="$artifacts/$b/bootstrap"
  "$dry_run" || [ -f "$artifact" ] || die "$artifact is missing: build first (drop --skip-build)"
  run aws s3 cp --region "$region" --only-show-errors "$artifact" "s3://$bucket/$prefix/$b"
done
for b in "${lambdas[@]}"; do
  artifact="$artifacts/$b/bootstrap.zip"
  "$dry_run" || [ -f "$artifact" ] || die "$artifact is missing: build first (drop --skip-build)"
  run aws s3 cp --region "$region" --only-show-errors "$artifact" "s3://$bucket/$prefix/$b.zip"
done

step "deploying the stack $stack"
# The template is over the 51,200 bytes a template body may have: deploy
# uploads it to the bucket (under the release) and passes its URL.
run aws cloudformation deploy \
  --region "$region" \
  --stack-name "$stack" \
  --template-file "$TEMPLATE" \
  --s3-bucket "$bucket" \
  --s3-prefix "$prefix/cloudformation" \
  --capabilities CAPABILITY_NAMED_IAM \
  --no-fail-on-empty-changeset \
  --parameter-overrides "${parameters[@]}"

step "stack outputs"
run aws cloudformation describe-stacks \
  --region "$region" \
  --stack-name "$stack" \
  --query "Stacks[0].Outputs[].[OutputKey,OutputValue]" \
  --output table
