-- Signals over AMQP, sent with pika (tests/participants/amqp_tool.py) from docs/protocol.md alone:
-- exchange saga.commands, routing key saga.signal, header signal-name, the saga by saga-id or by
-- saga-type + saga-key, message_id the idempotency key; malformed ones dead-lettered to
-- saga.svc.saga.dlq with x-saga-error. With two hosts on PostgreSQL, a signal reaching the host that
-- does not own the saga still reaches it.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
saga.define {
  name = "Order",
  key = "order_id",
  steps = {
    { name = "AwaitPayment", action = function(ctx)
        local got = {}
        for i = 1, ctx.input.waits or 1 do
          local p = ctx:wait("payment_confirmed", ctx.input.timeout and { timeout = ctx.input.timeout } or nil)
          got[#got + 1] = p == nil and "timeout" or p
        end
        ctx.data.got = got
      end },
  },
}
]]

local function wait_parked(host, id, n)
  local deadline = os.time() + 15 * H.slow
  while os.time() <= deadline do
    local c = H.sql(host.db, "SELECT count(*) FROM journal WHERE saga_id = '" .. id .. "' AND kind = 'wait' AND done = 0")
    if tonumber(c) == (n or 1) then return end
    H.sleep(0.05)
  end
  error("saga " .. id .. " never parked in ctx:wait:\n" .. host:log())
end

-- a signal as docs/protocol.md says: through saga.commands with routing key saga.signal
local function send(headers, body, message_id)
  H.amqp_tool("publish", "saga.signal", cjson.encode {
    exchange = "saga.commands", body = body or "{}", message_id = message_id or ("sig-" .. H.uid()), headers = headers })
end

local function dlq_get()
  local got = cjson.decode(H.amqp_tool("get", "saga.svc.saga.dlq", tostring(15 * H.slow)))
  assert.is_table(got, "nothing arrived in saga.svc.saga.dlq")
  return got
end

describe("signals over AMQP", function()
  local host, hid
  setup(function()
    H.broker_up()
    pcall(H.amqp_tool, "delete", "saga.svc.saga", "saga.svc.saga.dlq") -- what an earlier run left
    hid = "spec-sig-" .. H.uid()
    host = H.host { name = "amqp-signals", amqp = true, host_id = hid, scripts = { ["order.lua"] = SCRIPT } }
    host:start_amqp()
  end)
  teardown(function()
    if host then host:stop() end
    H.delete_queues({ "saga" }, { hid })
  end)

  it("by saga id: the waiting step gets the payload", function()
    local id = host:start_saga("Order", { order_id = "a-" .. H.uid() })
    wait_parked(host, id)
    send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, '{"amount":12,"via":"amqp"}')
    local s = host:wait(id, nil, 30)
    assert.equal("completed", s.status)
    assert.same({ { amount = 12, via = "amqp" } }, s.data.got)
    local seen = false
    for _, st in ipairs(s.steps) do
      if st.event == "signal_received" and st.error == "payment_confirmed (amqp)" then seen = true end
    end
    assert.is_true(seen, "no signal_received entry in the history")
  end)

  it("by saga type and business key: sent before the wait, kept and taken by it", function()
    local key = "k-" .. H.uid()
    local id = host:start_saga("Order", { order_id = key, waits = 1 })
    send({ ["saga-type"] = "Order", ["saga-key"] = key, ["signal-name"] = "payment_confirmed" }, '{"by":"key"}')
    local s = host:wait(id, nil, 30)
    assert.equal("completed", s.status)
    assert.same({ { by = "key" } }, s.data.got)
  end)

  it("a message sent twice with one message_id is delivered once (the second wait times out)", function()
    local id = host:start_saga("Order", { order_id = "d-" .. H.uid(), waits = 2, timeout = "3s" })
    wait_parked(host, id)
    local mid = "pay-" .. H.uid()
    send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, '{"n":1}', mid)
    send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, '{"n":1}', mid)
    local s = host:wait(id, nil, 30)
    assert.equal("completed", s.status)
    assert.same({ { n = 1 }, "timeout" }, s.data.got)
    -- neither copy was dead-lettered
    assert.equal("null", (H.amqp_tool("get", "saga.svc.saga.dlq"):gsub("%s+$", "")))
  end)

  describe("a malformed signal is dead-lettered with x-saga-error", function()
    it("naming no saga", function()
      send({ ["signal-name"] = "payment_confirmed" }, "{}", "m-nosaga")
      local got = dlq_get()
      assert.equal("m-nosaga", got.message_id)
      assert.matches("names no saga", got.headers["x-saga-error"])
      assert.equal("saga.signal", got.headers["x-saga-original-routing-key"])
      assert.equal("saga.commands", got.headers["x-saga-original-exchange"])
    end)

    it("naming an unknown saga (by id, by type + key)", function()
      send({ ["saga-id"] = "00000000-0000-0000-0000-000000000000", ["signal-name"] = "payment_confirmed" }, "{}", "m-unknown")
      local got = dlq_get()
      assert.equal("m-unknown", got.message_id)
      assert.matches("no saga with id", got.headers["x-saga-error"])
      send({ ["saga-type"] = "Order", ["saga-key"] = "nobody", ["signal-name"] = "payment_confirmed" }, "{}", "m-nokey")
      got = dlq_get()
      assert.equal("m-nokey", got.message_id)
      assert.matches("no saga of type 'Order' with key 'nobody'", got.headers["x-saga-error"])
    end)

    it("without a signal name, with a bad name, with a body that is not JSON, for a finished saga", function()
      local id = host:start_saga("Order", { order_id = "f-" .. H.uid(), timeout = "200ms" })
      send({ ["saga-id"] = id }, "{}", "m-noname")
      local got = dlq_get()
      assert.equal("m-noname", got.message_id)
      assert.matches("signal%-name", got.headers["x-saga-error"])
      send({ ["saga-id"] = id, ["signal-name"] = "no spaces" }, "{}", "m-badname")
      got = dlq_get()
      assert.equal("m-badname", got.message_id)
      assert.matches("not a signal name", got.headers["x-saga-error"])
      send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, "{not json", "m-badjson")
      got = dlq_get()
      assert.equal("m-badjson", got.message_id)
      assert.matches("not valid JSON", got.headers["x-saga-error"])
      local s = host:wait(id, nil, 30)
      assert.same({ "timeout" }, s.data.got) -- none of them reached it
      send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, "{}", "m-late")
      got = dlq_get()
      assert.equal("m-late", got.message_id)
      assert.matches("is completed", got.headers["x-saga-error"])
      -- the host keeps working
      local id2 = host:start_saga("Order", { order_id = "g-" .. H.uid() })
      wait_parked(host, id2)
      send({ ["saga-id"] = id2, ["signal-name"] = "payment_confirmed" }, '{"ok":true}')
      assert.same({ { ok = true } }, host:wait(id2, nil, 30).data.got)
    end)
  end)
end)

describe("signals with two hosts on one PostgreSQL database", function()
  local A, B, uid
  -- the two hosts, started by the first test (H.pg_only must run inside a test)
  local function hosts()
    if A then return end
    H.broker_up()
    uid = H.uid()
    local shared = H.db_for(H.tmpdir("sig-shared"), "shared.db")
    A = H.host { name = "sig-a", amqp = true, host_id = "sig-a-" .. uid, db = shared, scripts = { ["order.lua"] = SCRIPT } }
    B = H.host { name = "sig-b", amqp = true, host_id = "sig-b-" .. uid, db = shared, scripts = { ["order.lua"] = SCRIPT } }
    A:start_amqp()
    B:start_amqp()
  end
  teardown(function()
    if A then A:stop() end
    if B then B:stop() end
    if uid then H.delete_queues({ "saga" }, { "sig-a-" .. uid, "sig-b-" .. uid }) end
  end)

  it("a signal reaching the host that does not own the saga is delivered by its owner", function()
    H.pg_only("several hosts share one PostgreSQL database")
    hosts()
    local id = A:start_saga("Order", { order_id = "mh-" .. uid })
    assert.equal(A.opts.host_id, H.sql(A.db, "SELECT owner FROM sagas WHERE id = '" .. id .. "'"))
    wait_parked(A, id)
    local code, body = B:post("/v1/sagas/" .. id .. "/signals/payment_confirmed", { via = "B" })
    assert.equal(202, code)
    assert.equal("kept", body.outcome) -- stored by B, taken by A (woken by mail)
    local s = A:wait(id, nil, 30)
    assert.equal("completed", s.status)
    assert.same({ { via = "B" } }, s.data.got)
    -- B answers a repeat of it as a repeat
    code, body = B:post("/v1/sagas/" .. id .. "/signals/payment_confirmed", { via = "B" }, { ["Idempotency-Key"] = "x" })
    assert.equal(409, code) -- finished; key x was never delivered
  end)

  it("signals over AMQP reach the owner whichever host consumes them, each once", function()
    H.pg_only("several hosts share one PostgreSQL database")
    hosts()
    local id = A:start_saga("Order", { order_id = "mq-" .. uid, waits = 4, timeout = "4s" })
    wait_parked(A, id)
    for i = 1, 3 do
      send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, cjson.encode { n = i }, "mq-" .. uid .. "-" .. i)
      send({ ["saga-id"] = id, ["signal-name"] = "payment_confirmed" }, cjson.encode { n = i }, "mq-" .. uid .. "-" .. i)
    end
    local s = A:wait(id, nil, 40)
    assert.equal("completed", s.status)
    assert.equal(4, #s.data.got)
    assert.equal("timeout", s.data.got[4]) -- the repeats were not delivered
    local ns = {}
    for i = 1, 3 do ns[#ns + 1] = s.data.got[i].n end
    table.sort(ns)
    assert.same({ 1, 2, 3 }, ns)
    assert.equal(3, tonumber(H.sql(A.db, "SELECT count(*) FROM signals WHERE saga_id = '" .. id .. "'")))
  end)

  it("a signal kept while the owner is dead is delivered by the host that takes the saga over", function()
    H.pg_only("several hosts share one PostgreSQL database")
    local u = H.uid()
    local shared = H.db_for(H.tmpdir("sig-takeover"), "shared.db")
    local function host(name)
      return H.host { name = "sig-t" .. name, host_id = "sig-t" .. name .. "-" .. u, db = shared, args = "--lease 2s",
                      scripts = { ["order.lua"] = SCRIPT } }
    end
    local C, D = host("c"), host("d")
    local ok, err = pcall(function()
      C:start()
      D:start()
      local id = C:start_saga("Order", { order_id = "to-" .. u })
      wait_parked(C, id)
      C:kill9()
      -- D does not own it (yet): it stores the signal for the owner
      local code, body = D:post("/v1/sagas/" .. id .. "/signals/payment_confirmed", { after = "takeover" })
      assert.equal(202, code)
      assert.equal("kept", body.outcome)
      local s = D:wait(id, nil, 40) -- D takes C's sagas over once C's lease has run out, and delivers it
      assert.equal("completed", s.status)
      assert.same({ { after = "takeover" } }, s.data.got)
      assert.matches("took over 1 saga", D:log(), 1, true)
    end)
    C:stop()
    D:stop()
    assert(ok, err)
  end)
end)
