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
#   SANDBOX_METRICS        'auto' (default): when /usr/bin/prometheus exists, also start a Prometheus
#                          on 127.0.0.1:$SANDBOX_PROM_PORT (default 9091) and one vLLM metrics
#                          emulator per kvcap pod (`kvcap emulate-vllm follow`), and point the operator
#                          at them, so `spec.autoscaling` works; 'off' skips it
#   SANDBOX_NODE_GRACE_SECONDS  seconds the fake nodes may miss heartbeats (a busy machine stalls kwok)
#                          before the node lifecycle controller marks them and their pods NotReady
#                          (default 180; pods become Ready again once the node is back)
#   PYTHON                 interpreter with pyyaml (default .venv/bin/python, else python3)
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SANDBOX_DIR=${SANDBOX_DIR:-$REPO/.sandbox}
SANDBOX_NODES=${SANDBOX_NODES:-H100:2,L4:1x4}
SANDBOX_NODE_GRACE_SECONDS=${SANDBOX_NODE_GRACE_SECONDS:-180}
KUBECONFIG_PATH=$SANDBOX_DIR/kubeconfig
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
DEVCLUSTER=("$PYTHON" "$REPO/hack/devcluster.py")

say() { printf '[sandbox] %s\n' "$*" >&2; }

SANDBOX_METRICS=${SANDBOX_METRICS:-auto}
SANDBOX_PROM_PORT=${SANDBOX_PROM_PORT:-9091}
PROMETHEUS_BIN=${PROMETHEUS_BIN:-/usr/bin/prometheus}
KVCAP_BIN=${KVCAP_BIN:-$REPO/.venv/bin/kvcap}

# ----------------------------------------------------------------------------- hooks
# Steps that run after the cluster is up / before it goes down. Add new steps here.

metrics_wanted() {
  [[ $SANDBOX_METRICS != off && -x $PROMETHEUS_BIN && -x $KVCAP_BIN ]]
}

# Start a background process: its PID goes to $SANDBOX_DIR/<name>.pid, its log to logs/<name>.log.
start_bg() {
  local name=$1
  shift
  mkdir -p "$SANDBOX_DIR/logs"
  (cd "$REPO" && KUBECONFIG=$KUBECONFIG_PATH exec setsid "$@" \
    >>"$SANDBOX_DIR/logs/$name.log" 2>&1 </dev/null) &
  echo $! >"$SANDBOX_DIR/$name.pid"
}

# Prometheus (file_sd targets with namespace/pod labels) + one vLLM emulator per kvcap pod.
start_metrics() {
  if ! metrics_wanted; then
    [[ $SANDBOX_METRICS == off ]] ||
      say "no $PROMETHEUS_BIN: autoscaling metrics skipped (apt-get install -y prometheus)"
    return 0
  fi
  local dir=$SANDBOX_DIR/prometheus
  mkdir -p "$dir"
  [[ -f $SANDBOX_DIR/targets.json ]] || echo '[]' >"$SANDBOX_DIR/targets.json"
  [[ -f $SANDBOX_DIR/levels.json ]] || echo '{}' >"$SANDBOX_DIR/levels.json"
  printf '%s\n' \
    'global: {scrape_interval: 5s, evaluation_interval: 5s}' \
    'scrape_configs:' \
    '  - job_name: vllm' \
    "    file_sd_configs: [{files: [\"$SANDBOX_DIR/targets.json\"], refresh_interval: 5s}]" \
    >"$dir/prometheus.yml"
  say "starting Prometheus on 127.0.0.1:$SANDBOX_PROM_PORT and the vLLM metrics emulators"
  start_bg prometheus "$PROMETHEUS_BIN" --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" --web.listen-address="127.0.0.1:$SANDBOX_PROM_PORT" \
    --storage.tsdb.retention.time=2h --log.level=warn
  start_bg emulators "$KVCAP_BIN" emulate-vllm follow --targets-file "$SANDBOX_DIR/targets.json" \
    --levels-file "$SANDBOX_DIR/levels.json"
}

stop_pid() {
  local name=$1 pidfile=$SANDBOX_DIR/$1.pid pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start_operator() {
  [[ -n ${SANDBOX_OPERATOR_CMD:-} ]] || return 0
  say "starting the operator: $SANDBOX_OPERATOR_CMD"
  mkdir -p "$SANDBOX_DIR/logs"
  local env=()
  if metrics_wanted; then
    env+=(KVCAP_PROMETHEUS_URL="http://127.0.0.1:$SANDBOX_PROM_PORT"
      KVCAP_AUTOSCALE_INTERVAL_SECONDS=5 KVCAP_PROMETHEUS_RATE_WINDOW=1m KVCAP_METRICS_PORT=Disabled)
  fi
  (cd "$REPO" && KUBECONFIG=$KUBECONFIG_PATH exec env "${env[@]}" setsid bash -c \
    "$SANDBOX_OPERATOR_CMD" >>"$SANDBOX_DIR/logs/operator.log" 2>&1 </dev/null) &
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
  show_autoscaling
}

# The one command that pushes a pool into KV pressure (and back), for the first ModelDeployment.
show_autoscaling() {
  metrics_wanted || return 0
  local k=(kubectl --kubeconfig "$KUBECONFIG_PATH") md ns name rel levels
  md=$("${k[@]}" get modeldeployments -A \
    -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{end}' | head -n 1)
  [[ -n $md ]] || return 0
  ns=${md%%/*}
  name=${md##*/}
  rel=${SANDBOX_DIR#"$PWD"/}
  levels="$KVCAP_BIN emulate-vllm set --levels-file $rel/levels.json --pool $ns/$name/default"
  echo
  echo "Autoscaling: Prometheus on http://127.0.0.1:$SANDBOX_PROM_PORT scrapes one vLLM metrics"
  echo "emulator per pod. Let kvcap scale $md, push its pool into KV pressure and watch it scale:"
  echo
  echo "  kubectl --kubeconfig $rel/kubeconfig -n $ns patch mdep $name --type merge -p '{\"spec\":{\"autoscaling\":{\"policy\":\"KVHeadroom\",\"maxReplicas\":4,\"scaleDownDelaySeconds\":60}}}'"
  echo "  $levels --kv-usage 0.97 --waiting-capacity 12 --preemptions-per-second 0.5"
  echo "  kubectl --kubeconfig $rel/kubeconfig get mdep -A -w"
  echo "  $levels --kv-usage 0.05 --waiting-capacity 0 --preemptions-per-second 0   # idle again"
}

post_up_hooks() {
  apply_manifests # CRDs first, as a chart install creates them before the operator starts
  start_metrics
  start_operator
  show_result
}

pre_down_hooks() {
  stop_operator
  stop_pid emulators
  stop_pid prometheus
}

# ----------------------------------------------------------------------------- commands

cmd_up() {
  local bin
  bin=$("$REPO/hack/build-k8s.sh")
  "${DEVCLUSTER[@]}" up --dir "$SANDBOX_DIR" --tier e2e --nodes "$SANDBOX_NODES" --bin-dir "$bin" \
    --kubeconfig "$KUBECONFIG_PATH" --node-grace-seconds "$SANDBOX_NODE_GRACE_SECONDS" >/dev/null
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
