-- End-to-end: step order, reverse compensation, retries, compensation failure, durable operations.
local H = require "helper"

local TRACE = [[
local saga = require "saga"
local function step(name, fail_mode)
  return {
    name = name,
    retry = { attempts = 1 },
    action = function(ctx)
      local r = ctx:call("rec", "Do", { step = name, order = ctx.input.order })
      ctx.data.done = (ctx.data.done or "") .. name .. ";"
      if ctx.input.fail_at == name then
        if ctx.input.mode == "fail" then ctx:fail("asked to fail at " .. name) end
        error("boom at " .. name)
      end
    end,
    compensate = function(ctx)
      ctx:call("rec", "Undo", { step = name })
      ctx.data.undone = (ctx.data.undone or "") .. name .. ";"
      if ctx.input.comp_fail == name then error("cannot undo " .. name) end
    end,
    compensate_retry = { attempts = 2, initial = "10ms", backoff = "fixed" },
  }
end
saga.define { name = "Trace", steps = { step("A"), step("B"), step("C") } }
saga.handle("rec", "Do", function(p) return { ok = p.step } end)
saga.handle("rec", "Undo", function(p) return { undone = p.step } end)
]]

describe("engine", function()
  local host
  setup(function()
    host = H.host { name = "engine", scripts = { ["trace.lua"] = TRACE }, copy = { "sagas/*.lua" } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("runs the steps in order and completes", function()
    local id = host:start_saga("Trace", { order = 1 })
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.same({ "A:action:completed", "B:action:completed", "C:action:completed" }, H.history(s))
    assert.are.equal("A;B;C;", s.data.done)
    for _, st in ipairs(s.steps) do
      assert.are.equal(1, st.attempt)
      assert.is_string(st.started_at)
      assert.is_string(st.finished_at)
    end
  end)

  it("compensates the completed steps in reverse order when a step gives up", function()
    -- C failed after its call completed: its compensation runs for that call first (partial step)
    local id = host:start_saga("Trace", { fail_at = "C", mode = "fail" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({
      "A:action:completed", "B:action:completed", "C:action:failed",
      "C:compensate:completed", "B:compensate:completed", "A:compensate:completed",
    }, H.history(s))
    assert.are.equal("C;B;A;", s.data.undone)
    assert.matches("asked to fail at C", s.error)
  end)

  it("a step without compensation is skipped when compensating", function()
    -- OrderProcessing's CreateShipment has no compensate: a declined card fails at step 2
    local id = host:start_saga("OrderProcessing", { order_id = "o-9", sku = "book", qty = 1, amount = 5, card = "declined" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "ReserveInventory:action:completed", "ProcessPayment:action:failed",
      "ReserveInventory:compensate:completed" }, H.history(s))
    assert.matches("card declined", s.error)
  end)

  it("the sample order completes with a good card", function()
    local id = host:start_saga("OrderProcessing", { order_id = "o-10", sku = "book", qty = 2, amount = 42, card = "ok" })
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.equal("r-o-10-book", s.data.reservation)
    assert.are.equal("p-o-10", s.data.payment)
    assert.are.equal("t-o-10", s.data.tracking)
  end)

  it("a compensation that keeps failing ends in compensation_failed with its attempts recorded", function()
    local id = host:start_saga("Trace", { fail_at = "C", mode = "fail", comp_fail = "A" })
    local s = host:wait(id)
    assert.are.equal("compensation_failed", s.status)
    assert.are.same({
      "A:action:completed", "B:action:completed", "C:action:failed",
      "C:compensate:completed", "B:compensate:completed", "A:compensate:failed", "A:compensate:failed",
    }, H.history(s))
    assert.are.equal(2, s.steps[7].attempt)
    assert.matches("cannot undo A", s.error)
    assert.matches("trace.lua:%d+", s.steps[7].error) -- the error names the script line
  end)
end)

describe("retries and durable operations", function()
  local host
  setup(function()
    host = H.host { name = "retry", scripts = { ["r.lua"] = [[
local saga = require "saga"
saga.define {
  name = "Flaky",
  steps = {
    { name = "Try", retry = { attempts = 3, initial = "100ms", backoff = "fixed" },
      action = function(ctx)
        ctx.data.seen = ctx.attempt
        if ctx.attempt < ctx.input.succeed_on then error("transient failure " .. ctx.attempt) end
      end },
  },
}
saga.define {
  name = "Ops",
  steps = {
    { name = "Work", action = function(ctx)
        local t0 = ctx:now()
        local u = ctx:uuid()
        ctx:sleep(ctx.input.long and "1200ms" or "300ms")
        ctx:send("rec", "Note", { u = u })
        ctx:publish("orders", "Slept", { u = u })
        ctx.data.uuid = u
        ctx.data.slept = ctx:now() - t0
        ctx.data.step = ctx.step
        ctx.data.input_ro = not pcall(function() ctx.input.x = 1 end)
        -- the read-only input can be sent and kept as it is
        ctx.data.echo = ctx:call("rec", "Echo", ctx.input)
        ctx.data.kept = ctx.input.nested
      end },
  },
}
saga.handle("rec", "Note", function(p) print("noted " .. p.u) end)
saga.handle("rec", "Echo", function(p) return p end)
]] } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("retries a failing action and records each attempt with its delay", function()
    local id = host:start_saga("Flaky", { succeed_on = 3 })
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.same({ "Try:action:failed", "Try:action:failed", "Try:action:completed" }, H.history(s))
    assert.are.same({ 1, 2, 3 }, { s.steps[1].attempt, s.steps[2].attempt, s.steps[3].attempt })
    assert.are.equal(3, s.data.seen)
    assert.matches("transient failure 1", s.steps[1].error)
  end)

  it("gives up after the last attempt and compensates", function()
    local id = host:start_saga("Flaky", { succeed_on = 9 })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.equal(3, #s.steps)
    assert.matches("transient failure 3", s.error)
  end)

  it("a saga parked in a long sleep holds no coroutine, and wakes from its journal", function()
    local _, before = host:get("/healthz")
    local id = host:start_saga("Ops", { long = true })
    H.sleep(0.3)
    local _, h = host:get("/healthz")
    assert.are.equal(before.live_sagas + 1, h.live_sagas)
    assert.are.equal(before.coroutines, h.coroutines)
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.is_true(s.data.slept >= 1.19, "slept " .. tostring(s.data.slept)) -- seconds as floats: 1.2 can come out as 1.1999999
  end)

  it("sleeps, sends, publishes and journals now/uuid", function()
    local id = host:start_saga("Ops", { nested = { a = 1, list = { "x", "y" } } })
    local s = host:wait(id)
    assert.are.equal("completed", s.status, s.error)
    assert.are.same({ a = 1, list = { "x", "y" } }, s.data.echo.nested)
    assert.are.same({ a = 1, list = { "x", "y" } }, s.data.kept)
    assert.is_true(s.data.slept >= 0.29, "slept " .. tostring(s.data.slept))
    assert.matches("^%x+%-%x+%-7%x+%-%x+%-%x+$", s.data.uuid)
    assert.are.equal("Work", s.data.step)
    assert.is_true(s.data.input_ro)
    H.sleep(0.2)
    assert.are.equal(1, H.count(host:log(), "noted " .. s.data.uuid))
  end)
end)
