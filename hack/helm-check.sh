#!/usr/bin/env bash
# Chart checks for CI and `make helm-lint`:
#   1. helm/kvcap/crds/ is a byte-identical copy of crds/;
#   2. `helm lint --strict` and `helm template` for several value sets (cluster-wide, namespaced,
#      the manifests/ rendering, everything customised);
#   3. every rendered object validated with `kubernetes-validate --strict` (unknown fields fail)
#      against each Kubernetes version in KVCAP_VALIDATE_K8S_VERSIONS;
#   4. values.schema.json rejects an unknown value;
#   5. manifests/ is what hack/render-manifests.sh renders now.
#
# Environment:
#   HELM                          helm binary (default: hack/get-helm.sh, pinned v3.17.2)
#   KUBERNETES_VALIDATE           kubernetes-validate binary (default .venv/bin/kubernetes-validate)
#   KVCAP_VALIDATE_K8S_VERSIONS   default "1.30 1.33 1.36" (oldest supported, common, tested)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CHART=helm/kvcap
VERSIONS=${KVCAP_VALIDATE_K8S_VERSIONS:-1.30 1.33 1.36}

say() { printf '[helm-check] %s\n' "$*" >&2; }
die() {
  printf '[helm-check] FAILED: %s\n' "$*" >&2
  exit 1
}

HELM=${HELM:-$(hack/get-helm.sh)}
if [[ -n ${KUBERNETES_VALIDATE:-} ]]; then
  KV=$KUBERNETES_VALIDATE
elif [[ -x .venv/bin/kubernetes-validate ]]; then
  KV=.venv/bin/kubernetes-validate
elif command -v kubernetes-validate >/dev/null; then
  KV=$(command -v kubernetes-validate)
else
  die "kubernetes-validate not found: pip install kubernetes-validate (it is in the test dependencies)"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say "crds/ and $CHART/crds/ are identical"
diff -r crds "$CHART/crds" || die "$CHART/crds/ differs from crds/: cp crds/*.yaml $CHART/crds/"

# name -> helm arguments
declare -A CASES=(
  [default]=""
  [namespaced]="--set watchNamespaces={team-a,team-b}"
  [manifests]="--include-crds --set createNamespace=true"
  [customised]="--set serviceAccount.create=false --set serviceAccount.name=ops
    --set verbose=true --set image.tag=dev --set prometheusUrl=https://prom.example:9090
    --set extraTolerations[0].key=nvidia.com/gpu --set extraTolerations[0].operator=Exists
    --set extraTolerations[0].effect=NoSchedule --set extraEnv[0].name=KVCAP_RESYNC_SECONDS
    --set-string extraEnv[0].value=60 --set nodeSelector.role=control
    --set priorityClassName=system-cluster-critical --set podAnnotations.team=ml"
  [no-rbac]="--set rbac.create=false"
)

for name in $(printf "%s\n" "${!CASES[@]}" | sort); do
  # shellcheck disable=SC2206  # word splitting of the argument list is intended
  args=(${CASES[$name]})
  lint_args=()
  for arg in "${args[@]}"; do
    [[ $arg == --include-crds ]] || lint_args+=("$arg") # a `helm template` flag only
  done
  say "case '$name': helm lint --strict"
  "$HELM" lint --strict "$CHART" --namespace kvcap-system "${lint_args[@]}" >"$tmp/lint.log" 2>&1 ||
    {
      cat "$tmp/lint.log" >&2
      die "helm lint ($name)"
    }
  "$HELM" template kvcap "$CHART" --namespace kvcap-system "${args[@]}" >"$tmp/$name.yaml" ||
    die "helm template ($name)"
  for version in $VERSIONS; do
    say "case '$name': kubernetes-validate --strict -k $version"
    "$KV" --strict --quiet -k "$version" "$tmp/$name.yaml" || die "kubernetes-validate ($name, $version)"
  done
done

say "values.schema.json rejects unknown values"
if "$HELM" template kvcap "$CHART" --set bogusValue=1 >/dev/null 2>"$tmp/err.log"; then
  die "helm template accepted an unknown value"
fi
grep -q "Additional property bogusValue is not allowed" "$tmp/err.log" || {
  cat "$tmp/err.log" >&2
  die "unexpected error for an unknown value"
}

say "manifests/ is in sync with the chart"
HELM=$HELM hack/render-manifests.sh --check

say "all chart checks passed"
