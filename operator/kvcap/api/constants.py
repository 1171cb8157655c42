"""Names the operator writes into the cluster: condition types, reasons, labels, annotations.

One module, each constant with a comment saying when it is used (as cert-manager's
`policies/constants.go`).
Condition reasons and event reasons are CamelCase; messages follow the API conventions ("must ...",
literals in single quotes).
"""

from __future__ import annotations

from typing import Final

from kvcap import GROUP

# --- kopf bookkeeping ---

FIELD_MANAGER: Final = "kvcap"  # Server-side-apply field manager of every child object.
# kopf's finalizer name, should a handler ever need one. None does: deletion is garbage collection.
FINALIZER: Final = f"{GROUP}/finalizer"
# Prefix of kopf's progress/diff-base annotations on the ModelDeployment.
ANNOTATION_PREFIX: Final = GROUP

# --- labels and annotations on children ---

# Always APP_NAME: every pod kvcap runs is a vLLM server.
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"  # The ModelDeployment's name.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"  # Always MANAGED_BY.
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"  # The ModelDeployment's name.
# 'model-server' (pods, Services) or the kind's role.
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
# The owner's name: the selector of all children.
LABEL_MODEL_DEPLOYMENT: Final = f"{GROUP}/model-deployment"
LABEL_POOL: Final = f"{GROUP}/pool"  # The pool ('default' or 'long') a child belongs to.
# ROLE_SERVER on pods that answer the OpenAI API, ROLE_WORKER otherwise.
LABEL_ROLE: Final = f"{GROUP}/role"
# Context-length range a pod is sized for, read by the llm-d router's `context-length-aware`
# scorer/filter: value "min-max", inclusive, in tokens. Source: llm-d/llm-d-router,
# pkg/epp/.../contextlengthaware (`DefaultContextLengthLabel = "llm-d.ai/context-length-range"`,
# `parseContextRange` expects "min-max"). Pods of both pools must sit in ONE InferencePool for
# it to work.
LABEL_CONTEXT_LENGTH_RANGE: Final = "llm-d.ai/context-length-range"
ANNOTATION_SPEC_HASH: Final = f"{GROUP}/spec-hash"  # sha256 (16 hex) of the rendered pod template.

APP_NAME: Final = "vllm"  # Value of LABEL_NAME.
MANAGED_BY: Final = "kvcap"  # Value of LABEL_MANAGED_BY.
COMPONENT: Final = "model-server"  # Value of LABEL_COMPONENT.
# Pod serves HTTP on VLLM_PORT (Deployment pods, LeaderWorkerSet leaders).
ROLE_SERVER: Final = "server"
ROLE_WORKER: Final = "worker"  # LeaderWorkerSet worker: a Ray worker, no HTTP server.

# --- the vLLM container ---

VLLM_CONTAINER: Final = "vllm"  # Container name in every pod.
VLLM_PORT: Final = 8000  # `vllm serve --port` (vLLM's default).
PORT_NAME: Final = "http"  # Name of VLLM_PORT on containers and Services.
# Answers only once the model is loaded (llm-d readiness-probes doc).
READINESS_PATH: Final = "/v1/models"
LIVENESS_PATH: Final = "/health"  # Engine alive; does not prove the model is loaded.
METRICS_PATH: Final = "/metrics"  # Prometheus endpoint of the vLLM server.
SHM_VOLUME: Final = "dshm"  # Memory-backed emptyDir mounted at /dev/shm (NCCL).
HF_TOKEN_ENV: Final = "HF_TOKEN"  # Env var vLLM/huggingface_hub read the Hub token from.
RAY_PORT: Final = 6379  # Ray head port inside a LeaderWorkerSet group.
# Node label (GPU feature discovery) naming the GPU.
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
# Taint GPU node pools usually carry (tolerated, NoSchedule).
GPU_TAINT_KEY: Final = "nvidia.com/gpu"

# --- optional APIs (discovered at run time) ---

SERVICE_MONITOR_API: Final = ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor")
LEADER_WORKER_SET_API: Final = (
    "leaderworkerset.x-k8s.io",
    "v1",
    "leaderworkersets",
    "LeaderWorkerSet",
)
INFERENCE_POOL_API_V1: Final = (
    "inference.networking.k8s.io",
    "v1",
    "inferencepools",
    "InferencePool",
)
INFERENCE_POOL_API_V1ALPHA2: Final = (
    "inference.networking.x-k8s.io",
    "v1alpha2",
    "inferencepools",
    "InferencePool",
)

# --- condition types ---

READY: Final = "Ready"  # Summary: planned, applied, every desired replica ready.
CAPACITY_PLANNED: Final = "CapacityPlanned"  # The spec was valid and the planner found a plan.
# The cluster has the GPUs the plan needs and no pod is unschedulable.
SCHEDULABLE: Final = "Schedulable"
# True while a rollout is under way (kubebuilder/Deployment sense).
PROGRESSING: Final = "Progressing"
CHILDREN_SYNCED: Final = "ChildrenSynced"  # Every child object was applied as rendered.

# kstatus "abnormal-true" conditions, which Flux and other GitOps health checks read
# (sigs.k8s.io/cli-utils pkg/kstatus: https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md):
# True while the operator is still working toward the spec (first visit, rollout, transient errors).
RECONCILING_TYPE: Final = "Reconciling"
STALLED: Final = "Stalled"  # True when no progress is possible without a change; reason says why.

CONDITION_TYPES: Final = (
    READY,
    CAPACITY_PLANNED,
    SCHEDULABLE,
    PROGRESSING,
    CHILDREN_SYNCED,
    RECONCILING_TYPE,
    STALLED,
)
# Set only while `spec.autoscaling.policy` is not 'Disabled' (removed when it is):
# Prometheus answered with current vLLM metrics for every Ready pod of every pool.
METRICS_AVAILABLE: Final = "MetricsAvailable"
# The KV capacity the running servers report (`vllm:cache_config_info`) matches the plan.
CAPACITY_VERIFIED: Final = "CapacityVerified"
AUTOSCALING_CONDITION_TYPES: Final = (METRICS_AVAILABLE, CAPACITY_VERIFIED)

# --- condition reasons ---

# First visit: the operator has not looked at this generation yet.
RECONCILING: Final = "Reconciling"

# CapacityPlanned
PLAN_FITS: Final = "PlanFits"  # The planner found a feasible plan.
INFEASIBLE: Final = "Infeasible"  # The planner found no plan; the message is the planner's.
INVALID_SPEC: Final = "InvalidSpec"  # `spec` failed validation (pydantic); retrying cannot help.
# The ConfigMap's config.json is missing or not JSON.
INVALID_MODEL_CONFIG: Final = "InvalidModelConfig"
# The token Secret is missing (the Hub itself reports HUB_UNAVAILABLE).
MODEL_CONFIG_UNAVAILABLE: Final = "ModelConfigUnavailable"
# The Hugging Face Hub could not be reached (kvcap.api.errors.HubError.reason); retried.
HUB_UNAVAILABLE: Final = "HubUnavailable"
# A replica spans nodes but the LeaderWorkerSet API is absent.
NEEDS_MULTI_NODE: Final = "NeedsMultiNode"
PLANNER_ERROR: Final = "PlannerError"  # The planner raised an unexpected exception (a kvcap bug).

# Schedulable
GPUS_AVAILABLE: Final = "GpusAvailable"  # Allocatable GPUs of the planned products cover the plan.
INSUFFICIENT_GPUS: Final = "InsufficientGpus"  # The plan needs more GPUs than Ready nodes allocate.
# No single node has gpusPerReplica GPUs of the product.
NO_NODE_FITS_REPLICA: Final = "NoNodeFitsReplica"
POD_UNSCHEDULABLE: Final = "PodUnschedulable"  # The scheduler reported a pod of ours unschedulable.
INVENTORY_UNAVAILABLE: Final = "InventoryUnavailable"  # Nodes could not be read (RBAC or disabled).
NOT_PLANNED: Final = "NotPlanned"  # No plan yet, so nothing to check or roll out.

# Progressing
ROLLING_OUT: Final = "RollingOut"  # Some pool has fewer updated or ready replicas than desired.
# Every pool runs the current template at full strength.
ROLLOUT_COMPLETE: Final = "RolloutComplete"
PAUSED: Final = "Paused"  # `spec.paused` is true: children are left as they are.

# ChildrenSynced
APPLIED: Final = "Applied"  # Every rendered child was applied (server-side apply, force).
CONFLICT: Final = "Conflict"  # A same-named object exists without our controller ownerReference.
# The API server rejected a child (422/400): a spec problem.
APPLY_REJECTED: Final = "ApplyRejected"
APPLY_FAILED: Final = "ApplyFailed"  # A transient API error; retried.

# Ready
REPLICAS_READY: Final = "ReplicasReady"  # Every desired replica of every pool is ready.
REPLICAS_NOT_READY: Final = "ReplicasNotReady"  # Some desired replica is not ready yet.

# Ready/Progressing/Stalled, from the pods and workloads of a pool (controller.conditions
# `classify_pools`). Container waiting reasons are the kubelet's own and are passed through as
# they are: ImagePullBackOff, ErrImagePull, InvalidImageName, CrashLoopBackOff,
# CreateContainerConfigError, CreateContainerError, RunContainerError.
OOM_KILLED: Final = "OOMKilled"  # A container was killed for exceeding its memory.
# The workload controller could not create pods (quota, Pod Security, admission webhooks).
FAILED_CREATE: Final = "FailedCreate"
# The Deployment's rollout made no progress within progressDeadlineSeconds.
PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"

# Reconciling / Stalled
RECONCILED: Final = "Reconciled"  # Reconciling False: the status reflects the spec, nothing moves.
NOT_STALLED: Final = "NotStalled"  # Stalled False: nothing blocks progress.

# MetricsAvailable (the autoscaler holds replicas unless it is True)
METRICS_CURRENT: Final = "MetricsCurrent"  # Every Ready pod reported fresh, finite samples.
# Prometheus could not be queried (connection, HTTP error, timeout, URL not allowed).
PROMETHEUS_UNAVAILABLE: Final = "PrometheusUnavailable"
# A Ready pod has no (or a NaN) sample of a required signal (KV usage, running, waiting).
METRICS_MISSING: Final = "MetricsMissing"
# A Ready pod's newest KV-usage sample is older than the staleness window (120 s).
METRICS_STALE: Final = "MetricsStale"
NO_READY_REPLICAS: Final = "NoReadyReplicas"  # Nothing to measure yet: no pool has a Ready pod.

# CapacityVerified
# Reported KV tokens per replica within 2 % of the plan's `kvTokensPerReplica`.
CAPACITY_MATCHES_PLAN: Final = "CapacityMatchesPlan"
# Reported KV tokens per replica more than 2 % from the plan; the autoscaler uses the reported.
PLAN_MISMATCH: Final = "PlanMismatch"
# No Ready server reports `vllm:cache_config_info` with its block count (or no Ready server).
CAPACITY_NOT_REPORTED: Final = "CapacityNotReported"

# --- event reasons (posted only on transitions) ---

EVENT_PLAN_CHANGED: Final = "PlanChanged"  # Pools, products, parallelism or max-model-len changed.
# Desired replicas grew (per pool when autoscaling, with the decision's arithmetic).
EVENT_SCALED_UP: Final = "ScaledUp"
EVENT_SCALED_DOWN: Final = "ScaledDown"  # Desired replicas shrank (as EVENT_SCALED_UP).
EVENT_PLAN_MISMATCH: Final = "PlanMismatch"  # CapacityVerified turned False.
EVENT_METRICS_UNAVAILABLE: Final = "MetricsUnavailable"  # MetricsAvailable turned False.
EVENT_INFEASIBLE: Final = "PlanInfeasible"  # CapacityPlanned turned False.
EVENT_READY: Final = "Ready"  # Ready turned True.
EVENT_NOT_READY: Final = "NotReady"  # Ready turned False after having been True.
EVENT_CONFLICT: Final = "Conflict"  # ChildrenSynced turned False with CONFLICT.
EVENT_UNSCHEDULABLE: Final = "Unschedulable"  # Schedulable turned False.
EVENT_POOL_DELETED: Final = "PoolDeleted"  # The children of a pool the plan dropped were deleted.
# Stalled turned True (or changed reason): the event reason is the Stalled reason itself
# (ImagePullBackOff, OOMKilled, FailedCreate, Infeasible, InsufficientGpus, ...).
