-- Partial steps: an action attempt that fails (or is aborted) after some of its calls completed gets its
-- step's compensate function run for it, with ctx.partial and ctx.journal, before the step is retried or
-- the steps before it are compensated. The participant counts what it booked and cancelled.
local H = require "helper"

local SCRIPT = [[
local saga = require "saga"
saga.handle("hotel", "Book", function(p)
  print("BOOKED " .. p.who)
  return { booking = "bk-" .. p.who }
end)
saga.handle("hotel", "Cancel", function(p)
  print("CANCELLED " .. tostring(p.booking))
  return {}
end)

local function cancel(ctx)
  if ctx.partial then
    ctx.data.partial_seen = { partial = ctx.partial, n = #ctx.journal, service = ctx.journal[1].service,
                              command = ctx.journal[1].command, booking = ctx.journal[1].result.booking }
    for _, j in ipairs(ctx.journal) do ctx:call("hotel", "Cancel", { booking = j.result.booking }) end
  else
    ctx.data.full_seen = { partial = ctx.partial == nil and "nil" or tostring(ctx.partial) }
    ctx:call("hotel", "Cancel", { booking = ctx.data.booking })
  end
end

saga.define { name = "FailAfterCall", steps = {
  { name = "Hotel", retry = { attempts = 1 }, compensate = cancel, action = function(ctx)
      ctx.data.booking = ctx:call("hotel", "Book", { who = ctx.input.who }).booking
      error("the room type is gone")
    end },
} }

saga.define { name = "SleepAfterCall", steps = {
  { name = "Hotel", retry = { attempts = 1 }, compensate = cancel, action = function(ctx)
      ctx:call("hotel", "Book", { who = ctx.input.who })
      ctx:sleep(ctx.input.sleep or "30s")
      if ctx.input.fail then error("failed after the sleep") end
    end },
} }

saga.define { name = "RetryAfterCall", steps = {
  { name = "Hotel", retry = { attempts = 2, initial = "50ms", jitter = false }, compensate = cancel,
    action = function(ctx)
      ctx.data.booking = ctx:call("hotel", "Book", { who = ctx.input.who .. "-" .. ctx.attempt }).booking
      if ctx.attempt == 1 then error("flaky") end
    end },
} }

saga.define { name = "OptOut", steps = {
  { name = "Hotel", retry = { attempts = 1 }, compensate = cancel, compensate_partial = false,
    action = function(ctx)
      ctx:call("hotel", "Book", { who = ctx.input.who })
      error("failed after the call")
    end },
} }

saga.define { name = "TwoSteps", steps = {
  { name = "Hotel", compensate = cancel, action = function(ctx)
      ctx.data.booking = ctx:call("hotel", "Book", { who = ctx.input.who }).booking
    end },
  { name = "Pay", retry = { attempts = 1 }, action = function(ctx) error("card declined") end },
} }

saga.define { name = "NoCallFails", steps = {
  { name = "Hotel", retry = { attempts = 1 }, compensate = cancel, action = function(ctx) error("before any call") end },
} }
]]

local function count(host, what, who)
  return H.count(host:log(), what .. " " .. who)
end

describe("partial steps", function()
  local host
  setup(function()
    host = H.host { name = "partial", scripts = { ["p.lua"] = SCRIPT } }
    host:start()
  end)
  teardown(function() host:cleanup() end)

  it("compensates the calls of a step that failed after them", function()
    local id = host:start_saga("FailAfterCall", { who = "ann" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Hotel:action:failed", "Hotel:compensate:completed" }, H.history(s))
    local seen = s.data.partial_seen
    assert.is_true(seen.partial)
    assert.are.equal(1, seen.n)
    assert.are.equal("hotel", seen.service)
    assert.are.equal("Book", seen.command)
    assert.are.equal("bk-ann", seen.booking)
    assert.are.equal(1, count(host, "BOOKED", "ann"))
    assert.are.equal(1, count(host, "CANCELLED", "bk-ann"))
    assert.matches("the room type is gone", s.error)
  end)

  it("compensates them when an operator compensates the saga during a sleep", function()
    local id = host:start_saga("SleepAfterCall", { who = "bob" })
    host:wait_log("BOOKED bob", 10)
    H.sleep(0.3)
    local code = host:post("/v1/sagas/" .. id .. "/compensate", { reason = "customer cancelled" })
    assert.are.equal(200, code)
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Hotel:action:failed", "Hotel:compensate:completed" }, H.history(s))
    assert.are.equal(1, count(host, "BOOKED", "bob"))
    assert.are.equal(1, count(host, "CANCELLED", "bk-bob"))
  end)

  it("undoes the first attempt's call before the retry makes it again", function()
    local id = host:start_saga("RetryAfterCall", { who = "cy" })
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.same({ "Hotel:action:failed", "Hotel:compensate:completed", "Hotel:action:completed" }, H.history(s))
    assert.are.equal(1, count(host, "BOOKED", "cy-1"))
    assert.are.equal(1, count(host, "CANCELLED", "bk-cy-1"))
    assert.are.equal(1, count(host, "BOOKED", "cy-2"))
    assert.are.equal(0, count(host, "CANCELLED", "bk-cy-2"))
    -- the partial compensation's history row counts its own attempts from 1
    local attempts = {}
    for _, st in ipairs(s.steps) do if st.phase ~= "saga" then attempts[#attempts + 1] = st.attempt end end
    assert.are.same({ 1, 1, 2 }, attempts)
    assert.are.equal("bk-cy-2", s.data.booking)
  end)

  it("leaves them alone when the step says compensate_partial = false", function()
    local id = host:start_saga("OptOut", { who = "dee" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Hotel:action:failed" }, H.history(s))
    assert.are.equal(1, count(host, "BOOKED", "dee"))
    assert.are.equal(0, count(host, "CANCELLED", "bk-dee"))
  end)

  it("runs a completed step's compensation without ctx.partial", function()
    local id = host:start_saga("TwoSteps", { who = "eve" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Hotel:action:completed", "Pay:action:failed", "Hotel:compensate:completed" }, H.history(s))
    assert.are.equal("nil", s.data.full_seen.partial)
    assert.is_nil(s.data.partial_seen)
    assert.are.equal(1, count(host, "CANCELLED", "bk-eve"))
  end)

  it("has nothing to compensate when no call completed", function()
    local id = host:start_saga("NoCallFails", { who = "fay" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Hotel:action:failed" }, H.history(s))
  end)
end)

describe("partial steps across a kill -9", function()
  it("knows which calls completed before the restart", function()
    local host = H.host { name = "partial-kill", scripts = { ["p.lua"] = SCRIPT } }
    host:start()
    local ok, err = pcall(function()
      local id = host:start_saga("SleepAfterCall", { who = "gus", sleep = "2s", fail = true })
      host:wait_log("BOOKED gus", 10)
      H.sleep(0.3)
      host:kill9()
      host:start()
      local s = host:wait(id, nil, 30)
      assert.are.equal("compensated", s.status)
      assert.are.same({ "Hotel:action:failed", "Hotel:compensate:completed" }, H.history(s))
      assert.are.equal("hotel", s.data.partial_seen.service)
      assert.are.equal("Book", s.data.partial_seen.command)
      assert.are.equal("bk-gus", s.data.partial_seen.booking)
      assert.are.equal(1, H.count(host:log() , "CANCELLED bk-gus"))
    end)
    host:cleanup()
    assert(ok, err)
  end)
end)

describe("sagahost check", function()
  it("warns about a step without compensate that can fail after a call, at the call's line", function()
    local dir = H.tmpdir("partial-check")
    H.write(dir .. "/w.lua", [[
local saga = require "saga"
saga.define { name = "Risky", steps = {
  { name = "Book", action = function(ctx)
      local b = ctx:call("hotel", "Book", {})
      if not b.ok then error("no room") end
    end },
  { name = "Two", action = function(ctx)
      ctx:call("car", "Rent", {})
      ctx:call("flight", "Book", {})
    end },
  { name = "Safe", action = function(ctx)
      ctx:call("hotel", "Book", {})
    end, },
  { name = "Undone", action = function(ctx)
      ctx:call("hotel", "Book", {})
      error("x")
    end, compensate = function(ctx) end },
} }
]])
    local rc, out = H.sh(H.bin .. " check " .. H.q(dir))
    assert.are.equal(0, rc, out)
    local warnings = {}
    for line in out:gmatch("[^\n]+") do
      if line:find("warning:", 1, true) then warnings[#warnings + 1] = line end
    end
    assert.are.equal(2, #warnings, out)
    assert.matches("w%.lua:4: warning: step 'Book' of saga 'Risky' has no compensate function", warnings[1])
    assert.matches("line 5 can", warnings[1])
    assert.matches("w%.lua:8: warning: step 'Two'", warnings[2])
    assert.matches("1 saga type%(s%) OK %(with warnings%)", out)
  end)
end)
