"""`kvcap export keda`: one KEDA `ScaledObject` per pool, encoding the headroom rule in PromQL.

For teams that already run KEDA (https://keda.sh, ScaledObject `keda.sh/v1alpha1`, Prometheus
scaler https://keda.sh/docs/latest/scalers/prometheus/). The trigger's query is the pool's KV
demand in tokens, summed over its pods:

    sum(vllm:kv_cache_usage_perc) x C                      tokens in use
  + (capacity-waiting, else all waiting requests) x W      tokens the queue will need
  + sum(vllm:num_requests_running) x G                     decode growth still to come

with C = the plan's KV tokens per replica, W = mean prompt + output tokens of a request and
G = half the mean output (the pool's length model, `policy.length_model_for`). With
`metricType: AverageValue` and `threshold` = target % x C, the HPA KEDA drives computes
ceil(demand / (target % x C)) replicas: the same arithmetic as the built-in loop's main rule.

It is an approximation of the built-in loop (docs/autoscaling.md lists the differences): no
look-ahead by start-up time, no "pressure adds a replica" rule, capacity from the plan rather than
from `vllm:cache_config_info`, no GPU budget across pools, and scale-down by the HPA's behaviour
(one pod per `scaleDownDelaySeconds`) rather than by a window of low demand. Missing data holds:
`ignoreNullValues: "false"` makes an empty answer an error, and KEDA keeps the replica count.
Pods are matched by `namespace` and `pod` labels only (the same contract as the operator),
the pod name being the workload's: `<workload>-<hash>-<suffix>` (Deployment) or
`<workload>-<index>` (LeaderWorkerSet leader).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvcap.api import constants as kc
from kvcap.api.models import ModelDeploymentSpec
from kvcap.autoscale.policy import length_model_for
from kvcap.autoscale.promql import either
from kvcap.capacity.plan_types import CapacityPlan, PoolPlan

KEDA_API_VERSION = "keda.sh/v1alpha1"
POLLING_SECONDS = 15


def pod_selector(namespace: str, workload: str) -> str:
    """Series of the pool's pods, by the `namespace` and `pod` labels only."""
    return f'{{namespace="{namespace}", pod=~"{workload}-([a-z0-9]+-[a-z0-9]{{5}}|[0-9]+)"}}'


def demand_query(namespace: str, workload: str, pool: PoolPlan) -> str:
    """PromQL: the pool's KV demand in tokens (see the module docstring)."""
    sel = pod_selector(namespace, workload)
    length = length_model_for(pool)
    per_waiting = length.mean_prompt_tokens + length.mean_output_tokens
    growth = length.mean_output_tokens / 2
    capacity_sel = sel[:-1] + ', reason="capacity"}'
    usage = either("kv_cache_usage_perc", "gpu_cache_usage_perc", selector=sel)
    waiting = (
        f"(sum({either('num_requests_waiting_by_reason', selector=capacity_sel)})"
        f" or sum({either('num_requests_waiting', selector=sel)}))"
    )
    running = either("num_requests_running", selector=sel)
    return (
        f"sum({usage}) * {pool.kv_tokens_per_replica}"
        f" + {waiting} * {per_waiting:.0f}"
        f" + sum({running}) * {growth:.0f}"
    )


def scaled_object(
    *,
    name: str,
    namespace: str,
    workload: str,
    workload_kind: str,
    spec: ModelDeploymentSpec,
    pool: PoolPlan,
    prometheus_url: str,
) -> dict[str, Any]:
    auto = spec.autoscaling
    threshold = auto.target_kv_utilization_percent / 100 * pool.kv_tokens_per_replica
    delay = auto.scale_down_delay_seconds
    api_version = "apps/v1"
    if workload_kind == kc.LEADER_WORKER_SET_API[3]:
        api_version = "/".join(kc.LEADER_WORKER_SET_API[:2])
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": {
            "name": workload,
            "namespace": namespace,
            "labels": {
                kc.LABEL_MANAGED_BY: "kvcap-export",
                kc.LABEL_MODEL_DEPLOYMENT: name,
                kc.LABEL_POOL: pool.name,
            },
            "annotations": {
                f"{kc.ANNOTATION_PREFIX}/rule": (
                    f"KV demand <= {auto.target_kv_utilization_percent} % of replicas x "
                    f"{pool.kv_tokens_per_replica} tokens (approximates kvcap's KVHeadroom)"
                ),
            },
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": api_version, "kind": workload_kind, "name": workload},
            "minReplicaCount": auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "pollingInterval": POLLING_SECONDS,
            "cooldownPeriod": max(delay, 1),
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleUp": {
                            "stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                        },
                        "scaleDown": {
                            "stabilizationWindowSeconds": min(delay, 3600),
                            "policies": [
                                {
                                    "type": "Pods",
                                    "value": 1,
                                    "periodSeconds": min(max(delay, 1), 1800),
                                }
                            ],
                        },
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "name": "kv-demand-tokens",
                    "metricType": "AverageValue",
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": demand_query(namespace, workload, pool),
                        "threshold": f"{threshold:.0f}",
                        "ignoreNullValues": "false",
                    },
                }
            ],
        },
    }


def scaled_objects(
    *,
    name: str,
    namespace: str,
    spec: ModelDeploymentSpec,
    plan: CapacityPlan,
    workloads: Mapping[str, tuple[str, str]],
    prometheus_url: str,
) -> list[dict[str, Any]]:
    """One ScaledObject per planned pool. `workloads`: pool -> (workload name, kind)."""
    out = []
    for pool in plan.pools:
        workload, kind = workloads[pool.name]
        out.append(
            scaled_object(
                name=name,
                namespace=namespace,
                workload=workload,
                workload_kind=kind,
                spec=spec,
                pool=pool,
                prometheus_url=prometheus_url,
            )
        )
    return out


__all__ = ["KEDA_API_VERSION", "demand_query", "pod_selector", "scaled_object", "scaled_objects"]
