"""kvcap: size and run vLLM model servers from the KV-cache budget."""

__version__ = "0.1.0"

GROUP = "kvcap.io"
VERSION = "v1alpha1"
PLURAL = "modeldeployments"
KIND = "ModelDeployment"
