"""The operator. Pure core: `render` (plan → child manifests), `conditions` (status and events),
`decide`. Imperative shell: `reconcile` (observe → decide → act → report), `handlers` (kopf),
`runner`, `settings`."""
