---@meta json
-- `require "json"` in a script: the same as `saga.json` (lua/types/saga.lua).

---@type saga.json
local json = {}

return json
