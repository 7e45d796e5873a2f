-- Crash recovery: kill -9 in the middle of a ctx:sleep and of a ctx:call, then restart.
local H = require "helper"

local SCRIPT = [[
local saga = require "saga"
saga.define {
  name = "Nap",
  steps = {
    { name = "CallThenSleep", action = function(ctx)
        local r = ctx:call("rec", "Do", { n = 1 })
        ctx.data.got = r.msg
        ctx:sleep(ctx.input.sleep)
        ctx.data.woke = ctx:now()
      end },
    { name = "After", action = function(ctx) ctx.data.after = true end },
  },
}
saga.define {
  name = "Slow",
  steps = {
    { name = "Work", retry = { attempts = 1 }, action = function(ctx)
        ctx.data.r = ctx:call("slow", "Work", { secs = ctx.input.secs })
      end },
  },
}
saga.handle("rec", "Do", function(p, msg) print("DO " .. msg.message_id); return { msg = msg.message_id } end)
saga.handle("slow", "Work", function(p, msg)
  print("WORK START " .. msg.message_id)
  local t = os.clock()
  while os.clock() - t < p.secs do end
  print("WORK DONE " .. msg.message_id)
  return { worked = p.secs }
end)
]]

local function wait_log(host, pattern)
  local deadline = os.time() + 10 * H.slow
  while os.time() <= deadline do
    local m = host:log():match(pattern)
    if m then return m end
    H.sleep(0.05)
  end
  error("log never showed " .. pattern .. ":\n" .. host:log())
end

describe("crash recovery", function()
  local host
  before_each(function()
    host = H.host { name = "crash", scripts = { ["c.lua"] = SCRIPT }, args = "--lua-budget 2000000000 --lua-step-cpu 30s" }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("kill -9 during ctx:sleep: the call is not repeated and the sleep keeps its due time", function()
    local id = host:start_saga("Nap", { sleep = "3s" })
    local mid = wait_log(host, "DO (%S+)")
    H.sleep(0.5)
    host:kill9()
    H.sleep(1)
    host:start()
    local s = host:wait(id, nil, 20)
    assert.are.equal("completed", s.status)
    assert.are.equal(mid, s.data.got)
    assert.is_true(s.data.after)
    assert.are.equal(1, H.count(host:log(), "DO " .. mid))
    -- the sleep ended ~3 s after it began, not 3 s after the restart (which came >= 1.5 s later)
    local woke_after = s.data.woke
    local created = os.time { year = tonumber(s.created_at:sub(1, 4)), month = tonumber(s.created_at:sub(6, 7)),
      day = tonumber(s.created_at:sub(9, 10)), hour = tonumber(s.created_at:sub(12, 13)),
      min = tonumber(s.created_at:sub(15, 16)), sec = tonumber(s.created_at:sub(18, 19)), isdst = false }
    local tz = os.time(os.date("!*t", 0)) -- created_at is UTC: undo the local-time interpretation
    local elapsed = woke_after - (created - tz)
    assert.is_true(elapsed >= 2.9 and elapsed < 4.3, "woke " .. elapsed .. " s after the start")
    -- one attempt of the step: the re-run after the crash continued the same attempt
    assert.are.same({ "CallThenSleep:action:completed", "After:action:completed" }, H.history(s))
  end)

  it("kill -9 during ctx:call: the command is redelivered and its effect applied once", function()
    local id = host:start_saga("Slow", { secs = 1.5 * H.slow })
    local mid = wait_log(host, "WORK START (%S+)")
    host:kill9()
    local first = host:log()
    assert.are.equal(0, H.count(first, "WORK DONE"))
    host:start()
    local s = host:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    local esc = mid
    assert.are.equal(2, H.count(host:log(), "WORK START " .. esc))
    assert.are.equal(1, H.count(host:log(), "WORK DONE " .. esc))
    assert.are.same({ "Work:action:completed" }, H.history(s))
  end)

  it("many sagas in flight survive a kill -9 with every step completed once", function()
    local ids = {}
    for i = 1, 40 do ids[i] = host:start_saga("Nap", { sleep = (i % 4) * 0.3 .. "s" }) end
    host:kill9()
    host:start()
    for _, id in ipairs(ids) do
      local s = host:wait(id, nil, 30)
      assert.are.equal("completed", s.status)
      assert.are.same({ "CallThenSleep:action:completed", "After:action:completed" }, H.history(s))
      assert.are.equal(1, H.count(host:log(), "DO " .. s.data.got))
    end
  end)
end)
