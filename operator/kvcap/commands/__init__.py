"""The CLI's subcommands that do I/O of their own (files, HTTP servers, plots): `calibrate`,
`emulate-vllm`, `export keda`, `simulate`. Each parses its arguments, calls the pure layers, and
prints; `kvcap.cli` only registers them."""
