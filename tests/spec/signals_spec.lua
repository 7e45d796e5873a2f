-- Signals: ctx:wait(name [, {timeout}]) and POST /v1/sagas/{id}/signals/{name} (and `sagahost signal`):
-- before and after the wait, timeouts, idempotency keys, order, kill -9 while parked and while kept.
local H = require "helper"

local SCRIPT = [[
local saga = require "saga"
saga.define {
  name = "Order",
  key = "order_id",
  steps = {
    { name = "Reserve", action = function(ctx)
        if ctx.input.sleep then ctx:sleep(ctx.input.sleep) end
        ctx.data.reserved = true
      end,
      compensate = function(ctx) ctx.data.released = true end },
    { name = "AwaitPayment", action = function(ctx)
        local got = {}
        for i = 1, ctx.input.waits or 1 do
          local p = ctx:wait("payment_confirmed", ctx.input.timeout and { timeout = ctx.input.timeout } or nil)
          if p == nil then
            got[#got + 1] = "timeout"
            if ctx.input.fail_on_timeout then ctx:fail("payment not confirmed in time") end
          else
            got[#got + 1] = p
          end
        end
        ctx.data.got = got
      end },
    { name = "Ship", action = function(ctx) ctx.data.shipped = true end },
  },
}
saga.define {
  name = "Flaky",
  retry = { attempts = 2, backoff = "fixed", initial = "100ms" },
  steps = {
    { name = "WaitThenFail", action = function(ctx)
        local p = ctx:wait("go")
        if ctx.attempt == 1 then error("transient failure after the signal") end
        ctx.data.got, ctx.data.attempt = p, ctx.attempt
      end },
  },
}
]]

-- waits until the saga is parked in a ctx:wait (its journal row says so), within a bound
local function wait_parked(host, id)
  local deadline = os.time() + 10 * H.slow
  while os.time() <= deadline do
    local n = H.sql(host.db, "SELECT count(*) FROM journal WHERE saga_id = '" .. id .. "' AND kind = 'wait' AND done = 0")
    if tonumber(n) == 1 then return end
    H.sleep(0.05)
  end
  error("saga " .. id .. " never parked in ctx:wait:\n" .. host:log())
end

local function signal(host, id, body, key, name)
  return host:post("/v1/sagas/" .. id .. "/signals/" .. (name or "payment_confirmed"), body,
    key and { ["Idempotency-Key"] = key } or nil)
end

local function events(s)
  local out = {}
  for _, st in ipairs(s.steps) do
    if st.phase == "saga" then out[#out + 1] = st.event .. ":" .. tostring(st.error) end
  end
  return out
end

describe("signals", function()
  local host
  before_each(function()
    host = H.host { name = "signals", scripts = { ["order.lua"] = SCRIPT } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("a signal sent while the step waits is delivered: ctx:wait returns its payload", function()
    local id = host:start_saga("Order", { order_id = "o-1" })
    wait_parked(host, id)
    local code, body = signal(host, id, { amount = 42, ref = "pay-1" })
    assert.equal(202, code)
    assert.same({ id = id, signal = "payment_confirmed", outcome = "delivered" }, body)
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ { amount = 42, ref = "pay-1" } }, s.data.got)
    assert.is_true(s.data.shipped)
    -- the history shows it came and was taken
    local ev = events(s)
    assert.same({ "signal_received:payment_confirmed (http)", "signal_delivered:payment_confirmed" }, ev)
  end)

  it("a signal sent before the wait (during an earlier ctx:sleep) is kept and taken by the wait", function()
    local id = host:start_saga("Order", { order_id = "o-2", sleep = "1500ms" })
    local code, body = signal(host, id, { amount = 7 })
    assert.equal(202, code)
    assert.equal("kept", body.outcome)
    assert.equal("running", host:saga(id).status) -- still sleeping in Reserve
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ { amount = 7 } }, s.data.got)
  end)

  it("a signal without a body delivers {}; the CLI sends one with a payload and a key", function()
    local id = host:start_saga("Order", { order_id = "o-3", waits = 2 })
    wait_parked(host, id)
    local code, body = host:post("/v1/sagas/" .. id .. "/signals/payment_confirmed")
    assert.equal(202, code)
    assert.equal("delivered", body.outcome)
    local rc, out, err = H.cli("signal " .. id .. " payment_confirmed '{\"via\":\"cli\"}' --key k-cli", host.url)
    assert.equal(0, rc, err)
    local ans = require("cjson").decode(out)
    assert.equal(id, ans.id)
    assert.equal("payment_confirmed", ans.signal)
    assert.is_truthy(ans.outcome == "delivered" or ans.outcome == "kept")
    local s = host:wait(id)
    assert.same({ {}, { via = "cli" } }, s.data.got)
    -- the same key again through the CLI: accepted, not delivered again (the saga has finished)
    rc, out, err = H.cli("signal " .. id .. " payment_confirmed '{\"via\":\"cli\"}' --key k-cli", host.url)
    assert.equal(0, rc, err)
    assert.equal("duplicate", require("cjson").decode(out).outcome)
    -- a usage error costs no round trip
    rc, out, err = H.cli("signal " .. id, host.url)
    assert.equal(2, rc)
    assert.matches("NAME", err)
    rc, out, err = H.cli("signal " .. id .. " payment_confirmed '{nope'", host.url)
    assert.equal(2, rc)
    assert.matches("not valid JSON", err)
  end)

  it("timeout: ctx:wait returns nil and the saga goes on, or compensates as its script says", function()
    local t0 = H.now()
    local id = host:start_saga("Order", { order_id = "o-4", timeout = "1s" })
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ "timeout" }, s.data.got)
    assert.is_true(H.now() - t0 >= 1)
    local ev = events(s)
    assert.same({ "signal_wait_timed_out:payment_confirmed" }, ev)

    local id2 = host:start_saga("Order", { order_id = "o-5", timeout = "500ms", fail_on_timeout = true })
    local s2 = host:wait(id2)
    assert.equal("compensated", s2.status)
    assert.is_true(s2.data.released)
    assert.matches("payment not confirmed in time", s2.error)
    -- a signal after the end is refused clearly
    local code, body = signal(host, id2, { late = true })
    assert.equal(409, code)
    assert.matches("is compensated", body.error)
  end)

  it("the same Idempotency-Key twice: the second is accepted but not delivered (a second wait times out)", function()
    local id = host:start_saga("Order", { order_id = "o-6", waits = 2, timeout = "1500ms" })
    wait_parked(host, id)
    local code, body = signal(host, id, { n = 1 }, "pay-key-1")
    assert.equal(202, code)
    assert.equal("delivered", body.outcome)
    code, body = signal(host, id, { n = 1 }, "pay-key-1")
    assert.equal(200, code)
    assert.equal("duplicate", body.outcome)
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ { n = 1 }, "timeout" }, s.data.got)
    -- after the end: the repeat is still answered as a repeat, a new key is refused
    code, body = signal(host, id, { n = 1 }, "pay-key-1")
    assert.equal(200, code)
    assert.equal("duplicate", body.outcome)
    code = signal(host, id, { n = 2 }, "pay-key-2")
    assert.equal(409, code)
  end)

  it("two signals of one name are delivered one per wait, in the order they came", function()
    local id = host:start_saga("Order", { order_id = "o-7", sleep = "1s", waits = 2 })
    assert.equal("kept", select(2, signal(host, id, { n = 1 }, "a")).outcome)
    assert.equal("kept", select(2, signal(host, id, { n = 2 }, "b")).outcome)
    -- another name is kept for another wait, not given to this one
    assert.equal("kept", select(2, signal(host, id, { other = true }, nil, "refund_requested")).outcome)
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ { n = 1 }, { n = 2 } }, s.data.got)
  end)

  it("kill -9 while parked in a wait, then the signal: the saga completes and the step's earlier work is kept", function()
    local id = host:start_saga("Order", { order_id = "o-8" })
    wait_parked(host, id)
    host:kill9()
    host:start()
    local code, body = signal(host, id, { after = "restart" })
    assert.equal(202, code)
    assert.equal("delivered", body.outcome)
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ { after = "restart" } }, s.data.got)
  end)

  it("a wait's timeout survives kill -9: after the restart it still returns nil at its due time", function()
    local t0 = H.now()
    local id = host:start_saga("Order", { order_id = "o-8t", timeout = "2s" })
    wait_parked(host, id)
    host:kill9()
    host:start()
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ "timeout" }, s.data.got)
    assert.is_true(H.now() - t0 >= 2, "the timeout fired early")
  end)

  it("a signal taken by a wait comes back from the journal after kill -9 (not taken twice)", function()
    -- two waits: the first takes its signal, the step parks in the second, kill -9, then the second signal
    local id = host:start_saga("Order", { order_id = "o-9", waits = 2 })
    wait_parked(host, id)
    assert.equal("delivered", select(2, signal(host, id, { n = 1 })).outcome)
    local deadline = os.time() + 10
    while tonumber(H.sql(host.db, "SELECT count(*) FROM journal WHERE saga_id = '" .. id .. "' AND kind = 'wait'")) < 2 do
      assert.is_true(os.time() <= deadline, "the second wait never parked")
      H.sleep(0.05)
    end
    host:kill9()
    host:start()
    assert.equal("delivered", select(2, signal(host, id, { n = 2 })).outcome)
    local s = host:wait(id)
    assert.same({ { n = 1 }, { n = 2 } }, s.data.got)
  end)

  it("a signal kept for a saga that had not reached its wait survives kill -9", function()
    local id = host:start_saga("Order", { order_id = "o-10", sleep = "2s" })
    assert.equal("kept", select(2, signal(host, id, { kept = "across a crash" })).outcome)
    host:kill9()
    host:start()
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ { kept = "across a crash" } }, s.data.got)
  end)

  it("an attempt that fails after its wait took a signal gives it back: the retry's wait takes it again", function()
    local id = host:start_saga("Flaky", {})
    wait_parked(host, id)
    assert.equal("delivered", select(2, signal(host, id, { n = 1 }, "k-flaky", "go")).outcome)
    local s = host:wait(id)
    assert.equal("completed", s.status)
    assert.same({ n = 1 }, s.data.got)
    assert.equal(2, s.data.attempt)
    assert.same({ "WaitThenFail:action:failed", "WaitThenFail:action:completed" }, H.history(s))
    local ev = events(s)
    assert.same({ "signal_received:go (http)", "signal_delivered:go", "signal_given_back:go", "signal_delivered:go" }, ev)
    -- given back, it kept its key: a repeat is still a repeat
    local code, body = signal(host, id, { n = 1 }, "k-flaky", "go")
    assert.equal(200, code)
    assert.equal("duplicate", body.outcome)
  end)

  it("refuses an unknown saga (404), bad JSON and bad names (400), and GET (405)", function()
    local code, body = signal(host, "00000000-0000-0000-0000-000000000000", { x = 1 })
    assert.equal(404, code)
    assert.matches("no saga", body.error)
    local id = host:start_saga("Order", { order_id = "o-11", timeout = "2s" })
    code, body = host:post("/v1/sagas/" .. id .. "/signals/payment_confirmed", "{not json")
    assert.equal(400, code)
    assert.matches("malformed JSON", body.error)
    code, body = host:post("/v1/sagas/" .. id .. "/signals/9lives", { x = 1 })
    assert.equal(400, code)
    assert.matches("not a signal name", body.error)
    code = host:get("/v1/sagas/" .. id .. "/signals/payment_confirmed")
    assert.equal(405, code)
    -- nothing of it reached the saga
    local s = host:wait(id)
    assert.same({ "timeout" }, s.data.got)
  end)

  it("with --auth, sending a signal needs the role start (read is 403)", function()
    host:stop()
    H.write(host.dir .. "/tokens", "rita read read-token-0123456789abcdef\nsam start start-token-0123456789abcdef\n")
    host:start("--auth " .. host.dir .. "/tokens")
    local function as(token) return { Authorization = "Bearer " .. token } end
    local code, body = host:request("POST", "/v1/sagas/Order", '{"order_id":"o-auth"}', as("start-token-0123456789abcdef"))
    assert.equal(201, code)
    local id = body.id
    code, body = host:request("POST", "/v1/sagas/" .. id .. "/signals/payment_confirmed", "{}", as("read-token-0123456789abcdef"))
    assert.equal(403, code)
    assert.matches("sending a signal needs role start", body.error)
    code = host:request("POST", "/v1/sagas/" .. id .. "/signals/payment_confirmed", "{}")
    assert.equal(401, code)
    code, body = host:request("POST", "/v1/sagas/" .. id .. "/signals/payment_confirmed", '{"ok":1}', as("start-token-0123456789abcdef"))
    assert.equal(202, code)
    local deadline = os.time() + 20
    repeat
      code, body = host:request("GET", "/v1/sagas/" .. id, nil, as("read-token-0123456789abcdef"))
      if body.status == "completed" then break end
      H.sleep(0.05)
    until os.time() > deadline
    assert.equal("completed", body.status)
    assert.same({ { ok = 1 } }, body.data.got)
  end)
end)
