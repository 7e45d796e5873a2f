-- End-to-end over Kafka: librdkafka's mock cluster (tests/kafka/mock_cluster.c, a process whose stdin
-- takes broker failures and leader changes), a host with --kafka, and participants written with
-- kafkajs following only docs/protocol.md ("Kafka"): tests/kafka/participant.js. Every test has its own
-- mock cluster, so runs never see each other's records.
local H = require "helper"

local NODE = "env KAFKAJS_NO_PARTITIONER_WARNING=1 node tests/kafka/"
assert(H.read("tests/kafka/node_modules/kafkajs/package.json"),
  "kafkajs is not installed: npm ci --prefix tests/kafka (.ci/deps.sh --test does it)")

-- a mock cluster of n brokers (H.kafka_mock, tests/spec/helper.lua)
local mock_cluster = H.kafka_mock

local function order_input(i, tag)
  return { order_id = tag .. "-" .. i, sku = "book", qty = 1 + i % 3, amount = 10 + i, card = i % 4 == 0 and "declined" or "ok" }
end

local EXPECT_HISTORY = {
  ok = { "ReserveInventory:action:completed", "ProcessPayment:action:completed", "CreateShipment:action:completed" },
  declined = { "ReserveInventory:action:completed", "ProcessPayment:action:failed", "ReserveInventory:compensate:completed" },
}
local EXPECT_STATUS = { ok = "completed", declined = "compensated" }

-- the history of a saga with, for each step and phase, its last attempt only: with brokers failing, a
-- step may time out and be tried again (its retry policy), which is right as long as it ends as expected
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
  end
end

-- the orchestrating host and one kafkajs participant per service (more with g.participant)
local function order_group(name, mock)
  local g = { suffix = H.uid(), procs = {} }
  g.dir = H.tmpdir(name)
  g.state = g.dir .. "/effects"
  g.orch = H.host { name = name .. "-orch", host_id = "kspec-" .. g.suffix, args = "--kafka " .. mock.brokers,
    scripts = H.samples(g.suffix, { "order_processing.lua" }) }
  function g.topic(svc) return "saga.svc." .. svc .. "_" .. g.suffix end
  function g.participant(svc, instance)
    local p = H.proc { cmd = string.format("%sparticipant.js %s %s_%s %s %d", NODE, mock.brokers, svc, g.suffix,
      g.state, instance), dir = g.dir, name = svc .. "-" .. instance }
    p:start()
    g.procs[#g.procs + 1] = p
    return p
  end
  function g.start()
    for _, svc in ipairs(H.sample_services) do mock.cmd("topic " .. g.topic(svc) .. " 4") end
    mock.cmd("topic saga.reply." .. g.orch.opts.host_id .. " 4")
    for _, svc in ipairs(H.sample_services) do g[svc] = g.participant(svc, 1) end
    g.orch:start()
    g.orch:wait_log("kafka: group saga%.reply%.%S+: %d+ partitions? of", 60)
    for _, svc in ipairs(H.sample_services) do g[svc]:wait_log("ASSIGNED", 60) end
  end
  function g.stop()
    g.orch:stop()
    for _, p in ipairs(g.procs) do p:stop() end
  end
  -- message id -> { n = times its effect was applied, what = "service.command" }, over every instance
  function g.handled()
    local out = {}
    for _, p in ipairs(g.procs) do
      for mid, what in p:log():gmatch("HANDLED (%S+) (%S+)") do
        local e = out[mid] or { n = 0, what = what }
        e.n = e.n + 1
        out[mid] = e
      end
    end
    return out
  end
  function g.start_orders(from, to, tag, ids, inputs)
    for i = from, to do
      inputs[i] = order_input(i, tag)
      ids[i] = g.orch:start_saga("OrderProcessing", inputs[i])
    end
  end
  return g
end

-- each command (message id) took effect exactly once, and each saga's commands are the ones its card
-- calls for: one per attempt of the step that sent it at most (with brokers failing, an attempt can time
-- out while its command is held up, and the retry sends a new command; both may take effect, as they
-- would on RabbitMQ), at least one
local COMMAND_OF = {
  ["ReserveInventory:action"] = "inventory.Reserve", ["ReserveInventory:compensate"] = "inventory.Release",
  ["ProcessPayment:action"] = "payment.Charge", ["ProcessPayment:compensate"] = "payment.Refund",
  ["CreateShipment:action"] = "shipping.CreateShipment",
}
local function check_effects_once(g, ids, inputs)
  local per_saga = {}
  for mid, e in pairs(g.handled()) do
    assert.are.equal(1, e.n, "command " .. mid .. " (" .. e.what .. ") took effect " .. e.n .. " times")
    local sid = mid:match("^([^.]+)")
    local what = e.what:gsub("_" .. g.suffix, "")
    per_saga[sid] = per_saga[sid] or {}
    per_saga[sid][what] = (per_saga[sid][what] or 0) + 1
  end
  for i, id in ipairs(ids) do
    local got = per_saga[id] or {}
    local attempts = {}
    for _, st in ipairs(g.orch:saga(id).steps) do
      local c = COMMAND_OF[st.name .. ":" .. st.phase]
      if c then attempts[c] = (attempts[c] or 0) + 1 end
    end
    local want = inputs[i].card == "ok" and { "inventory.Reserve", "payment.Charge", "shipping.CreateShipment" }
      or { "inventory.Release", "inventory.Reserve", "payment.Charge" }
    local names = {}
    for c, n in pairs(got) do
      names[#names + 1] = c
      assert.is_true(n <= (attempts[c] or 0), "saga " .. id .. ": " .. c .. " took effect " .. n .. " times in " ..
        tostring(attempts[c]) .. " attempts")
    end
    table.sort(names)
    assert.are.same(want, names, "commands that took effect for saga " .. id)
  end
end

-- the first count records of topic, decoded ({ key, value, headers, partition, offset })
local function read_topic(brokers, topic, count)
  local cjson = require "cjson"
  local _, out = H.run(string.format("%stool.js read %s %s %d 30", NODE, brokers, topic, count))
  local recs = {}
  for line in out:gmatch("[^\n]+") do
    local ok, r = pcall(cjson.decode, line)
    if ok and type(r) == "table" then recs[#recs + 1] = r end
  end
  return recs
end

local function produce(brokers, topic, key, value, headers)
  local cjson = require "cjson"
  local code, _, err = H.run(string.format("%stool.js produce %s %s %s %s %s", NODE, brokers, topic, H.q(key),
    H.q(value), H.q(cjson.encode(headers))))
  assert(code == 0, "producing to " .. topic .. ": " .. err)
end

describe("OrderProcessing over Kafka (mock cluster, kafkajs participants)", function()
  local mock, g
  before_each(function()
    mock = mock_cluster(3)
  end)
  after_each(function()
    if g then g.stop() end
    g = nil
    if mock then mock.stop() end
  end)

  it("every saga terminal and each effect once through a broker failure, a leader change and a rebalance", function()
    g = order_group("kafka-order", mock)
    g.start()
    local ids, inputs = {}, {}
    g.start_orders(1, 8, "calm", ids, inputs)
    -- a broker fails with sagas in flight: its partitions' records wait, the idempotent producer retries
    mock.cmd("down 2")
    g.start_orders(9, 16, "down", ids, inputs)
    H.sleep(2)
    mock.cmd("up 2")
    -- leadership of partitions of each service topic moves
    mock.cmd("leader " .. g.topic("payment") .. " 0 3")
    mock.cmd("leader " .. g.topic("inventory") .. " 1 1")
    mock.cmd("leader saga.reply." .. g.orch.opts.host_id .. " 2 2")
    g.start_orders(17, 24, "leader", ids, inputs)
    -- a second inventory instance joins its consumer group mid-run: the partitions are rebalanced
    local inv2 = g.participant("inventory", 2)
    g.start_orders(25, 32, "rebalance", ids, inputs)
    inv2:wait_log("ASSIGNED", 60)
    g.orch:wait_all(ids, 90)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
    check_effects_once(g, ids, inputs)
    -- the first instance was in both assignments (before and after the join)
    assert.is_true(H.count(g.inventory:log(), "ASSIGNED") >= 2, "inventory instance 1 saw no rebalance:\n" .. g.inventory:log())
    -- after the rebalance, both instances share the work
    g.start_orders(33, 48, "shared", ids, inputs)
    g.orch:wait_all(ids, 120)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
    check_effects_once(g, ids, inputs)
    assert.matches("HANDLED %S+ inventory_" .. g.suffix, inv2:log())
  end)

  it("a host killed mid-run takes up its uncommitted replies again: every saga terminal, each effect once", function()
    g = order_group("kafka-crash", mock)
    g.start()
    local ids, inputs = {}, {}
    g.start_orders(1, 16, "crash", ids, inputs)
    H.sleep(1)
    g.orch:kill9()
    g.orch:start()
    g.orch:wait_all(ids, 120)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
    check_effects_once(g, ids, inputs)
  end)

  it("poison records are dead-lettered to <topic>.dlq with the reason in x-saga-error", function()
    g = order_group("kafka-poison", mock)
    g.start()
    local reply = "saga.reply." .. g.orch.opts.host_id
    -- a reply without saga-status (malformed), then one naming no command of this host (the engine refuses)
    produce(mock.brokers, reply, "k1", '{"x":1}', { ["correlation-id"] = "c-1" })
    produce(mock.brokers, reply, "k1", '{}', { ["correlation-id"] = "c-2", ["saga-status"] = "ok" })
    -- a signal whose body is not JSON, and one for a saga that does not exist
    produce(mock.brokers, "saga.svc.saga", "k2", "{not json", { ["message-id"] = "s-1", type = "signal", ["signal-name"] = "go", ["saga-id"] = "x" })
    produce(mock.brokers, "saga.svc.saga", "k2", "{}", { ["message-id"] = "s-2", type = "signal", ["signal-name"] = "go", ["saga-id"] = "nope" })
    local recs = read_topic(mock.brokers, reply .. ".dlq", 2)
    assert.are.equal(2, #recs, "records in " .. reply .. ".dlq")
    table.sort(recs, function(a, b) return a.headers["correlation-id"] < b.headers["correlation-id"] end)
    assert.are.equal('reply has no saga-status header; set it to "ok" or "error"', recs[1].headers["x-saga-error"])
    assert.are.equal('{"x":1}', recs[1].value)
    assert.are.equal(reply, recs[1].headers["x-saga-original-topic"])
    assert.matches("^%d+$", recs[1].headers["x-saga-original-offset"])
    assert.matches("does not name a saga operation", recs[2].headers["x-saga-error"])
    recs = read_topic(mock.brokers, "saga.svc.saga.dlq", 2)
    assert.are.equal(2, #recs, "records in saga.svc.saga.dlq")
    table.sort(recs, function(a, b) return a.headers["message-id"] < b.headers["message-id"] end)
    assert.matches("^body is not valid JSON", recs[1].headers["x-saga-error"])
    assert.are.equal("no saga with id 'nope'", recs[2].headers["x-saga-error"])
    -- the host goes on: a saga after the poison completes
    local ids, inputs = {}, {}
    g.start_orders(1, 2, "after", ids, inputs)
    g.orch:wait_all(ids, 60)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
  end)
end)

describe("sagahost participants over Kafka", function()
  local mock, orch, part
  setup(function() mock = mock_cluster(1) end)
  teardown(function()
    if orch then orch:stop() end
    if part then part:stop() end
    mock.stop()
  end)

  it("saga.handle participants in another host work unchanged: every saga terminal, each handler once", function()
    local suffix = H.uid()
    local scripts = H.samples(suffix, { "order_processing.lua" })
    scripts["waiter.lua"] = [[
      local saga = require "saga"
      saga.define { name = "Waiter", key = "k", steps = { { name = "w", action = function(ctx)
        ctx.data.got = ctx:wait("go")
        ctx.data.second = ctx:wait("go", { timeout = "2s" }) or "none"
      end } } }
    ]]
    orch = H.host { name = "kafka-h-orch", host_id = "kh-orch-" .. suffix, args = "--kafka " .. mock.brokers,
      scripts = scripts }
    part = H.host { name = "kafka-h-part", host_id = "kh-part-" .. suffix, args = "--kafka " .. mock.brokers,
      scripts = H.samples(suffix, { "inventory.lua", "payment.lua", "shipping.lua" }, true) }
    part:start()
    -- its three services' groups and the signals' group
    local deadline = H.now() + 60
    while H.count(part:log(), "partitions of saga.svc.") < 4 and H.now() < deadline do H.sleep(0.1) end
    assert.are.equal(4, H.count(part:log(), "partitions of saga.svc."), part:log())
    orch:start()
    orch:wait_log("kafka: group saga%.reply%.%S+: %d+ partitions? of", 60)
    local ids, inputs = {}, {}
    for i = 1, 12 do
      inputs[i] = order_input(i, "host")
      ids[i] = orch:start_saga("OrderProcessing", inputs[i])
    end
    orch:wait_all(ids, 90)
    for i, id in ipairs(ids) do check_order(orch:saga(id), inputs[i]) end
    local seen = {}
    for mid in part:log():gmatch("HANDLED (%S+)") do
      assert.is_nil(seen[mid], "handled twice: " .. mid)
      seen[mid] = true
    end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.are.equal(12 * 3, n) -- three commands a saga: Reserve, Charge and CreateShipment or Release
    assert.are.equal(0, H.count(orch:log(), "HANDLED"))
  end)

  it("a signal produced to saga.svc.saga reaches the saga's ctx:wait, once per message-id", function()
    local id = orch:start_saga("Waiter", { k = "w-1" })
    local headers = { ["message-id"] = "sig-w-1", type = "signal", ["signal-name"] = "go", ["saga-type"] = "Waiter",
      ["saga-key"] = "w-1" }
    produce(mock.brokers, "saga.svc.saga", "w-1", '{"ref":"pay-42"}', headers)
    produce(mock.brokers, "saga.svc.saga", "w-1", '{"ref":"again"}', headers) -- a re-send: not delivered again
    local s = orch:wait(id, "completed", 60)
    assert.are.same({ ref = "pay-42" }, s.data.got)
    assert.are.equal("none", s.data.second) -- the re-sent signal was taken once
  end)
end)

describe("several hosts on one PostgreSQL database over Kafka", function()
  local mock, list = nil, {}
  after_each(function()
    for _, h in ipairs(list) do
      os.execute("kill -CONT " .. (h.pid or 0) .. " 2>/dev/null")
      h:stop()
    end
    if mock then mock.stop() end
  end)

  it("a host frozen past its lease is fenced when it wakes: its deliveries come again, nothing applied twice", function()
    H.pg_only("leases are PostgreSQL's")
    mock = mock_cluster(1)
    local suffix = H.uid()
    local svc = "hsvc_" .. suffix
    local script = ([[
local saga = require "saga"
saga.handle("SVC", "Do", function(p) print("DID " .. p.k) return { ok = p.k } end)
saga.define { name = "Slow", steps = {
  { name = "first", action = function(ctx) ctx.data.a = ctx:call("SVC", "Do", { k = ctx.input.n .. "a" }) end },
  { name = "nap", action = function(ctx) ctx:sleep(ctx.input.nap or "3s") end },
  { name = "last", action = function(ctx) ctx.data.b = ctx:call("SVC", "Do", { k = ctx.input.n .. "b" }) end },
} }
]]):gsub("SVC", svc)
    mock.cmd("topic saga.svc." .. svc .. " 4")
    local db = H.db_for(H.tmpdir("kafka-fence"), "shared.db")
    for i = 1, 2 do
      list[i] = H.host { name = "kafka-fence" .. i, db = db, host_id = "kf-" .. suffix .. "-" .. i,
        args = "--lease 1s --kafka " .. mock.brokers, scripts = { ["s.lua"] = script } }
      list[i]:start()
    end
    local a, b = list[1], list[2]
    for _, h in ipairs(list) do h:wait_log("kafka: group saga%.reply%.%S+: %d+ partitions? of", 60) end
    local ids = {}
    for i = 1, 16 do ids[i] = a:start_saga("Slow", { n = "f" .. i, nap = "4s" }) end
    H.sleep(1)
    os.execute("kill -STOP " .. a.pid)
    b:wait_log("took over (%d+) saga%(s%) of host kf%-", 10)
    os.execute("kill -CONT " .. a.pid)
    a:wait_log("fenced: ([^\n]+)", 10)
    local got = b:wait_all(ids, 90)
    for _, id in ipairs(ids) do assert.are.equal("completed", got[id].status) end
    local seen = {}
    for _, h in ipairs(list) do
      for k in h:log():gmatch("DID (%S+)\n") do seen[k] = (seen[k] or 0) + 1 end
    end
    for i = 1, 16 do
      for _, part in ipairs({ "a", "b" }) do
        assert.are.equal(1, seen["f" .. i .. part], "effect f" .. i .. part)
      end
    end
    -- a goes on serving after the fence
    local id = a:start_saga("Slow", { n = "after", nap = "10ms" })
    assert.are.equal("completed", a:wait(id, nil, 60).status)
  end)
end)

describe("sagahost participants sharing a consumer group (PostgreSQL)", function()
  local mock, hosts = nil, {}
  after_each(function()
    for _, h in ipairs(hosts) do h:stop() end
    if mock then mock.stop() end
  end)

  it("a second participant host joins mid-run: the group rebalances, every saga terminal, each handler once", function()
    H.pg_only("two participant hosts share one database (their inbox)")
    mock = mock_cluster(3)
    local suffix = H.uid()
    for _, svc in ipairs(H.sample_services) do mock.cmd("topic saga.svc." .. svc .. "_" .. suffix .. " 4") end
    local orch = H.host { name = "kafka-g-orch", host_id = "kg-orch-" .. suffix, args = "--kafka " .. mock.brokers,
      scripts = H.samples(suffix, { "order_processing.lua" }) }
    local db = H.db_for(H.tmpdir("kafka-g"), "participants.db")
    local parts = {}
    for i = 1, 2 do
      parts[i] = H.host { name = "kafka-g-part" .. i, db = db, host_id = "kg-part" .. i .. "-" .. suffix,
        args = "--kafka " .. mock.brokers, scripts = H.samples(suffix, { "inventory.lua", "payment.lua", "shipping.lua" }, true, 0.05) }
    end
    hosts = { orch, parts[1], parts[2] }
    parts[1]:start()
    orch:start()
    orch:wait_log("kafka: group saga%.reply%.%S+: %d+ partitions? of", 60)
    local ids, inputs = {}, {}
    for i = 1, 12 do
      inputs[i] = order_input(i, "group")
      ids[i] = orch:start_saga("OrderProcessing", inputs[i])
    end
    parts[2]:start()
    for i = 13, 30 do
      inputs[i] = order_input(i, "group")
      ids[i] = orch:start_saga("OrderProcessing", inputs[i])
    end
    orch:wait_all(ids, 120)
    for i, id in ipairs(ids) do check_order(orch:saga(id), inputs[i]) end
    -- the first host gave partitions up (revoked) when the second one joined, and both handled commands
    assert.matches("partitions of saga%.svc%.%S+ revoked", parts[1]:log())
    local seen, by = {}, { 0, 0 }
    for i, h in ipairs(parts) do
      for mid in h:log():gmatch("HANDLED (%S+)") do
        assert.is_nil(seen[mid], "handled twice: " .. mid)
        seen[mid] = true
        by[i] = by[i] + 1
      end
    end
    assert.are.equal(30 * 3, by[1] + by[2])
    assert.is_true(by[2] > 0, "the second host handled nothing")
  end)
end)

describe("sagahost run --kafka", function()
  it("refuses --amqp with --kafka: one transport at a time", function()
    local code, _, err = H.run(H.bin .. " run --amqp amqp://x/ --kafka 127.0.0.1:9092 /nonexistent")
    assert.are_not.equal(0, code)
    assert.matches("%-%-amqp, %-%-amqp1 and %-%-kafka exclude each other: a host uses one transport at a time", err)
  end)
end)
