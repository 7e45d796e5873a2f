-- The same end-to-end scenarios over each of the host's three broker transports (tests/spec/transports.lua
-- describes them: --amqp against RabbitMQ 0-9-1 with a pika participant, --amqp1 against RabbitMQ's AMQP
-- 1.0 plugin with a python-qpid-proton participant, --kafka against librdkafka's mock cluster with kafkajs
-- participants; each participant written from docs/protocol.md only). An orchestrating host runs the
-- sample OrderProcessing saga (sagas/order_processing.lua, its services renamed for the run) and the
-- participant answers its commands, printing "HANDLED <message id> ..." for each effect it applies
-- (kept durably per message id, so a redelivery is answered from the record). Each scenario checks what
-- a user would: every saga terminal with the status its card calls for, the data the replies carried,
-- each command's effect applied once, and what went to the dead-letter queues.
-- The per-transport specs (amqp_spec, amqp1_spec, kafka_spec) keep their transport-only cases.
local H = require "helper"
local T = require "transports"

local EXPECT_HISTORY = {
  ok = { "ReserveInventory:action:completed", "ProcessPayment:action:completed", "CreateShipment:action:completed" },
  declined = { "ReserveInventory:action:completed", "ProcessPayment:action:failed", "ReserveInventory:compensate:completed" },
}
local EXPECT_STATUS = { ok = "completed", declined = "compensated" }

local function order_input(i, tag)
  return { order_id = tag .. "-" .. i, sku = "book", qty = 1 + i % 3, amount = 10 + i, card = i % 4 == 0 and "declined" or "ok" }
end

-- a saga's history with, for each step and phase, its last attempt only: through a fault a step may time
-- out and be tried again (its retry policy), which is right as long as it ends as expected
local function last_attempts(s)
  local out, at = {}, {}
  for _, h in ipairs(H.history(s)) do
    local k = h:match("^(.*):[^:]*$")
    if at[k] then out[at[k]] = h else out[#out + 1] = h; at[k] = #out end
  end
  return out
end

local function check_order(s, input)
  assert.are.equal(EXPECT_STATUS[input.card], s.status, "saga " .. s.id .. " for card " .. input.card)
  assert.are.same(EXPECT_HISTORY[input.card], last_attempts(s))
  assert.are.equal("r-" .. input.order_id .. "-book", s.data.reservation)
  if input.card == "ok" then
    assert.are.equal("p-" .. input.order_id, s.data.payment)
    assert.are.equal("t-" .. input.order_id, s.data.tracking)
  else
    assert.matches("card declined", s.error)
    assert.is_nil(s.data.payment)
  end
end

-- the sample's commands by name, and the step (and phase) that sends each
local SERVICE_OF = { Reserve = "inventory", Release = "inventory", Charge = "payment", Refund = "payment",
  CreateShipment = "shipping" }
local COMMAND_OF = {
  ["ReserveInventory:action"] = "inventory.Reserve", ["ReserveInventory:compensate"] = "inventory.Release",
  ["ProcessPayment:action"] = "payment.Charge", ["ProcessPayment:compensate"] = "payment.Refund",
  ["CreateShipment:action"] = "shipping.CreateShipment",
}

-- A test's orchestrating host on transport t and its participant processes (g.parts: the first instance
-- of each, as t.participants groups the services; g.procs: every process started).
local function group(t, name)
  local g = { t = t, suffix = H.uid(), parts = {}, procs = {} }
  g.dir = H.tmpdir("tr-" .. t.name .. "-" .. name)
  g.hid = "tr-" .. t.name .. "-" .. g.suffix
  g.services = {}
  for i, svc in ipairs(H.sample_services) do g.services[i] = svc .. "_" .. g.suffix end
  g.ctx = t.open()
  g.state = t.state(g)
  g.orch = H.host { name = "tr-" .. t.name .. "-" .. name .. "-orch", host_id = g.hid, args = t.host_args(g),
    scripts = H.samples(g.suffix, { "order_processing.lua" }) }
  function g.participant(services, instance)
    local p = H.proc { cmd = t.participant_cmd(g, services, instance), dir = g.dir,
      name = "part-" .. services[1]:gsub("_.*", "") .. (#services > 1 and "-etc" or "") .. "-" .. (instance or 1) }
    p:start()
    g.procs[#g.procs + 1] = p
    return p
  end
  function g.start()
    t.declare(g)
    for i, services in ipairs(t.participants(g)) do g.parts[i] = g.participant(services, 1) end
    for _, p in ipairs(g.parts) do p:wait_log(t.ready, 60) end
    g.orch:start()
    g.orch:wait_log(t.connected, 60)
  end
  -- the first instance of the process that serves payment
  function g.payment_part()
    for i, services in ipairs(t.participants(g)) do
      for _, svc in ipairs(services) do
        if svc:match("^payment_") then return g.parts[i] end
      end
    end
  end
  function g.stop()
    g.orch:stop()
    g.signal_parts("CONT") -- (a test that failed while they were held)
    -- every participant asked to stop at once (a kafkajs one leaves its group first), then waited for
    for _, p in ipairs(g.procs) do if p.pid then os.execute("kill " .. p.pid .. " 2>/dev/null") end end
    for _, p in ipairs(g.procs) do p:stop() end
    pcall(t.after_fault, g)
    pcall(t.cleanup, g)
    t.close(g.ctx)
  end
  -- message id -> { n = times its effect was applied, what = "service.Command" }, over every run of every
  -- participant process. A command answered from the participant's record ("DUPLICATE") whose HANDLED
  -- line is in no log took effect once: a participant killed with kill -9 after it recorded the effect
  -- and before it printed the line (the record is what makes the repeat a DUPLICATE)
  function g.handled()
    local out, repeats = {}, {}
    local function what_of(s)
      local command = s:match("([^.]+)$")
      return SERVICE_OF[command] .. "." .. command
    end
    for _, p in ipairs(g.procs) do
      local log = p:log()
      for mid, what in log:gmatch("HANDLED (%S+) (%S+)") do
        local e = out[mid] or { n = 0, what = what_of(what) }
        e.n = e.n + 1
        out[mid] = e
      end
      for mid, what in log:gmatch("DUPLICATE (%S+) (%S+)") do repeats[mid] = what_of(what) end
    end
    for mid, what in pairs(repeats) do
      if not out[mid] then out[mid] = { n = 1, what = what } end
    end
    return out
  end
  function g.effects()
    local n = 0
    for _, p in ipairs(g.procs) do n = n + H.count(p:log(), "HANDLED ") end
    return n
  end
  -- starts count sagas, appending to ids and inputs
  function g.start_orders(count, tag, ids, inputs)
    ids, inputs = ids or {}, inputs or {}
    for i = 1, count do
      local input = order_input(#ids + 1, tag)
      ids[#ids + 1] = g.orch:start_saga("OrderProcessing", input)
      inputs[#inputs + 1] = input
    end
    return ids, inputs
  end
  -- kill -STOP or -CONT to every participant process
  function g.signal_parts(sig)
    for _, p in ipairs(g.procs) do
      if p:alive() then os.execute("kill -" .. sig .. " " .. p.pid) end
    end
  end
  -- waits until effects have been applied (by every participant together)
  function g.wait_effects(count, timeout)
    local deadline = H.now() + (timeout or 60) * H.slow
    while g.effects() < count do
      assert(H.now() < deadline, "participants applied " .. g.effects() .. " effects, not " .. count)
      H.sleep(0.02)
    end
  end
  return g
end

-- each command (message id) took effect exactly once, and each saga's commands are the ones its card
-- calls for: at least once, and at most once per attempt of the step that sends it (through a fault an
-- attempt can time out while its command is held up, and the retry sends a new command: both may take
-- effect, each once)
local function check_effects_once(g, ids, inputs)
  local per_saga = {}
  for mid, e in pairs(g.handled()) do
    assert.are.equal(1, e.n, "command " .. mid .. " (" .. e.what .. ") took effect " .. e.n .. " times")
    local sid = mid:match("^([^.]+)")
    per_saga[sid] = per_saga[sid] or {}
    per_saga[sid][e.what] = (per_saga[sid][e.what] or 0) + 1
  end
  for i, id in ipairs(ids) do
    local attempts = {}
    for _, st in ipairs(g.orch:saga(id).steps) do
      local c = COMMAND_OF[st.name .. ":" .. st.phase]
      if c then attempts[c] = (attempts[c] or 0) + 1 end
    end
    local want = inputs[i].card == "ok" and { "inventory.Reserve", "payment.Charge", "shipping.CreateShipment" }
      or { "inventory.Release", "inventory.Reserve", "payment.Charge" }
    local names = {}
    for c, n in pairs(per_saga[id] or {}) do
      names[#names + 1] = c
      assert.is_true(n <= (attempts[c] or 0), "saga " .. id .. ": " .. c .. " took effect " .. n .. " times in " ..
        tostring(attempts[c]) .. " attempts")
    end
    table.sort(names)
    assert.are.same(want, names, "commands that took effect for saga " .. id)
  end
end

-- every saga of ids terminal as its input says, each effect once
local function check_all(g, ids, inputs, timeout)
  g.orch:wait_all(ids, timeout or 120)
  for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
  check_effects_once(g, ids, inputs)
end

for _, t in ipairs(T.list) do
  describe("OrderProcessing over " .. t.label, function()
    local g
    before_each(function()
      if t.available then assert(t.available()) end
    end)
    after_each(function()
      if g then g.stop() end
      g = nil
    end)

    it("40 sagas at once: each completed, or compensated for a declined card; each command's effect once", function()
      g = group(t, "many")
      g.start()
      local ids, inputs = g.start_orders(40, "many")
      local done = g.orch:wait_all(ids, 120)
      local by = {}
      for _, s in pairs(done) do by[s.status] = (by[s.status] or 0) + 1 end
      assert.are.same({ completed = 30, compensated = 10 }, by)
      check_all(g, ids, inputs)
      -- 40 Reserve, 40 Charge, 30 CreateShipment and 10 Release, each in the participant
      assert.are.equal(120, g.effects())
    end)

    it("the host killed with kill -9 mid-run and started again: every saga terminal, each effect once", function()
      g = group(t, "hostkill")
      g.start()
      local ids, inputs = g.start_orders(15, "hostkill")
      g.wait_effects(10)
      -- the participants held (SIGSTOP) while more sagas start, so that those are certainly running when
      -- the host is killed: their commands are at the broker, their replies come while the host is down
      g.signal_parts("STOP")
      g.start_orders(15, "hostkill-held", ids, inputs)
      -- their first commands are out and the broker has them (confirmed: the outbox is empty), then the kill
      H.sleep(0.5)
      local deadline = H.now() + 20 * H.slow
      while true do
        local _, _, text = g.orch:get("/metrics")
        local depth = tonumber(text:match("\nsagahost_outbox_depth (%d+)"))
        if depth == 0 then break end
        assert(H.now() < deadline, "the broker has not confirmed the host's commands: outbox depth " .. tostring(depth))
        H.sleep(0.05)
      end
      g.orch:kill9()
      g.signal_parts("CONT")
      g.wait_effects(g.effects() + 5)
      g.orch:start()
      g.orch:wait_log(t.connected, 60)
      -- it did die mid-run: it recovered sagas that were still running
      assert.is_true(tonumber(g.orch:wait_log("recovered (%d+) saga", 10)) > 0, "the host was killed after every saga ended")
      check_all(g, ids, inputs)
    end)

    it("the participant killed with kill -9 mid-run and started again: every saga terminal, each effect once", function()
      g = group(t, "partkill")
      g.start()
      local ids, inputs = g.start_orders(10, "partkill")
      g.wait_effects(12)
      local pay = g.payment_part()
      pay:kill9()
      -- sagas started while it is down wait for payment: their commands wait for it at the broker
      g.start_orders(20, "partkill-down", ids, inputs)
      H.sleep(1)
      assert.is_true(g.orch:healthz().live_sagas > 0, "every saga ended without the payment service")
      pay:start() -- the next run, with the same durable record of what it did
      check_all(g, ids, inputs, 150)
    end)

    it("malformed and unknown replies and a malformed signal are dead-lettered with their reason; nothing else is lost", function()
      g = group(t, "poison")
      g.start()
      local ids, inputs = g.start_orders(15, "poison")
      local s = g.suffix
      -- while those run: a reply whose body is not JSON, one without saga-status, one naming no operation
      -- of this host, and a signal whose body is not JSON
      t.send_reply(g, { correlation_id = "bad-json-" .. s, status = "ok", body = "not json {" })
      t.send_reply(g, { correlation_id = "no-status-" .. s, body = '{"x":1}' })
      t.send_reply(g, { correlation_id = "nobody-" .. s, status = "ok", body = "{}" })
      t.send_signal(g, { message_id = "sig-bad-" .. s, name = "go", saga_id = ids[1], body = "{oops" })
      g.start_orders(15, "poison-after", ids, inputs)
      local replies = "saga.reply." .. g.hid .. ".dlq"
      local got = t.dead_letters(g, { [replies] = { "bad-json-" .. s, "no-status-" .. s, "nobody-" .. s },
        ["saga.svc.saga.dlq"] = { "sig-bad-" .. s } })
      local function dead(queue, id, pattern, body)
        local dl = got[queue][id]
        assert.is_table(dl, id .. " is not in " .. queue)
        assert.are.equal(body, dl.body)
        t.dead_for(g, queue, dl, pattern)
      end
      dead(replies, "bad-json-" .. s, "^body is not valid JSON", "not json {")
      dead(replies, "no-status-" .. s, "^reply has no saga%-status header", '{"x":1}')
      dead(replies, "nobody-" .. s, "does not name a saga operation", "{}")
      dead("saga.svc.saga.dlq", "sig-bad-" .. s, "^body is not valid JSON", "{oops")
      -- every saga ran to its end as if nothing had happened
      check_all(g, ids, inputs)
      assert.are.equal(90, g.effects())
    end)

    it("through " .. t.fault_label .. ": every saga terminal, each effect once", function()
      g = group(t, "fault")
      g.start()
      local ids, inputs = {}, {}
      local check = t.fault(g, function(tag) g.start_orders(8, tag, ids, inputs) end)
      check_all(g, ids, inputs, 150)
      check()
    end)
  end)
end
