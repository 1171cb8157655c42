"""The capacity model, pure: HF config.json → model facts (`arch`), vLLM's memory accounting
(`memory`, `vllm_version`), the built-in catalogs (`catalog`, `data/`), config resolution (`configs`)
and the planner. No network, no Kubernetes: `kvcap.clients` fetches, this package computes."""
