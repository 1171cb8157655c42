"""Trace-driven simulator of vLLM pools (pure, deterministic): replays request traces through the
planner's pools and the autoscaler's very policy."""
