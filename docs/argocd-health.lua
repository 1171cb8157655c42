-- Argo CD health check for kvcap.io/ModelDeployment.
--
-- Argo CD has no generic health check for custom resources. Install this script under
-- `resource.customizations.health.kvcap.io_ModelDeployment` in the `argocd-cm` ConfigMap
-- (https://argo-cd.readthedocs.io/en/stable/operator-manual/health/#custom-health-checks);
-- docs/status.md shows the snippet. It reads the same fields as kstatus (Flux):
-- status.observedGeneration, and the Stalled, Reconciling, Ready and Progressing conditions.
-- Tested against the operator's own status objects on Lua 5.1 (tests/unit/test_argocd_health.py).

local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kvcap operator to reconcile"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kvcap operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local progressing = condition("Progressing")
if progressing ~= nil and progressing.reason == "Paused" then
  hs.status = "Suspended"
  hs.message = describe(progressing, "Paused")
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end

hs.status = "Progressing"
local reconciling = condition("Reconciling")
if ready ~= nil then
  hs.message = describe(ready, "Not ready")
else
  hs.message = describe(reconciling, "Reconciling")
end
return hs
