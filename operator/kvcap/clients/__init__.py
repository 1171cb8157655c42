"""Thin I/O shells around external systems: the Hugging Face Hub (`hfhub`) and the Kubernetes API
(`kube`). Everything that crosses the network lives here or in the controller's shell modules."""
