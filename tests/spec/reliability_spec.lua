-- Reliability: retry policies, timeouts, circuit breakers, quarantine and operator verbs, script limits.
local H = require "helper"

local function ms(iso)
  -- "2026-11-26T09:33:07.812Z" -> ms since an arbitrary origin (same day arithmetic is enough here)
  local h, m, s, f = iso:match("T(%d+):(%d+):(%d+)%.(%d+)Z")
  return ((tonumber(h) * 60 + tonumber(m)) * 60 + tonumber(s)) * 1000 + tonumber(f)
end

local function events(s)
  local out = {}
  for _, st in ipairs(s.steps) do
    if st.phase == "saga" then out[#out + 1] = st end
  end
  return out
end

local POLICIES = [[
local saga = require "saga"
saga.define {
  name = "Fixed",
  steps = { { name = "S", retry = { attempts = 3, backoff = "fixed", initial = "200ms", jitter = false },
              action = function(ctx) error("nope " .. ctx.attempt) end } },
}
saga.define {
  name = "Expo",
  steps = { { name = "S", retry = { attempts = 3, backoff = "exponential", initial = "100ms", multiplier = 3, max = "10s", jitter = false },
              action = function(ctx) error("nope") end } },
}
saga.define {
  name = "NoRetry",
  steps = { { name = "S", retry = { attempts = 5 }, action = function(ctx) ctx:call("biz", "Reject", {}) end } },
}
saga.define {
  name = "StepTimeout",
  steps = {
    { name = "First", action = function(ctx) end, compensate = function(ctx) ctx.data.undone = true end },
    { name = "Slow", timeout = "300ms", retry = { attempts = 2, initial = "10ms" },
      action = function(ctx) ctx:sleep("5s") end },
  },
}
saga.define {
  name = "SagaTimeout",
  timeout = "600ms",
  steps = {
    { name = "First", action = function(ctx) end, compensate = function(ctx) ctx.data.undone = true end },
    { name = "Long", action = function(ctx) ctx:sleep("10s") end },
  },
}
saga.handle("biz", "Reject", function() error { message = "not allowed", retryable = false } end)
saga.define {
  name = "BadName",
  steps = { { name = "S", retry = { attempts = 1 }, action = function(ctx) ctx:call("billing.eu", "Charge", {}) end } },
}
]]

describe("retry policies and timeouts", function()
  local host
  setup(function()
    host = H.host { name = "policy", scripts = { ["p.lua"] = POLICIES } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("fixed backoff: three attempts, 200 ms apart, as recorded in history", function()
    local s = host:wait(host:start_saga("Fixed", {}))
    assert.are.equal("compensated", s.status)
    assert.are.equal(3, #s.steps)
    for i = 2, 3 do
      local gap = ms(s.steps[i].started_at) - ms(s.steps[i - 1].finished_at)
      assert.is_true(gap >= 195 and gap < 1000, "gap " .. gap)
      assert.are.equal(i, s.steps[i].attempt)
    end
  end)

  it("exponential backoff: delays grow by the multiplier", function()
    local s = host:wait(host:start_saga("Expo", {}))
    local g1 = ms(s.steps[2].started_at) - ms(s.steps[1].finished_at)
    local g2 = ms(s.steps[3].started_at) - ms(s.steps[2].finished_at)
    assert.is_true(g1 >= 95 and g1 < 600, "first delay " .. g1)
    assert.is_true(g2 >= 295 and g2 < 1200, "second delay " .. g2)
  end)

  it("a non-retryable error reply gives up at once", function()
    local s = host:wait(host:start_saga("NoRetry", {}))
    assert.are.equal("compensated", s.status)
    assert.are.equal(1, #s.steps)
    assert.matches("biz.Reject: not allowed", s.error)
  end)

  it("a service name that cannot be a routing key is an error in the step, with its line", function()
    local s = host:wait(host:start_saga("BadName", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("p.lua:%d+: ctx:call: service must be a name of letters, digits", s.steps[1].error)
  end)

  it("a step attempt that takes too long fails as a retryable timeout", function()
    local s = host:wait(host:start_saga("StepTimeout", {}))
    assert.are.equal("compensated", s.status)
    assert.are.same({ "First:action:completed", "Slow:action:failed", "Slow:action:failed", "First:compensate:completed" }, H.history(s))
    assert.matches("timeout", s.steps[2].error)
    assert.is_true(s.data.undone)
  end)

  it("the saga deadline stops the forward path and compensates", function()
    local s = host:wait(host:start_saga("SagaTimeout", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("saga timed out", s.error)
    local ev = events(s)
    assert.are.equal(1, #ev)
    assert.are.equal("saga_timeout", ev[1].event)
    assert.is_true(s.data.undone)
  end)
end)

local OPS = [[
local saga = require "saga"
saga.define {
  name = "Op",
  compensate_retry = { attempts = 2, initial = "10ms", backoff = "fixed" },
  steps = {
    { name = "A", action = function(ctx) ctx:call("ledger", "Do", { step = "A" }) end,
      compensate = function(ctx) ctx:call("ledger", "Undo", { step = "A" }) end },
    { name = "B", action = function(ctx) ctx:call("ledger", "Do", { step = "B" }) end,
      compensate = function(ctx) ctx:call("ledger", "Undo", { step = "B", fragile = ctx.input.fragile }) end },
    { name = "C", action = function(ctx)
        if ctx.input.wait then ctx:sleep(ctx.input.wait) end
        if ctx.input.fail then ctx:fail("C refused") end
      end },
  },
}
]]
local LEDGER_BROKEN = [[
local saga = require "saga"
saga.handle("ledger", "Do", function(p) return { did = p.step } end)
saga.handle("ledger", "Undo", function(p)
  if p.fragile then error("ledger is read-only") end
  return { undid = p.step }
end)
]]
local LEDGER_FIXED = [[
local saga = require "saga"
saga.handle("ledger", "Do", function(p) return { did = p.step } end)
saga.handle("ledger", "Undo", function(p) return { undid = p.step, fixed = true } end)
]]

describe("quarantine and operator verbs", function()
  local host
  before_each(function()
    host = H.host { name = "ops", scripts = { ["op.lua"] = OPS, ["ledger.lua"] = LEDGER_BROKEN } }
    host:start()
  end)
  after_each(function() host:stop() end)

  local function quarantined()
    local s = host:wait(host:start_saga("Op", { fail = true, fragile = true }))
    assert.are.equal("compensation_failed", s.status)
    return s
  end

  it("a compensation that exhausts its policy is quarantined with what remains to undo", function()
    local s = quarantined()
    assert.are.same({ "A:action:completed", "B:action:completed", "C:action:failed",
      "B:compensate:failed", "B:compensate:failed" }, H.history(s))
    assert.matches("compensation of step B failed after 2 attempt", s.error)
    assert.matches("ledger is read%-only", s.error)
    assert.are.same({ { step = 2, name = "B" }, { step = 1, name = "A" } }, s.pending_compensations)
    -- nothing else runs for it
    H.sleep(0.5)
    assert.are.equal(5, #host:saga(s.id).steps)
  end)

  it("retry after the cause is fixed: the compensation runs again and the saga completes compensating", function()
    local s = quarantined()
    host:script("ledger.lua", LEDGER_FIXED)
    H.sleep(1)
    local code, body = host:post("/v1/sagas/" .. s.id .. "/retry", { by = "alice" })
    assert.are.equal(200, code, body.error)
    local done = host:wait(s.id, "compensated")
    local hist = H.history(done)
    assert.are.equal("B:compensate:completed", hist[#hist - 1])
    assert.are.equal("A:compensate:completed", hist[#hist])
    local ev = events(done)
    assert.are.equal("operator_retry", ev[1].event)
    assert.matches("by alice", ev[1].error)
    -- only a compensation_failed saga can be retried
    code = host:post("/v1/sagas/" .. s.id .. "/retry", {})
    assert.are.equal(409, code)
  end)

  it("an operator retry gets a fresh retry budget, kept across a kill -9", function()
    host:script("slow.lua", [[
local saga = require "saga"
saga.define {
  name = "SlowUndo",
  compensate_retry = { attempts = 3, initial = "800ms", backoff = "fixed", jitter = false },
  steps = {
    { name = "A", action = function(ctx) end, compensate = function(ctx) error("still broken") end },
    { name = "B", action = function(ctx) ctx:fail("B refused") end },
  },
}
]])
    H.sleep(1)
    local id = host:start_saga("SlowUndo", {})
    assert.are.equal("compensation_failed", host:wait(id).status)
    local code = host:post("/v1/sagas/" .. id .. "/retry", { by = "dave" })
    assert.are.equal(200, code)
    -- attempt 4 fails; kill the host while it waits to make attempt 5
    local deadline = os.time() + 10 * H.slow
    repeat
      local s = host:saga(id)
      local last = s.steps[#s.steps]
      if last.phase == "compensate" and last.attempt == 4 and last.status == "failed" then break end
      H.sleep(0.05)
    until os.time() > deadline
    host:kill9()
    host:start()
    local s = host:wait(id, nil, 20)
    assert.are.equal("compensation_failed", s.status)
    local attempts = {}
    for _, st in ipairs(s.steps) do
      if st.phase == "compensate" then attempts[#attempts + 1] = st.attempt end
    end
    assert.are.same({ 1, 2, 3, 4, 5, 6 }, attempts)
  end)

  it("resolve needs a note and records it", function()
    local s = quarantined()
    -- the plan agrees with what compensate accepts: not abortable, compensate 409, and what is left to undo
    local code, plan = host:get("/v1/sagas/" .. s.id .. "/plan")
    assert.are.equal(200, code)
    assert.are.equal("compensation_failed", plan.status)
    assert.is_false(plan.abortable)
    assert.is_true(#plan.compensations >= 1)
    code = host:post("/v1/sagas/" .. s.id .. "/compensate", { reason = "stop it" })
    assert.are.equal(409, code)
    local body
    code, body = host:post("/v1/sagas/" .. s.id .. "/resolve", {})
    assert.are.equal(400, code)
    assert.matches("note is required", body.error)
    code, body = host:post("/v1/sagas/" .. s.id .. "/resolve", { note = "refunded by hand, ticket 42", by = "bob" })
    assert.are.equal(200, code)
    assert.are.equal("resolved", body.status)
    local ev = events(body)
    assert.are.equal("operator_resolve", ev[1].event)
    assert.matches("by bob: refunded by hand, ticket 42", ev[1].error)
    local _, list = host:get("/v1/sagas?status=resolved")
    assert.are.equal(s.id, list.sagas[1].id)
  end)

  it("compensate now stops a running saga and undoes its completed steps", function()
    local id = host:start_saga("Op", { wait = "20s" })
    host:wait(id, "running")
    H.sleep(0.3)
    local code, plan = host:get("/v1/sagas/" .. id .. "/plan")
    assert.are.equal(200, code)
    assert.is_true(plan.abortable)
    assert.are.same({ { step = 2, name = "B" }, { step = 1, name = "A" } }, plan.compensations)
    local c2, body = host:post("/v1/sagas/" .. id .. "/compensate", { reason = "customer cancelled", by = "carol" })
    assert.are.equal(200, c2, body.error)
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "A:action:completed", "B:action:completed", "C:action:failed",
      "B:compensate:completed", "A:compensate:completed" }, H.history(s))
    assert.matches("customer cancelled", s.error)
    assert.matches("by carol: customer cancelled", events(s)[1].error)
    -- a finished saga cannot be compensated, and its plan is empty
    code = host:post("/v1/sagas/" .. id .. "/compensate", { reason = "again" })
    assert.are.equal(409, code)
    code, plan = host:get("/v1/sagas/" .. id .. "/plan")
    assert.is_false(plan.abortable)
    assert.are.same({}, plan.compensations)
    code = host:post("/v1/sagas/00000000-0000-4000-8000-000000000000/compensate", {})
    assert.are.equal(404, code)
  end)
end)

local BREAKER = [[
local saga = require "saga"
saga.define {
  name = "UseFlaky",
  steps = { { name = "Call", retry = { attempts = 1 }, action = function(ctx)
      ctx.data.r = ctx:call("flaky", "Go", { fail = ctx.input.fail })
    end } },
}
saga.handle("flaky", "Go", function(p)
  if p.fail then error { message = "flaky is down", retryable = true } end
  return { ok = true }
end)
]]

describe("circuit breaker", function()
  local host
  setup(function()
    host = H.host { name = "breaker", scripts = { ["b.lua"] = BREAKER },
      args = "--breaker-failure-rate 0.5 --breaker-min-calls 4 --breaker-open 1500ms" }
    host:start()
  end)
  teardown(function() host:stop() end)

  local function breaker(service)
    local _, body = host:get("/v1/breakers")
    for _, b in ipairs(body.breakers) do if b.service == service then return b end end
  end

  it("opens after failures, parks callers without spending attempts, and closes after a good probe", function()
    for _ = 1, 4 do
      local s = host:wait(host:start_saga("UseFlaky", { fail = true }))
      assert.are.equal("compensated", s.status)
    end
    local b = breaker("flaky")
    assert.are.equal("open", b.state)
    assert.are.equal(1, b.opens)
    -- a caller now parks instead of failing
    local id = host:start_saga("UseFlaky", { fail = false })
    H.sleep(0.3)
    local s = host:saga(id)
    assert.are.equal("running", s.status)
    assert.are.same({ "Call:action:running" }, H.history(s))
    assert.are.equal(1, breaker("flaky").parked)
    -- after the open period the parked saga is the probe; it succeeds and the breaker closes
    s = host:wait(id, nil, 10)
    assert.are.equal("completed", s.status)
    assert.are.same({ "Call:action:completed" }, H.history(s))
    assert.are.equal(1, s.steps[1].attempt)
    b = breaker("flaky")
    assert.are.equal("closed", b.state)
    assert.are.equal(0, b.parked)
  end)
end)

describe("circuit breaker set by a script", function()
  local host
  setup(function()
    host = H.host { name = "breaker2", scripts = { ["b.lua"] = BREAKER .. [[
saga.breaker("flaky", { failure_rate = 1, min_calls = 2, open_for = "600ms" })
]] } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("uses the script's settings instead of the host's", function()
    -- the host's defaults (10 calls) would keep it closed after 2 failures
    for _ = 1, 2 do
      assert.are.equal("compensated", host:wait(host:start_saga("UseFlaky", { fail = true })).status)
    end
    local _, body = host:get("/v1/breakers")
    local b
    for _, x in ipairs(body.breakers) do if x.service == "flaky" then b = x end end
    assert.are.equal("open", b.state)
    assert.are.equal(2, b.min_calls)
    assert.are.equal(600, b.open_ms)
    assert.are.equal(10, body.min_calls) -- the host's own setting is unchanged
    assert.are.equal("completed", host:wait(host:start_saga("UseFlaky", { fail = false }), nil, 10).status)
  end)
end)

local LIMITS = [[
local saga = require "saga"
saga.define { name = "Runaway", steps = { { name = "Spin", retry = { attempts = 1 }, action = function(ctx)
  local n = 0
  while true do n = n + 1 end
end } } }
saga.define { name = "Hog", steps = { { name = "Eat", retry = { attempts = 1 }, action = function(ctx)
  local t = {}
  for i = 1, 1e9 do t[i] = string.rep("x", 64) .. i end
end } } }
saga.define { name = "BigPayload", steps = { { name = "Send", action = function(ctx)
  ctx:call("sink", "Take", { blob = string.rep("y", 10000) })
end } } }
saga.define { name = "BigData", steps = { { name = "Grow", action = function(ctx)
  ctx.data.blob = string.rep("z", 10000)
end } } }
saga.handle("sink", "Take", function() return {} end)
]]

describe("script limits", function()
  local host
  setup(function()
    host = H.host { name = "limits", scripts = { ["l.lua"] = LIMITS }, copy = { "sagas/*.lua" },
      args = "--lua-budget 20000000 --lua-step-memory 16 --max-payload 4096" }
    host:start()
  end)
  teardown(function() host:stop() end)

  local order = { order_id = "o", sku = "book", qty = 1, amount = 3, card = "ok" }

  it("a runaway step fails with the script line; other sagas complete meanwhile", function()
    local bad = host:start_saga("Runaway", {})
    local good = {}
    for i = 1, 5 do good[i] = host:start_saga("OrderProcessing", order) end
    local s = host:wait(bad)
    assert.are.equal("compensated", s.status)
    assert.matches("l.lua:4: instruction budget exceeded", s.steps[1].error)
    for _, id in ipairs(good) do assert.are.equal("completed", host:wait(id).status) end
    local code = host:get("/healthz")
    assert.are.equal(200, code)
  end)

  it("a memory-hungry step fails alone", function()
    local bad = host:start_saga("Hog", {})
    local good = {}
    for i = 1, 5 do good[i] = host:start_saga("OrderProcessing", order) end
    local s = host:wait(bad)
    assert.are.equal("compensated", s.status)
    assert.matches("memory limit exceeded", s.steps[1].error)
    for _, id in ipairs(good) do assert.are.equal("completed", host:wait(id).status) end
  end)

  it("payloads and ctx.data over the limit are errors that say so", function()
    local s = host:wait(host:start_saga("BigPayload", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("payload is %d+ bytes, over the limit of 4096 bytes", s.error)
    assert.are.equal(1, #s.steps) -- not retried: it cannot get smaller
    s = host:wait(host:start_saga("BigData", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("ctx.data is %d+ bytes, over the limit of 4096 bytes", s.error)
  end)
end)
