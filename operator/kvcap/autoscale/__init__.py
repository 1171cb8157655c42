"""KV-headroom autoscaling: a pure policy (`policy`) and its Prometheus shell."""
