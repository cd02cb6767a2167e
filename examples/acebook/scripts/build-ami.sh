#!/usr/bin/env bash
# Bake a new AMI of this app from the code in this checkout (CI deploy stage).
#
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... [AWS_REGION=...] scripts/build-ami.sh [kiln bake options]
#
# The keys are the deploy user's (`kiln aws create-deploy-user --team NAME`
# prints them once; store them as CI secrets). The region comes from
# AWS_REGION or [provider.aws] region in kiln.toml. Prints one JSON object on
# stdout ({"ami": "ami-...", "reused": ..., ...}); progress goes to stderr.
# An unchanged app reuses its AMI in seconds; nothing is left behind on failure.
set -euo pipefail

fail() {
    echo "build-ami.sh: $*" >&2
    exit 2
}

missing=()
[[ -n "${AWS_ACCESS_KEY_ID:-}" ]] || missing+=(AWS_ACCESS_KEY_ID)
[[ -n "${AWS_SECRET_ACCESS_KEY:-}" ]] || missing+=(AWS_SECRET_ACCESS_KEY)
if ((${#missing[@]})); then
    fail "${missing[*]} not set: export the deploy user's access and secret key" \
        "(kiln aws create-deploy-user --team NAME prints them once)"
fi

app_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -f "$app_dir/kiln.toml" ]] || fail "no kiln.toml in $app_dir"
if [[ -z "${AWS_REGION:-}${AWS_DEFAULT_REGION:-}" ]] &&
    ! grep -Eq '^[[:space:]]*region[[:space:]]*=' "$app_dir/kiln.toml"; then
    fail "no AWS region: export AWS_REGION or set [provider.aws] region in kiln.toml"
fi

kiln="${KILN:-kiln}"
command -v "$kiln" >/dev/null 2>&1 || fail "'$kiln' not found: pip install kiln-deploy (or set KILN=/path/to/kiln)"

cd "$app_dir"
exec "$kiln" bake --provider aws --json "$@"  # e.g. --boot-test, as CI passes
