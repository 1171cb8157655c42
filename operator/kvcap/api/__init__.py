"""The ModelDeployment API: the CRD's pydantic models, shared constants (labels, condition types,
reasons) and the error types. Pure: imports nothing else from kvcap but the package root."""
