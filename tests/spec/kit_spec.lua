-- The testing kit itself (lua/saga/testing.lua over build/sagahost.so): virtual clock, mocked
-- participants, traces, signals, idempotent starts, retries, crashes. Small inline scripts; nothing
-- sleeps in real time, and each test checks the real (CPU) time it took against a bound.
package.path = "lua/?.lua;" .. package.path
local testing = require "saga.testing"
local H = require "helper"

local function env_with(script, opts)
  local d = H.tmpdir("kit")
  H.write(d .. "/sagas/s.lua", script)
  opts = opts or {}
  opts.scripts = d .. "/sagas"
  return testing.env(opts)
end

local TWO_STEPS = [[
local saga = require "saga"
saga.define { name = "Two", steps = {
  { name = "Reserve", action = function(ctx) ctx.data.r = ctx:call("stock", "Reserve", { sku = ctx.input.sku }) end,
    compensate = function(ctx) ctx:call("stock", "Release", { sku = ctx.input.sku }) end },
  { name = "Charge", timeout = "30s", retry = { attempts = 1 },
    action = function(ctx) ctx.data.c = ctx:call("pay", "Charge", { amount = ctx.input.amount }) end },
} }
]]

describe("saga.testing", function()
  local env
  after_each(function() if env then env:close() end env = nil end)

  it("fires a 30 s step timeout on advance('30s') and not on '29s', in little real time", function()
    local t0 = os.clock()
    env = env_with(TWO_STEPS)
    env:mock("stock", "Reserve", { held = true })
    env:mock("stock", "Release", {})
    local charge = env:mock("pay", "Charge", function() return testing.NO_REPLY end)
    local start = env:now()
    assert.are.equal(testing.time_ms("2026-01-01T00:00:00Z"), start)
    local h = env:start("Two", { sku = "mug", amount = 9 })
    assert.are.equal("running", h:status())
    assert.are.equal(1, #charge.calls())
    assert.are.equal(start + 30000, env:next_due())
    env:advance("29s")
    assert.are.equal(start + 29000, env:now())
    assert.are.equal("running", h:status())
    assert.are.same({ "Reserve:action" }, h:trace())
    env:advance("1s")
    assert.are.equal("compensated", h:status())
    assert.are.same({ "Reserve:action", "Charge:action", "Reserve:compensate" }, h:trace())
    assert.matches("timeout", h:history()[2].error)
    assert.are.same({ { sku = "mug" } }, { h:calls("stock", "Release")[1].payload })
    assert.is_true(os.clock() - t0 < 2, "a 30 s timeout took " .. (os.clock() - t0) .. " s of CPU")
  end)

  it("answers calls from mocks: replies, error replies, recorded payloads and messages", function()
    env = env_with(TWO_STEPS)
    local reserve = env:mock("stock", "Reserve", function(p, msg) return { for_sku = p.sku, id = msg.message_id } end)
    env:mock("stock", "Release", {})
    env:mock("pay", "Charge", function(p) if p.amount > 100 then error { message = "declined", retryable = false } end return { ok = true } end)
    local ok = env:start("Two", { sku = "mug", amount = 9 })
    assert.are.equal("completed", ok:status())
    local data = ok:data()
    assert.are.equal("mug", data.r.for_sku)
    assert.are.same({ ok = true }, data.c)
    local call = reserve.calls()[1]
    assert.are.same({ sku = "mug" }, call.payload)
    assert.are.equal(ok.id, call.msg.saga_id)
    assert.are.equal("stock", call.msg.service)
    assert.are.equal("Reserve", call.msg.command)
    assert.are.equal(call.msg.message_id, data.r.id)

    local declined = env:start("Two", { sku = "cup", amount = 500 })
    assert.are.equal("compensated", declined:status())
    assert.are.equal("declined", declined:history()[2].error:match("declined"))
    assert.are.equal(2, #reserve.calls())
    assert.are.equal(1, #declined:calls("stock", "Reserve"))
    assert.are.equal(1, #declined:calls("stock", "Release"))
    assert.are.equal(3, #env:calls("stock")) -- Reserve twice, Release once
    assert.are.equal(2, #env:calls("pay", "Charge"))
  end)

  it("turns a string error of a mock into a retryable error reply, retried after its backoff", function()
    env = env_with([[
local saga = require "saga"
saga.define { name = "Flaky", steps = {
  { name = "Call", retry = { attempts = 3, backoff = "fixed", initial = "10s", jitter = false },
    action = function(ctx) ctx.data.v = ctx:call("svc", "Flaky", {}) end },
} }
]])
    local n = 0
    local m = env:mock("svc", "Flaky", function() n = n + 1 if n < 3 then error("busy " .. n) end return { n = n } end)
    local h = env:start("Flaky", {})
    assert.are.equal(1, #m.calls())
    assert.are.equal("running", h:status())
    assert.matches("busy 1", h:history()[1].error)
    env:advance("9999ms")
    assert.are.equal(1, #m.calls())
    env:advance(1)
    assert.are.equal(2, #m.calls())
    env:advance("10s")
    assert.are.equal(3, #m.calls())
    assert.are.equal("completed", h:status())
    assert.are.same({ n = 3 }, h:data().v)
    assert.are.same({ "Call:action", "Call:action", "Call:action" }, h:trace())
    local attempts = {}
    for _, r in ipairs(h:history()) do attempts[#attempts + 1] = r.attempt .. r.status end
    assert.are.same({ "1failed", "2failed", "3completed" }, attempts)
  end)

  it("traces a compensated saga in execution order, compensations in reverse", function()
    env = env_with([[
local saga = require "saga"
local function step(name, fail)
  return { name = name, action = function(ctx) ctx:call("svc", name, {}) if fail then ctx:fail("no " .. name) end end,
           compensate = function(ctx) ctx:call("svc", "Undo" .. name, {}) end, compensate_partial = false }
end
saga.define { name = "Three", steps = { step("A"), step("B"), step("C", true) } }
]], { handlers = false })
    for _, c in ipairs { "A", "B", "C", "UndoA", "UndoB", "UndoC" } do env:mock("svc", c, {}) end
    local h = env:start("Three", {})
    assert.are.equal("compensated", h:status())
    assert.are.same({ "A:action", "B:action", "C:action", "B:compensate", "A:compensate" }, h:trace())
    local order = {}
    for _, c in ipairs(h:calls("svc")) do order[#order + 1] = c.msg.command end
    assert.are.same({ "A", "B", "C", "UndoB", "UndoA" }, order)
    local hist = h:history()
    assert.are.equal("failed", hist[3].status)
    assert.matches("no C", hist[3].error)
  end)

  it("keeps the scripts' participants unless mocked, and handlers = false drops them", function()
    local script = [[
local saga = require "saga"
saga.handle("svc", "Echo", function(p) return { echo = p.v } end)
saga.define { name = "E", steps = { { name = "S", retry = { attempts = 1 },
  action = function(ctx) ctx.data.r = ctx:call("svc", "Echo", { v = 7 }) end } } }
]]
    env = env_with(script)
    local h = env:start("E", {})
    assert.are.equal("completed", h:status())
    assert.are.same({ echo = 7 }, h:data().r)
    env:mock("svc", "Echo", { echo = "mocked" })
    assert.are.same({ echo = "mocked" }, env:start("E", {}):data().r)
    env:mock("svc", "Echo", nil)
    assert.are.same({ echo = 7 }, env:start("E", {}):data().r)
    env:close()
    env = env_with(script, { handlers = false })
    h = env:start("E", {})
    assert.are.equal("compensated", h:status())
    assert.matches("no mock for svc.Echo", h:history()[1].error)
  end)

  it("delivers a signal to a waiting saga; a wait's timeout fires on the virtual clock", function()
    env = env_with([[
local saga = require "saga"
saga.define { name = "Approve", steps = { { name = "Wait", action = function(ctx)
  local p = ctx:wait("approved", { timeout = "1h" })
  ctx.data.by = p and p.by or "nobody"
  ctx.data.at = ctx:now()
end } } }
]])
    local a = env:start("Approve", {})
    local b = env:start("Approve", {})
    assert.are.equal("running", a:status())
    env:advance("10m")
    assert.are.equal("delivered", env:signal(a, "approved", { by = "ann" }))
    assert.are.equal("completed", a:status())
    assert.are.equal("ann", a:data().by)
    assert.are.equal((env:now()) / 1000, a:data().at)
    assert.are.equal("running", b:status())
    env:advance("50m")
    assert.are.equal("completed", b:status())
    assert.are.equal("nobody", b:data().by)
    assert.are.equal(testing.time_ms("2026-01-01T01:00:00Z") / 1000, b:data().at)
    assert.has_error(function() env:signal(a, "approved", {}) end)
  end)

  it("starts one saga per idempotency key", function()
    env = env_with(TWO_STEPS)
    local reserve = env:mock("stock", "Reserve", {})
    env:mock("pay", "Charge", {})
    local h1 = env:start("Two", { sku = "a", amount = 1 }, { key = "order-1" })
    local h2 = env:start("Two", { sku = "a", amount = 1 }, { key = "order-1" })
    assert.are.equal(h1.id, h2.id)
    assert.is_false(h1.existed)
    assert.is_true(h2.existed)
    assert.are.equal(1, #reserve.calls())
    assert.are_not.equal(h1.id, env:start("Two", { sku = "a", amount = 1 }, { key = "order-2" }).id)
  end)

  it("runs a saga deadline, sleeps and the start time on the virtual clock", function()
    env = env_with([[
local saga = require "saga"
saga.define { name = "Slow", timeout = "1m", steps = {
  { name = "Book", action = function(ctx) ctx.data.booked = true end,
    compensate = function(ctx) ctx.data.undone = ctx:now() end },
  { name = "Nap", action = function(ctx) ctx:sleep("2m") end },
  { name = "After", action = function(ctx) ctx.data.after = true end },
} }
saga.define { name = "Short", steps = {
  { name = "Nap", action = function(ctx) ctx:sleep("90s") ctx.data.t1 = ctx:now() end },
} }
]], { start = "2026-03-01T12:00:00+01:00" })
    assert.are.equal(testing.time_ms("2026-03-01T11:00:00Z"), env:now())
    local slow = env:start("Slow", {})
    local short = env:start("Short", {})
    env:advance("59s")
    assert.are.equal("running", slow:status())
    env:advance("1s")
    assert.are.equal("compensated", slow:status())
    assert.are.equal(testing.time_ms("2026-03-01T11:01:00Z") / 1000, slow:data().undone)
    assert.are.same({ "Book:action", "Nap:action", "Book:compensate" }, slow:trace())
    assert.is_nil(slow:data().after)
    assert.are.equal("running", short:status())
    env:advance("30s")
    assert.are.equal("completed", short:status())
    assert.are.equal(testing.time_ms("2026-03-01T11:01:30Z") / 1000, short:data().t1)
  end)
  it("retries a step whose call a mock took and never answered, once its timeout fires", function()
    env = env_with([[
local saga = require "saga"
saga.define { name = "Lost", steps = {
  { name = "Call", timeout = "5s", retry = { attempts = 2, backoff = "fixed", initial = "1s", jitter = false },
    action = function(ctx) ctx.data.v = ctx:call("svc", "Maybe", {}) end },
} }
]])
    local n = 0
    local m = env:mock("svc", "Maybe", function() n = n + 1 if n == 1 then return testing.NO_REPLY end return { n = n } end)
    local h = env:start("Lost", {})
    assert.are.equal("running", h:status())
    assert.are.equal(0, #h:history())
    env:advance("5s")
    assert.are.equal(1, #m.calls())
    assert.are.equal("failed", h:history()[1].status)
    env:advance("1s")
    assert.are.equal("completed", h:status())
    assert.are.equal(2, #m.calls())
    assert.are_not.equal(m.calls()[1].msg.message_id, m.calls()[2].msg.message_id)
  end)

  describe("faults", function()
    local SCRIPT = [[
local saga = require "saga"
saga.define { name = "Order", steps = {
  { name = "Reserve", action = function(ctx) ctx.data.r = ctx:call("stock", "Reserve", {}) end,
    compensate = function(ctx) ctx:call("stock", "Release", {}) end },
  { name = "Charge", action = function(ctx) ctx.data.c = ctx:call("pay", "Charge", { amount = ctx.input.amount }) end },
  { name = "Notify", action = function(ctx) ctx:send("mail", "Send", {}) end },
} }
]]
    local function run(seed, crash_every)
      local e = env_with(SCRIPT)
      local charge = e:mock("pay", "Charge", function(p)
        if p.amount > 10 then error { message = "declined", retryable = false } end
        return { ok = true }
      end)
      e:mock("stock", "Reserve", {})
      e:mock("stock", "Release", {})
      e:mock("mail", "Send", {})
      e:faults { duplicate = 0.3, drop = 0.2, delay = { "10ms", "1s" }, reorder = true, crash_every = crash_every, seed = seed }
      local hs = {}
      for i = 1, 6 do hs[i] = e:start("Order", { amount = i * 3 }) end
      e:advance("5m")
      local out = {}
      for i, h in ipairs(hs) do
        out[i] = h:status() .. " " .. table.concat(h:trace(), ",")
      end
      return e, out, charge
    end

    it("keep each saga's outcome and trace, one handler run per message id, and repeat from the seed", function()
      local t0 = os.clock()
      local e, out, charge = run(7, 0)
      env = e
      for i = 1, 6 do
        if i * 3 > 10 then
          assert.are.equal("compensated Reserve:action,Charge:action,Reserve:compensate", out[i])
        else
          assert.are.equal("completed Reserve:action,Charge:action,Notify:action", out[i])
        end
      end
      local st = e:stats()
      assert.is_true(st.duplicated > 0 and st.dropped > 0 and st.delayed > 0, "faults were injected")
      local seen = {}
      for _, c in ipairs(e:calls()) do
        assert.is_nil(seen[c.msg.message_id], "a mock ran twice for " .. c.msg.message_id)
        seen[c.msg.message_id] = true
      end
      assert.are.equal(6, #charge.calls())
      assert.are.equal(7, e:seed())
      local again, out2 = run(7, 0)
      assert.are.same(out, out2)
      assert.are.same(e:stats().delivered, again:stats().delivered)
      again:close()
      assert.is_true(os.clock() - t0 < 5)
    end)

    it("crash the host at random points; the sagas go on from the store", function()
      for seed = 1, 5 do
        local e, out = run(seed, 2)
        assert.is_true(e:stats().crashes > 0, "seed " .. seed .. ": no crash")
        for i = 1, 6 do
          local want = i * 3 > 10 and "compensated Reserve:action,Charge:action,Reserve:compensate"
            or "completed Reserve:action,Charge:action,Notify:action"
          assert.are.equal(want, out[i], "seed " .. seed)
        end
        e:close()
      end
    end)
  end)

  it("crashes on demand: what was not committed is lost, a sleeping saga wakes after the restart", function()
    env = env_with([[
local saga = require "saga"
saga.define { name = "Nap", steps = {
  { name = "Sleep", action = function(ctx) ctx:sleep("1h") end },
  { name = "Call", action = function(ctx) ctx.data.v = ctx:call("svc", "Do", {}) end },
} }
]])
    local m = env:mock("svc", "Do", { done = true })
    local h = env:start("Nap", {})
    env:crash()
    assert.are.equal(1, env:stats().crashes)
    assert.are.equal("running", h:status())
    env:advance("1h")
    assert.are.equal("completed", h:status())
    assert.are.same({ done = true }, h:data().v)
    assert.are.equal(1, #m.calls())
  end)

  it("says which fault seed a failed check ran with", function()
    env = env_with(TWO_STEPS)
    env:faults { duplicate = 0.5, seed = 4242 }
    assert.are.equal(4242, env:seed())
    local err = select(2, pcall(env.check, env, function() error("boom") end))
    assert.matches("boom", tostring(err))
    assert.matches("fault seed 4242", tostring(err))
    assert.has_no_error(function() env:check(function(e) assert.are.equal(4242, e:seed()) end) end)
  end)
end)
