-- The three broker transports of the host, described alike for tests/spec/transports_spec.lua: how to
-- bring the broker side up, how to start a host on it, how to start an independent participant (written
-- from docs/protocol.md only, with a client that is not sagahost's), how to send a raw reply or signal,
-- how to read dead letters back, and the transport's own fault. Every function takes the test's group g
-- (g.ctx: what open() gave; g.suffix, g.hid, g.services: the service names with the run's suffix).
--
--   amqp   --amqp URL   RabbitMQ 0-9-1 (the tests' node), tests/participants/pika_orders.py (pika)
--   amqp1  --amqp1 URL  AMQP 1.0 against the same node's amqp1_0 plugin, tests/amqp1/participant.py
--                       (python-qpid-proton)
--   kafka  --kafka LIST librdkafka's mock cluster (3 brokers, a cluster per test), tests/kafka/participant.js
--                       (kafkajs), one process per service
local H = require "helper"
local cjson = require "cjson"
local assert = require "luassert"

local T = {}

local function sh_ok(cmd, what)
  local code, out, err = H.run(cmd)
  assert(code == 0, (what or cmd) .. " failed: " .. out .. err)
  return out
end

local function args_of(list)
  local out = {}
  for i, a in ipairs(list) do out[i] = H.q(a) end
  return table.concat(out, " ")
end

-- The dead letters of a test: wants = { [queue] = { id, ... } } (a dead-letter queue or topic and the ids,
-- correlation id else message id, of the messages looked for there); returns { [queue] = { [id] = dl } }
-- with dl = { id, body, reason = x-saga-error, death = RabbitMQ's x-death reason, headers }.
-- RabbitMQ (both AMQP transports): other messages there (of earlier runs: saga.svc.saga.dlq is every
-- host's) are taken off and left out.
local function rabbit_dead_letters(_, wants)
  local all = {}
  for queue, ids in pairs(wants) do
    local want, got, n = {}, {}, 0
    for _, id in ipairs(ids) do want[id] = true end
    local deadline = H.now() + 30 * H.slow
    while n < #ids and H.now() < deadline do
      local m = cjson.decode(H.amqp_tool("get", queue, "2"))
      if m ~= cjson.null then
        local id = m.correlation_id ~= cjson.null and m.correlation_id or m.message_id
        if want[id] and not got[id] then
          got[id] = { id = id, body = m.body, reason = m.headers["x-saga-error"], death = m.death and m.death.reason,
            headers = m.headers }
          n = n + 1
        end
      end
    end
    all[queue] = got
  end
  return all
end

local function rabbit_cleanup(g, extra)
  H.delete_queues(g.services, { g.hid })
  for _, q in ipairs(extra or {}) do pcall(H.amqp_tool, "delete", q) end
end

---------------------------------------------------------------------------------------------------
T.amqp = {
  name = "amqp",
  label = "AMQP 0-9-1 (RabbitMQ, a pika participant)",
  connected = "amqp: connected to",
  ready = "READY",
  open = function() H.broker_up() return {} end,
  close = function() end,
  host_args = function() return "--amqp " .. H.q(H.amqp_url) end,
  declare = function() end, -- the participant declares its queues, the host its own and its services'
  state = function(g) return g.dir .. "/pika-state.jsonl" end,
  -- one process for every service of the group
  participants = function(g) return { g.services } end,
  participant_cmd = function(g, services)
    return H.python .. " -u tests/participants/pika_orders.py " .. H.q(H.pika_url()) .. " " .. H.q(g.state) ..
      " " .. args_of(services)
  end,
  -- a raw reply to the host's reply queue: spec = { correlation_id, status (nil: no saga-status), body }
  send_reply = function(g, spec)
    H.amqp_tool("publish", "saga.reply." .. g.hid, cjson.encode { body = spec.body, correlation_id = spec.correlation_id,
      headers = spec.status and { ["saga-status"] = spec.status } or nil })
  end,
  -- a raw signal to saga.svc.saga: spec = { message_id, name, saga_id, body }
  send_signal = function(_, spec)
    H.amqp_tool("publish", "saga.svc.saga", cjson.encode { body = spec.body, message_id = spec.message_id, type = "signal",
      headers = { ["signal-name"] = spec.name, ["saga-id"] = spec.saga_id } })
  end,
  dead_letters = rabbit_dead_letters,
  -- the host dead-lettered dl (from queue) with a reason matching pattern: its x-saga-error header
  dead_for = function(_, _, dl, pattern) assert.matches(pattern, dl.reason, "x-saga-error of " .. dl.id) end,
  cleanup = function(g) rabbit_cleanup(g) end,
  fault_label = "a RabbitMQ broker restart (stop_app, start_app)",
  -- starts batches with start_batch(tag) around the fault; returns a check run once every saga ended
  fault = function(g, start_batch)
    local base = H.count(g.orch:log(), "amqp: connected to")
    start_batch("before")
    H.rabbitmqctl("stop_app")
    g.broker_stopped = true
    -- started while the broker is down: their commands wait in the outbox
    start_batch("down")
    g.orch:wait_log("amqp: connection to [%d%.:]+ lost", 20)
    H.sleep(1)
    H.rabbitmqctl("start_app")
    g.broker_stopped = false
    H.broker_up()
    start_batch("after")
    return function()
      assert.is_true(H.count(g.orch:log(), "amqp: connected to") > base, "the host did not reconnect:\n" .. g.orch:log())
      assert.matches("DISCONNECTED", g.parts[1]:log(), "the participant never lost the broker")
    end
  end,
  after_fault = function(g)
    if g.broker_stopped then pcall(H.rabbitmqctl, "start_app") end
    H.broker_up()
  end,
}

---------------------------------------------------------------------------------------------------
-- AMQP 1.0 against the tests' node: its amqp1_0 plugin does not declare the queues behind /amq/queue/
-- addresses, so tests/amqp1/tool.py declares the topology of docs/protocol.md first (as an operator would)
local PREFIX = "/amq/queue/"
local BASE = H.broker_url:gsub("/$", "")
local AMQP1_TOOL = H.python .. " tests/amqp1/tool.py "

T.amqp1 = {
  name = "amqp1",
  label = "AMQP 1.0 (RabbitMQ's amqp1_0 plugin, a python-qpid-proton participant)",
  connected = "amqp1: connected to",
  ready = "READY",
  open = function() H.broker_up() return {} end,
  close = function() end,
  host_args = function()
    return "--amqp1 " .. H.q(BASE .. "?prefix=" .. PREFIX .. "&heartbeat=2")
  end,
  declare = function(g)
    sh_ok(AMQP1_TOOL .. "declare " .. H.q(H.pika_url()) .. " saga " .. args_of(g.services) .. " -- " .. H.q(g.hid),
      "tests/amqp1/tool.py declare")
  end,
  state = function(g) return g.dir .. "/proton-state.jsonl" end,
  participants = function(g) return { g.services } end,
  participant_cmd = function(g, services)
    return H.python .. " -u tests/amqp1/participant.py " .. H.q(BASE) .. " " .. PREFIX .. " " .. H.q(g.state) .. " " ..
      args_of(services)
  end,
  send_reply = function(g, spec)
    local out = sh_ok(AMQP1_TOOL .. "send " .. H.q(BASE) .. " " .. H.q(PREFIX .. "saga.reply." .. g.hid) .. " " ..
      H.q(cjson.encode { body = spec.body, correlation_id = spec.correlation_id,
        properties = spec.status and { ["saga-status"] = spec.status } or nil }))
    assert.matches("ACCEPTED", out)
  end,
  send_signal = function(_, spec)
    local out = sh_ok(AMQP1_TOOL .. "send " .. H.q(BASE) .. " " .. H.q(PREFIX .. "saga.svc.saga") .. " " ..
      H.q(cjson.encode { body = spec.body, id = spec.message_id, subject = "signal",
        properties = { ["signal-name"] = spec.name, ["saga-id"] = spec.saga_id } }))
    assert.matches("ACCEPTED", out)
  end,
  dead_letters = rabbit_dead_letters,
  -- the host rejects (RabbitMQ dead-letters it with x-death reason rejected) and logs why: "amqp1:
  -- malformed message on <queue>: <why>; rejected (dead-lettered)", or "amqp1: rejected (dead-lettered)
  -- <message id>: <why>" for what the engine refuses
  dead_for = function(g, queue, dl, pattern)
    assert.are.equal("rejected", dl.death, "RabbitMQ's x-death reason of " .. dl.id)
    local plain = queue:gsub("%.dlq$", "")
    for line in g.orch:log():gmatch("[^\n]+") do
      local why = line:match("amqp1: malformed message on " .. plain:gsub("%p", "%%%0") .. ": (.-); rejected %(dead%-lettered%)")
        or line:match("amqp1: rejected %(dead%-lettered%) %S*" .. dl.id:gsub("%p", "%%%0") .. ": (.*)$")
      if why and why:match(pattern) then return end
    end
    error("the host logged no dead-lettering from " .. plain .. " matching " .. pattern .. ":\n" .. g.orch:log())
  end,
  cleanup = function(g) rabbit_cleanup(g) end,
  fault_label = "every connection to the broker closed (rabbitmqctl close_all_connections)",
  fault = function(g, start_batch)
    local base = H.count(g.orch:log(), "amqp1: connected to")
    start_batch("before")
    H.rabbitmqctl("close_all_connections 'transports spec: a connection drop'")
    start_batch("dropped")
    g.orch:wait_log("amqp1: connection to [%d%.:]+ lost", 20)
    H.sleep(0.5)
    start_batch("after")
    return function()
      assert.is_true(H.count(g.orch:log(), "amqp1: connected to") > base, "the host did not reconnect:\n" .. g.orch:log())
      assert.matches("DISCONNECTED", g.parts[1]:log(), "the participant's connection was not closed")
    end
  end,
  after_fault = function() end,
}

---------------------------------------------------------------------------------------------------
local NODE = "env KAFKAJS_NO_PARTITIONER_WARNING=1 node tests/kafka/"

T.kafka = {
  name = "kafka",
  label = "Kafka (librdkafka's mock cluster, kafkajs participants)",
  connected = "kafka: group saga%.reply%.%S+: %d+ partitions? of",
  ready = "ASSIGNED",
  available = function()
    return H.read("tests/kafka/node_modules/kafkajs/package.json") ~= nil,
      "kafkajs is not installed: npm ci --prefix tests/kafka"
  end,
  open = function() return { mock = H.kafka_mock(3) } end,
  close = function(ctx)
    if ctx and ctx.mock then
      -- nothing of the test's cluster is kept: killed rather than asked to quit (which takes seconds)
      ctx.mock.kill()
    end
  end,
  -- group sessions of 4 s (instead of 10): a host or participant killed with kill -9 is out of its groups sooner
  host_args = function(g) return "--kafka " .. H.q(g.ctx.mock.brokers .. "?session_timeout_ms=4000") end,
  declare = function(g)
    for _, svc in ipairs(g.services) do g.ctx.mock.cmd("topic saga.svc." .. svc .. " 4") end
    g.ctx.mock.cmd("topic saga.reply." .. g.hid .. " 4")
  end,
  state = function(g) return g.dir .. "/effects" end, -- a directory every instance shares
  -- one process per service (each service is a consumer group)
  participants = function(g)
    local out = {}
    for i, svc in ipairs(g.services) do out[i] = { svc } end
    return out
  end,
  participant_cmd = function(g, services, instance)
    return string.format("env SESSION_TIMEOUT_MS=4000 %sparticipant.js %s %s %s %d", NODE, g.ctx.mock.brokers,
      services[1], H.q(g.state), instance or 1)
  end,
  send_reply = function(g, spec)
    local headers = { ["correlation-id"] = spec.correlation_id, ["saga-status"] = spec.status }
    sh_ok(string.format("%stool.js produce %s %s %s %s %s", NODE, g.ctx.mock.brokers, "saga.reply." .. g.hid,
      H.q(spec.correlation_id), H.q(spec.body), H.q(cjson.encode(headers))), "tool.js produce")
  end,
  send_signal = function(g, spec)
    local headers = { ["message-id"] = spec.message_id, type = "signal", ["signal-name"] = spec.name,
      ["saga-id"] = spec.saga_id }
    sh_ok(string.format("%stool.js produce %s saga.svc.saga %s %s %s", NODE, g.ctx.mock.brokers, H.q(spec.saga_id),
      H.q(spec.body), H.q(cjson.encode(headers))), "tool.js produce")
  end,
  -- the records of each topic (the cluster is this test's: every record there is one of ours), read by
  -- one tool.js each, all at once (each joins a consumer group of its own, which takes seconds)
  dead_letters = function(g, wants)
    local jobs = {}
    for topic, ids in pairs(wants) do
      local out = g.dir .. "/" .. topic .. ".records"
      os.execute(string.format("(%stool.js read %s %s %d 30 > %s 2>&1; echo $? > %s.rc) &", NODE, g.ctx.mock.brokers,
        H.q(topic), #ids, H.q(out), H.q(out)))
      jobs[topic] = out
    end
    local all = {}
    for topic, out in pairs(jobs) do
      local deadline = H.now() + 60
      while not H.read(out .. ".rc") and H.now() < deadline do H.sleep(0.1) end
      local got = {}
      for line in (H.read(out) or ""):gmatch("[^\n]+") do
        local ok, r = pcall(cjson.decode, line)
        if ok and type(r) == "table" then
          local id = r.headers["correlation-id"] or r.headers["message-id"]
          got[id] = { id = id, body = r.value, reason = r.headers["x-saga-error"], headers = r.headers }
        end
      end
      all[topic] = got
    end
    return all
  end,
  dead_for = function(_, queue, dl, pattern)
    assert.matches(pattern, dl.reason, "x-saga-error of " .. dl.id)
    assert.are.equal((queue:gsub("%.dlq$", "")), dl.headers["x-saga-original-topic"])
  end,
  cleanup = function() end,
  fault_label = "a broker down and up, leader changes and a consumer-group rebalance (a second inventory instance)",
  fault = function(g, start_batch)
    local mock = g.ctx.mock
    start_batch("before")
    -- a broker fails with sagas in flight: its partitions' records wait, the idempotent producers retry
    mock.cmd("down 2")
    start_batch("down")
    H.sleep(2)
    mock.cmd("up 2")
    -- leadership of partitions of the service topics and of the reply topic moves
    mock.cmd("leader saga.svc." .. g.services[2] .. " 0 3")
    mock.cmd("leader saga.svc." .. g.services[1] .. " 1 1")
    mock.cmd("leader saga.reply." .. g.hid .. " 2 2")
    start_batch("leader")
    -- a second inventory instance joins the group mid-run: its partitions are rebalanced
    local inv2 = g.participant({ g.services[1] }, 2)
    start_batch("rebalance")
    inv2:wait_log("ASSIGNED", 60)
    start_batch("shared")
    return function()
      -- the first inventory instance was in both assignments (before and after the join) and the second
      -- one took commands
      assert.is_true(H.count(g.parts[1]:log(), "ASSIGNED") >= 2, "inventory instance 1 saw no rebalance:\n" ..
        g.parts[1]:log())
      assert.matches("HANDLED %S+ " .. g.services[1]:gsub("%p", "%%%0"), inv2:log())
    end
  end,
  after_fault = function() end,
}

T.list = { T.amqp, T.amqp1, T.kafka }

return T
