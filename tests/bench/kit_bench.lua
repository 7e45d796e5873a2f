-- The testing kit's speed (docs/benchmarks.md, "The testing kit"): run from the repository root after
-- `make build`:
--   lua5.4 tests/bench/kit_bench.lua [SAGAS]
-- prints three figures:
--   a suite of 100 specs: 100 fresh envs (each: a temporary store, the sample scripts loaded), one
--     OrderProcessing each, run to its end, checked: the wall time of the whole suite
--   sagas/s in one env without faults: SAGAS OrderProcessing sagas started, then run until idle
--   sagas/s in one env under faults: the same with duplicate 0.2, drop 0.1, delay 0-2s, reorder and a
--     crash every 500 deliveries, on the virtual clock
local dir = os.getenv("SAGAHOST_MODULE_DIR") or "build"
package.cpath = dir .. "/?.so;" .. package.cpath
package.path = "lua/?.lua;" .. package.path
local testing = require "saga.testing"

local n = tonumber(arg[1]) or 2000

local function now()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

local function order(i, card)
  return { order_id = "b" .. i, sku = "mug", qty = 1, amount = 5, card = card or (i % 10 == 0 and "declined" or "ok") }
end

-- 100 specs, each its own env
local t0 = now()
for i = 1, 100 do
  local env = testing.env { scripts = "sagas" }
  local h = env:start("OrderProcessing", order(i, "ok"))
  assert(h:status() == "completed", "spec " .. i .. ": " .. h:status())
  env:close()
end
local suite = now() - t0
print(string.format("kit: a suite of 100 specs (one env and one saga each): %.2f s (%.1f ms per spec)", suite, suite * 10))

local function many(faults)
  local env = testing.env { scripts = "sagas" }
  if faults then env:faults(faults) end
  local t = now()
  local hs = {}
  for i = 1, n do hs[i] = env:start("OrderProcessing", order(i)) end
  env:advance("15m")
  local secs = now() - t
  local done = 0
  for i, h in ipairs(hs) do
    local want = i % 10 == 0 and "compensated" or "completed"
    assert(h:status() == want, "saga " .. i .. ": " .. h:status())
    done = done + 1
  end
  local st = env:stats()
  env:close()
  return done / secs, secs, st
end

local rate, secs = many(nil)
print(string.format("kit: %d sagas in one env, no faults: %.2f s, %.0f sagas/s", n, secs, rate))
local frate, fsecs, st = many { duplicate = 0.2, drop = 0.1, delay = { 0, 2000 }, reorder = true, crash_every = 500, seed = 42 }
print(string.format("kit: %d sagas in one env under faults (seed 42): %.2f s, %.0f sagas/s " ..
  "(%d deliveries: %d duplicated, %d dropped, %d delayed; %d crashes)", n, fsecs, frate,
  st.delivered or 0, st.duplicated or 0, st.dropped or 0, st.delayed or 0, st.crashes or 0))
