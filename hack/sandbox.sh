#!/usr/bin/env bash
# A local sandbox: a real control plane with fake GPU nodes (kwok) on loopback. No containers run.
#
#   hack/sandbox.sh up       build (cached) + start; kubeconfig at .sandbox/kubeconfig
#   hack/sandbox.sh status   processes and nodes
#   hack/sandbox.sh down     stop everything `up` started (each by its recorded PID)
#
# Environment:
#   SANDBOX_DIR            state, logs, kubeconfig              (default .sandbox in the repo root)
#   SANDBOX_NODES          fake GPU nodes, MODEL[:NODES[xGPUS]] (default H100:2,L4:1x4:
#                          2 nodes x 8 NVIDIA-H100-80GB-HBM3, 1 node x 4 NVIDIA-L4)
#   SANDBOX_OPERATOR_CMD   if set, `up` runs it in the background after the cluster is ready, with
#                          KUBECONFIG exported; its PID goes to $SANDBOX_DIR/operator.pid and its log
#                          to $SANDBOX_DIR/logs/operator.log; `down` stops it first.
#                          e.g. SANDBOX_OPERATOR_CMD='.venv/bin/kvcap run'
#   SANDBOX_APPLY          files/dirs passed to `kubectl apply -f` after the operator started
#                          (space-separated; needs kubectl on PATH), e.g. 'crds/ examples/llama.yaml'
#   PYTHON                 interpreter with pyyaml (default .venv/bin/python, else python3)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SANDBOX_DIR=${SANDBOX_DIR:-$REPO/.sandbox}
SANDBOX_NODES=${SANDBOX_NODES:-H100:2,L4:1x4}
KUBECONFIG_PATH=$SANDBOX_DIR/kubeconfig
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
DEVCLUSTER=("$PYTHON" "$REPO/hack/devcluster.py")

say() { printf '[sandbox] %s\n' "$*" >&2; }

# ----------------------------------------------------------------------------- hooks
# Steps that run after the cluster is up / before it goes down. Add new steps here.

start_operator() {
  [[ -n ${SANDBOX_OPERATOR_CMD:-} ]] || return 0
  say "starting the operator: $SANDBOX_OPERATOR_CMD"
  mkdir -p "$SANDBOX_DIR/logs"
  (cd "$REPO" && KUBECONFIG=$KUBECONFIG_PATH exec setsid bash -c "$SANDBOX_OPERATOR_CMD" \
    >>"$SANDBOX_DIR/logs/operator.log" 2>&1 </dev/null) &
  echo $! >"$SANDBOX_DIR/operator.pid"
  sleep 2
  if ! kill -0 "$(cat "$SANDBOX_DIR/operator.pid")" 2>/dev/null; then
    say "the operator exited at once; last lines of $SANDBOX_DIR/logs/operator.log:"
    tail -n 40 "$SANDBOX_DIR/logs/operator.log" >&2
    return 1
  fi
}

apply_manifests() {
  [[ -n ${SANDBOX_APPLY:-} ]] || return 0
  command -v kubectl >/dev/null || { say "SANDBOX_APPLY needs kubectl on PATH"; return 1; }
  local f
  for f in $SANDBOX_APPLY; do
    say "kubectl apply -f $f"
    kubectl --kubeconfig "$KUBECONFIG_PATH" apply -f "$REPO/$f"
  done
}

stop_operator() {
  local pidfile=$SANDBOX_DIR/operator.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping the operator (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

# Wait until the operator has planned every ModelDeployment, then show the plan and where the pods landed.
show_result() {
  [[ -n ${SANDBOX_APPLY:-} ]] || return 0
  local k=(kubectl --kubeconfig "$KUBECONFIG_PATH")
  say "waiting for the operator to plan and for pods to be scheduled"
  for _ in $(seq 90); do
    if [[ -n $("${k[@]}" get modeldeployments -A -o jsonpath='{.items[*].status.totalGpus}' 2>/dev/null) ]] &&
      [[ -n $("${k[@]}" get pods -A -l app.kubernetes.io/managed-by=kvcap -o name 2>/dev/null) ]]; then
      break
    fi
    sleep 1
  done
  echo
  "${k[@]}" get modeldeployments -A -o wide || true
  echo
  "${k[@]}" get modeldeployments -A \
    -o jsonpath='{range .items[*]}{.metadata.name}: {.status.plan.message}{"\n"}  {.status.plan.splitDecision}{"\n"}{range .status.plan.pools[*]}  pool {.name}: {.replicas} x {.gpuProduct} TP {.tensorParallelSize}, max-model-len {.maxModelLen}, max-num-seqs {.maxNumSeqs}, {.kvTokensPerReplica} KV tokens/replica{"\n"}{end}{end}' || true
  echo
  "${k[@]}" get deployments,services -A -l app.kubernetes.io/managed-by=kvcap || true
  echo
  "${k[@]}" get pods -A -l app.kubernetes.io/managed-by=kvcap -o wide || true
}

post_up_hooks() {
  apply_manifests # CRDs first, as a chart install creates them before the operator starts
  start_operator
  show_result
}

pre_down_hooks() {
  stop_operator
}

# ----------------------------------------------------------------------------- commands

cmd_up() {
  local bin
  bin=$("$REPO/hack/build-k8s.sh")
  "${DEVCLUSTER[@]}" up --dir "$SANDBOX_DIR" --tier e2e --nodes "$SANDBOX_NODES" --bin-dir "$bin" \
    --kubeconfig "$KUBECONFIG_PATH" >/dev/null
  post_up_hooks
  local rel=${KUBECONFIG_PATH#"$PWD"/}
  cat <<EOF

Sandbox is up: a real kube-apiserver + etcd + scheduler + controller-manager, and kwok faking these nodes
($SANDBOX_NODES). Pods that tolerate the 'kwok.x-k8s.io/node' taint are "run" by kwok:
scheduled, Running and Ready, but no container starts and nothing answers on pod IPs.

  export KUBECONFIG=$rel
  kubectl --kubeconfig $rel get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count
  python hack/devcluster.py status --dir ${SANDBOX_DIR#"$PWD"/}
  hack/sandbox.sh down

A pod lands on a fake GPU node with:
  tolerations:  [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
  nodeSelector: {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}
  resources:    {limits: {nvidia.com/gpu: "8"}}
Logs: ${SANDBOX_DIR#"$PWD"/}/logs/
EOF
}

cmd_down() {
  pre_down_hooks
  "${DEVCLUSTER[@]}" down --dir "$SANDBOX_DIR"
}

cmd_status() {
  "${DEVCLUSTER[@]}" status --dir "$SANDBOX_DIR"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
