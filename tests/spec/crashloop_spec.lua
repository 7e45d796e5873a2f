-- Crash loop: sagas in flight while the host is killed with kill -9 at random moments and restarted.
-- CI runs a reduced size; the full size of issue #4 is
--   SG_CRASHLOOP_SAGAS=200 SG_CRASHLOOP_KILLS=20 SAGAHOST=$PWD/build/sagahost \
--     busted --lua=lua5.4 --lpath='tests/spec/?.lua' tests/spec/crashloop_spec.lua
local H = require "helper"

local N = tonumber(os.getenv("SG_CRASHLOOP_SAGAS")) or 60
local KILLS = tonumber(os.getenv("SG_CRASHLOOP_KILLS")) or 8
local AMQP = H.amqp_url

local function script(svc)
  return ([[
local saga = require "saga"
local function step(name)
  return {
    name = name,
    action = function(ctx)
      local r = ctx:call("SVC", "Do", { saga = ctx.id, step = name })
      ctx.data[name] = r.mid
      if ctx.input.nap then ctx:sleep(ctx.input.nap) end
      if name == "C" and ctx.input.fail then ctx:fail("fails at C") end
    end,
    compensate = function(ctx) ctx:call("SVC", "Undo", { saga = ctx.id, step = name }) end,
  }
end
saga.define { name = "Loop", steps = { step("A"), step("B"), step("C") } }
]]):gsub("SVC", svc)
end

local function participant(svc)
  return ([[
local saga = require "saga"
saga.handle("SVC", "Do", function(p, msg) print("EFFECT " .. msg.message_id); return { mid = msg.message_id } end)
saga.handle("SVC", "Undo", function(p, msg) print("EFFECT " .. msg.message_id); return {} end)
]]):gsub("SVC", svc)
end

-- starts N sagas, kills and restarts the host KILLS times, then checks every saga
local function crash_loop(host, log_of_effects, exact)
  local ids, fail = {}, {}
  math.randomseed(os.time())
  for i = 1, N do
    fail[i] = i % 5 == 0
    -- naps of 0 to 4.75 s keep sagas in flight across most of the kills
    ids[i] = host:start_saga("Loop", { fail = fail[i], nap = (i % 20) * 0.25 .. "s" })
  end
  for _ = 1, KILLS do
    H.sleep(0.05 + math.random() * 0.4)
    host:kill9()
    host:start()
  end
  local effects = {}
  for i, id in ipairs(ids) do
    local s = host:wait(id, nil, 60)
    assert.are.equal(fail[i] and "compensated" or "completed", s.status, id .. ": " .. tostring(s.error))
    -- each step's action is recorded as completed exactly once
    local done = {}
    for _, st in ipairs(s.steps) do
      if st.phase == "action" and st.status == "completed" then done[st.name] = (done[st.name] or 0) + 1 end
    end
    assert.are.equal(1, done.A, id)
    assert.are.equal(1, done.B, id)
    if not fail[i] then assert.are.equal(1, done.C, id) end
    effects[#effects + 1] = s
  end
  -- each command's effect applied once: the participant ran each message id once
  local text = log_of_effects()
  local seen = {}
  for mid in text:gmatch("EFFECT (%S+)") do seen[mid] = (seen[mid] or 0) + 1 end
  local commands = 0
  for _, s in ipairs(effects) do
    for _, name in ipairs { "A", "B", "C" } do
      local mid = s.data[name]
      if mid then
        commands = commands + 1
        if exact then
          assert.are.equal(1, seen[mid], "handler runs of " .. mid)
        else
          assert.is_true((seen[mid] or 0) >= 1, "handler of " .. mid .. " never ran")
        end
      end
    end
  end
  assert.is_true(commands >= 2 * N)
  if exact then
    for mid, n in pairs(seen) do assert.are.equal(1, n, "handler runs of " .. mid) end
  end
end

describe("crash loop (" .. N .. " sagas, " .. KILLS .. " kills)", function()
  it("in-process: every saga ends right and every step completes once", function()
    local svc = "cl" .. os.time()
    local host = H.host { name = "crashloop", scripts = { ["loop.lua"] = script(svc), ["p.lua"] = participant(svc) } }
    host:start()
    local ok, err = pcall(crash_loop, host, function() return host:log() end, false)
    host:stop()
    assert(ok, err)
    -- within one run of the host, the inbox never lets a message id's handler run twice
    for run = 1, host.runs do
      local seen = {}
      for mid in (H.read(host.logfile .. "." .. run) or ""):gmatch("EFFECT (%S+)") do
        assert.is_nil(seen[mid], "handler of " .. mid .. " ran twice in run " .. run)
        seen[mid] = true
      end
    end
  end)

  it("over RabbitMQ with a separate participant: each command's effect is applied exactly once", function()
    local svc = "clq" .. os.time()
    local part = H.host { name = "crashloop-part", scripts = { ["p.lua"] = participant(svc) }, args = "--amqp " .. AMQP }
    local orch = H.host { name = "crashloop-orch", scripts = { ["loop.lua"] = script(svc) },
      args = "--amqp " .. AMQP .. " --host-id crashloop-" .. svc }
    part:start()
    orch:start()
    local ok, err = pcall(crash_loop, orch, function() return part:log() end, true)
    orch:stop()
    part:stop()
    assert(ok, err)
  end)
end)
