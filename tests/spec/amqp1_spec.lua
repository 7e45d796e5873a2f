-- End-to-end over AMQP 1.0 (--amqp1): a host against the tests' RabbitMQ node through its amqp1_0
-- plugin, and participants written from docs/protocol.md only: with python-qpid-proton
-- (tests/amqp1/participant.py) and with rhea, a JavaScript implementation (tests/amqp1/participant.js). RabbitMQ 3.x's plugin does not declare the queues behind /amq/queue/
-- addresses: tests/amqp1/tool.py declares the topology of docs/protocol.md over 0-9-1 first, as an
-- operator would (on Azure Service Bus the queues are made with the namespace).
local H = require "helper"
local cjson = require "cjson"

local PREFIX = "/amq/queue/"
local BASE = H.broker_url:gsub("/$", "")         -- amqp://guest:guest@127.0.0.1:PORT
local AMQP1_URL = BASE .. "?prefix=" .. PREFIX .. "&events=/exchange/saga.events&heartbeat=2"
local TOOL = H.python .. " tests/amqp1/tool.py"

local EXPECT_HISTORY = {
  ok = { "ReserveInventory:action:completed", "ProcessPayment:action:completed", "CreateShipment:action:completed" },
  declined = { "ReserveInventory:action:completed", "ProcessPayment:action:failed", "ReserveInventory:compensate:completed" },
}
local EXPECT_STATUS = { ok = "completed", declined = "compensated" }

local function order_input(i, tag)
  return { order_id = tag .. "-" .. i, sku = "book", qty = 1 + i % 3, amount = 10 + i, card = i % 4 == 0 and "declined" or "ok" }
end

local function check_order(s, input)
  assert.are.equal(EXPECT_STATUS[input.card], s.status, "saga " .. s.id .. " for card " .. input.card)
  assert.are.same(EXPECT_HISTORY[input.card], H.history(s))
  assert.are.equal("r-" .. input.order_id .. "-book", s.data.reservation)
  if input.card == "ok" then
    assert.are.equal("p-" .. input.order_id, s.data.payment)
    assert.are.equal("t-" .. input.order_id, s.data.tracking)
  else
    assert.matches("card declined", s.error)
  end
end

local function tool(...)
  local args = {}
  for i, a in ipairs { ... } do args[i] = H.q(a) end
  local code, out = H.sh(TOOL .. " " .. table.concat(args, " "))
  assert(code == 0, "tests/amqp1/tool.py " .. table.concat(args, " ") .. ": " .. out)
  return out
end

describe("OrderProcessing over AMQP 1.0 (RabbitMQ's amqp1_0 plugin) with python-qpid-proton participants", function()
  local orch, part, suffix, hid, services, state
  local function handled(proc)
    local out = {}
    for mid, what in (proc or part):log():gmatch("HANDLED (%S+) (%S+)") do
      local e = out[mid] or { n = 0, what = what }
      e.n = e.n + 1
      out[mid] = e
    end
    return out
  end
  -- every saga terminal and as its input says; each command that should have run took effect exactly once
  -- (in the participant process proc, default part)
  local function check_all(ids, inputs, proc)
    orch:wait_all(ids, 90)
    for i, id in ipairs(ids) do check_order(orch:saga(id), inputs[i]) end
    local per_saga = {}
    for mid, e in pairs(handled(proc)) do
      assert.are.equal(1, e.n, "command " .. mid .. " (" .. e.what .. ") took effect " .. e.n .. " times")
      local sid = mid:match("^([^.]+)")
      per_saga[sid] = per_saga[sid] or {}
      table.insert(per_saga[sid], e.what)
    end
    for i, id in ipairs(ids) do
      local cmds = per_saga[id] or {}
      table.sort(cmds)
      local want = inputs[i].card == "ok" and { "Charge", "CreateShipment", "Reserve" } or { "Charge", "Release", "Reserve" }
      assert.are.same(want, cmds, "commands that took effect for saga " .. id)
    end
  end
  local function start_orders(n, tag)
    local ids, inputs = {}, {}
    for i = 1, n do
      inputs[i] = order_input(i, tag)
      ids[i] = orch:start_saga("OrderProcessing", inputs[i])
    end
    return ids, inputs
  end
  local function participant(env, name)
    return H.proc { name = name or "amqp1-part", dir = orch.dir,
      cmd = (env and ("env " .. env .. " ") or "") .. H.python .. " -u tests/amqp1/participant.py " .. H.q(BASE) .. " " ..
        PREFIX .. " " .. H.q(state) .. " " .. table.concat(services, " ") }
  end

  setup(function()
    H.broker_up()
    suffix = H.uid()
    hid = "spec-amqp1-" .. suffix
    services = {}
    for _, svc in ipairs(H.sample_services) do services[#services + 1] = svc .. "_" .. suffix end
    local args = { "declare", H.pika_url(), "saga" }
    for _, svc in ipairs(services) do args[#args + 1] = svc end
    args[#args + 1] = "--"
    args[#args + 1] = hid
    tool(table.unpack(args))
    orch = H.host { name = "amqp1-orch", host_id = hid, args = "--amqp1 " .. H.q(AMQP1_URL),
      scripts = H.samples(suffix, { "order_processing.lua" }) }
    orch:script("notify.lua", ([[
local saga = require "saga"
saga.define { name = "Notify", steps = { { name = "Publish", action = function(ctx)
  ctx:publish("orders_@S@", "Placed", { order_id = ctx.input.order_id })
end } } }
saga.define { name = "Waiter", steps = { { name = "Wait", action = function(ctx)
  ctx.data.got = ctx:wait("go", { timeout = "60s" })
end } } }
]]):gsub("@S@", suffix))
    state = orch.dir .. "/participant-state.jsonl"
    orch:start()
    orch:wait_log("amqp1: connected to", 30)
    part = participant()
    part:start()
    part:wait_log("READY", 30)
  end)
  teardown(function()
    if orch then orch:stop() end
    if part then part:stop() end
    if services then H.delete_queues(services, { hid }) end
  end)

  it("runs sagas to their end: completed, or compensated for a declined card; each effect once", function()
    local ids, inputs = start_orders(24, "plain")
    check_all(ids, inputs)
    -- the commands went as AMQP 1.0 messages: nothing was handled in the orchestrator
    assert.are.equal(0, H.count(orch:log(), "HANDLED"))
  end)

  it("with a participant written with rhea (JavaScript, not Proton) replying amqp-value bodies: each effect once", function()
    assert(H.read("tests/amqp1/node_modules/rhea/package.json"),
      "rhea is not installed: npm ci --prefix tests/amqp1 (bash .ci/deps.sh --test does it)")
    part:stop()
    local rhea = H.proc { name = "amqp1-rhea", dir = orch.dir, cmd = "node tests/amqp1/participant.js " .. H.q(BASE) .. " " ..
      PREFIX .. " " .. H.q(orch.dir .. "/rhea-state.jsonl") .. " " .. table.concat(services, " ") }
    rhea:start()
    local ok, err = pcall(function()
      rhea:wait_log("READY", 30)
      local ids, inputs = start_orders(16, "rhea")
      check_all(ids, inputs, rhea)
    end)
    rhea:stop()
    part:start()
    part:wait_log("READY", 30)
    assert(ok, err)
  end)

  it("a participant killed mid-run: its redelivered command gets the recorded reply, no effect twice", function()
    part:stop()
    local crashing = participant("CRASH_AFTER=7", "amqp1-crash")
    crashing:start()
    crashing:wait_log("READY", 30)
    local ids, inputs = start_orders(12, "crash")
    crashing:wait_log("CRASHING", 60)
    -- it exited by itself (os._exit): an orphan nobody has reaped yet is a zombie (state Z)
    local deadline = os.time() + 10
    local function exited()
      local stat = H.read("/proc/" .. crashing.pid .. "/stat")
      return not stat or stat:match("^%d+ %b() (%a)") == "Z"
    end
    while not exited() and os.time() < deadline do H.sleep(0.05) end
    assert.is_true(exited(), "the participant did not exit after CRASHING")
    part:start() -- the next run, same state file
    part:wait_log("READY", 30)
    local crashed_log = crashing:log()
    orch:wait_all(ids, 90)
    for i, id in ipairs(ids) do check_order(orch:saga(id), inputs[i]) end
    -- the command the crashed run recorded but never answered came back and was answered from the record
    local last = crashed_log:match(".*HANDLED (%S+) %S+\nCRASHING")
    assert.is_string(last, crashed_log)
    part:wait_log("DUPLICATE " .. last:gsub("%p", "%%%0"), 20)
    -- over both runs, each command took effect once
    local counts = {}
    for mid in (crashed_log .. part:log()):gmatch("HANDLED (%S+)") do counts[mid] = (counts[mid] or 0) + 1 end
    for mid, n in pairs(counts) do assert.are.equal(1, n, "command " .. mid .. " took effect " .. n .. " times") end
    for i, id in ipairs(ids) do
      local n = 0
      for mid in pairs(counts) do if mid:sub(1, #id) == id then n = n + 1 end end
      assert.are.equal(3, n, "commands that took effect for saga " .. id .. " (" .. inputs[i].card .. ")")
    end
  end)

  it("a malformed message is rejected with its reason and dead-lettered; the host keeps working", function()
    local out = tool("send", BASE, PREFIX .. "saga.reply." .. hid, cjson.encode { body = "not json {",
      correlation_id = "bad-" .. suffix, properties = { ["saga-status"] = "ok" } })
    assert.matches("ACCEPTED", out)
    local dlq = "saga.reply." .. hid .. ".dlq"
    local deadline = os.time() + 20 * H.slow
    local n
    repeat
      n = tonumber((H.amqp_tool("count", dlq):gsub("%s+$", "")))
      if n == 1 then break end
      H.sleep(0.2)
    until os.time() > deadline
    assert.are.equal(1, n, "the malformed reply did not reach " .. dlq)
    -- the reason went with the reject (Service Bus keeps it as DeadLetterErrorDescription) and to the log
    orch:wait_log("malformed message on saga%.reply%.[%w%-]+: body is not valid JSON", 10)
    local got = cjson.decode(H.amqp_tool("get", dlq, "5"))
    assert.is_table(got)
    assert.are.equal("bad-" .. suffix, got.correlation_id)
    assert.are.equal("not json {", got.body)
    local ids, inputs = start_orders(2, "after-bad")
    check_all(ids, inputs)
  end)

  it("a broker restart mid-run: the host and the participant reconnect, every saga ends, no effect twice", function()
    local function reconnects()
      local _, text = orch:get("/metrics")
      return tonumber(tostring(text):match('sagahost_transport_reconnects_total{transport="amqp1"} (%d+)'))
    end
    local before = reconnects()
    assert.is_number(before, "no reconnect counter for the amqp1 transport in /metrics")
    local ids, inputs = start_orders(10, "restart")
    H.rabbitmqctl("stop_app")
    -- sagas started while the broker is down: their commands wait in the outbox
    local more_ids, more_inputs = start_orders(10, "restart-down")
    for i, id in ipairs(more_ids) do ids[#ids + 1] = id; inputs[#inputs + 1] = more_inputs[i] end
    orch:wait_log("amqp1: connection to [%d%.:]+ lost", 10)
    H.sleep(1)
    H.rabbitmqctl("start_app")
    H.broker_up()
    check_all(ids, inputs)
    local deadline = os.time() + 20
    while reconnects() <= before and os.time() < deadline do H.sleep(0.1) end
    assert.is_true(reconnects() > before, "no reconnect counted")
  end)

  it("the host killed mid-run (kill -9) and started again: its unsettled replies come back, every saga ends, each effect once", function()
    local before = H.count(part:log(), "HANDLED")
    local ids, inputs = start_orders(30, "hostkill")
    -- killed once 12 of the 90 commands took effect: replies are in flight or held unsettled
    local deadline = os.time() + 30
    while H.count(part:log(), "HANDLED") < before + 12 and os.time() < deadline do H.sleep(0.01) end
    -- the participant held (SIGSTOP) while more sagas start, so that those are certainly running when the
    -- host is killed, however fast the first ones went: their first commands are at the broker
    os.execute("kill -STOP " .. part.pid)
    local more_ids, more_inputs = start_orders(10, "hostkill-held")
    for i, id in ipairs(more_ids) do ids[#ids + 1] = id; inputs[#inputs + 1] = more_inputs[i] end
    deadline = H.now() + 20 * H.slow
    while true do -- confirmed by the broker: the outbox is empty
      local _, _, text = orch:get("/metrics")
      local depth = tonumber(text:match("\nsagahost_outbox_depth (%d+)"))
      if depth == 0 then break end
      if H.now() > deadline then
        os.execute("kill -CONT " .. part.pid)
        error("the broker has not confirmed the host's commands: outbox depth " .. tostring(depth))
      end
      H.sleep(0.05)
    end
    orch:kill9()
    os.execute("kill -CONT " .. part.pid)
    orch:start()
    orch:wait_log("amqp1: connected to", 30)
    -- it did die mid-run: it recovered sagas that were still running
    assert.is_truthy(tonumber(orch:wait_log("recovered (%d+) saga", 10)) > 0, "the host was killed after every saga ended")
    check_all(ids, inputs)
  end)

  it("sagahost bench --amqp1: every bench saga completes through a participant process", function()
    -- 64 in flight: a delivery handed to the engine from inside its own publish loop once corrupted it
    local bench = { "bench_inventory", "bench_payment", "bench_shipping" }
    local hosts = { "sagahost-bench", "sagahost-bench-participant" }
    local args = { "declare", H.pika_url() }
    for _, q in ipairs(bench) do args[#args + 1] = q end
    args[#args + 1] = "--"
    for _, h in ipairs(hosts) do args[#args + 1] = h end
    tool(table.unpack(args))
    local code, out, err = H.run(H.bin .. " bench --sagas 600 --concurrency 64 --fail-every 6 --amqp1 " .. H.q(AMQP1_URL))
    H.delete_queues(bench, hosts)
    assert.are.equal(0, code, err)
    local r = cjson.decode(out:match("({.-})%s*$"))
    assert.are.equal("amqp1", r.mode)
    assert.are.equal(600, r.sagas)
    assert.are.equal(500, r.completed)
    assert.are.equal(100, r.compensated)
  end)

  it("ctx:publish goes to the events address with subject <topic>.<event> and the saga's properties", function()
    local q = "spec-amqp1-events-" .. suffix
    tool("bind-events", H.pika_url(), q, "orders_" .. suffix .. ".#")
    local id = orch:start_saga("Notify", { order_id = "o-ev" })
    assert.are.equal("completed", orch:wait(id, nil, 30).status)
    local got = cjson.decode(tool("get", BASE, PREFIX .. q, "15"))
    pcall(H.amqp_tool, "delete", q)
    assert.is_table(got, "no event arrived in " .. q)
    assert.are.equal("orders_" .. suffix .. ".Placed", got.subject)
    assert.are.same({ order_id = "o-ev" }, cjson.decode(got.body))
    assert.are.equal("application/json", got.content_type)
    assert.is_true(got.durable)
    assert.matches("^" .. id:gsub("%-", "%%-") .. "%.", got.id)
    assert.are.equal(id, got.properties["saga-id"])
    assert.are.equal("Notify", got.properties["saga-type"])
    assert.are.equal(0, got.properties.step)
    assert.are.equal(1, got.properties.attempt)
  end)

  it("a signal sent as an AMQP 1.0 message to saga.svc.saga (subject signal) reaches the saga's ctx:wait", function()
    local id = orch:start_saga("Waiter", {})
    H.sleep(0.3)
    local out = tool("send", BASE, PREFIX .. "saga.svc.saga", cjson.encode { id = "sig-" .. suffix, subject = "signal",
      body = '{"ref":"pay-42"}', properties = { ["signal-name"] = "go", ["saga-id"] = id } })
    assert.matches("ACCEPTED", out)
    local s = orch:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    assert.are.same({ ref = "pay-42" }, s.data.got)
  end)

  it("over amqps:// (TLS, the broker's certificate and host name checked): a saga completes", function()
    local dir = orch.dir .. "/tls"
    os.execute("mkdir -p " .. H.q(dir))
    local code, out = H.sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout " .. H.q(dir .. "/key.pem") .. " -out " ..
      H.q(dir .. "/cert.pem") .. " -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>&1")
    assert(code == 0, out)
    local port = H.broker_url:match(":(%d+)/?$")
    local proxy = H.proc { name = "tls-proxy", dir = orch.dir, cmd = H.python .. " -u tests/amqp1/tls_proxy.py " ..
      H.q(dir .. "/cert.pem") .. " " .. H.q(dir .. "/key.pem") .. " " .. port }
    proxy:start()
    local tls_port = proxy:wait_log("LISTENING (%d+)", 20)
    local tls_hid = hid .. "-tls"
    tool("declare", H.pika_url(), "--", tls_hid)
    local function url(host)
      return "amqps://guest:guest@" .. host .. ":" .. tls_port .. "?prefix=" .. PREFIX .. "&cacert=" .. dir .. "/cert.pem"
    end
    local tls = H.host { name = "amqp1-tls", host_id = tls_hid, args = "--amqp1 " .. H.q(url("localhost")),
      scripts = H.samples(suffix, { "order_processing.lua" }) }
    local wrong = H.host { name = "amqp1-tls-wrong", host_id = tls_hid .. "-x", args = "--amqp1 " .. H.q(url("127.0.0.1")),
      scripts = H.samples(suffix, { "order_processing.lua" }) }
    local ok, err = pcall(function()
      tls:start()
      tls:wait_log("amqp1: connected to localhost:%d+ over TLS", 30)
      local input = order_input(1, "tls")
      check_order(tls:wait(tls:start_saga("OrderProcessing", input), nil, 30), input)
      -- the certificate names localhost, not 127.0.0.1: refused
      wrong:start()
      wrong:wait_log("certificate verify failed", 20)
      assert.is_nil((H.read(wrong.curlog) or ""):find("amqp1: connected", 1, true))
    end)
    tls:stop()
    wrong:stop()
    proxy:stop()
    H.delete_queues({}, { tls_hid })
    assert(ok, err)
  end)
end)

describe("AMQP 1.0 on the wire, against a minimal peer (tests/amqp1/fake_peer.py, plain queue names as on Service Bus)", function()
  it("a message the engine refuses is rejected with the dead-letter error Service Bus reads", function()
    local hid = "spec-amqp1-peer-" .. H.uid()
    local dir = H.tmpdir("amqp1-peer")
    local peer = H.proc { name = "peer", dir = dir, cmd = H.python .. " -u tests/amqp1/fake_peer.py " ..
      H.q("saga.reply." .. hid) .. " " .. H.q(cjson.encode { body = "{}", correlation_id = "nobody-" .. hid,
        properties = { ["saga-status"] = "ok" } }) }
    peer:start()
    local port = peer:wait_log("LISTENING (%d+)", 20)
    local host = H.host { name = "amqp1-peer-host", host_id = hid, args = "--amqp1 amqp://127.0.0.1:" .. port,
      scripts = { ["noop.lua"] = 'local saga = require "saga"\nsaga.define { name = "Noop", steps = {} }\n' } }
    local ok, err = pcall(function()
      host:start()
      host:wait_log("amqp1: connected to 127%.0%.0%.1:%d+ %(prefetch 256, queue addresses <queue>%)", 20)
      local line = peer:wait_log("(%b{})", 20)
      local got = cjson.decode(line)
      assert.are.equal("rejected", got.outcome)
      assert.are.equal("com.microsoft:dead-letter", got.condition)
      assert.are.equal("reply correlation_id does not name a saga operation", got.description)
      assert.are.same({ DeadLetterReason = "sagahost: refused",
        DeadLetterErrorDescription = "reply correlation_id does not name a saga operation" }, got.info)
    end)
    host:stop()
    peer:stop()
    assert(ok, err)
  end)
end)

describe("AMQP 1.0: a sender link the broker closes (Service Bus detaches links, refuses missing queues)", function()
  it("is attached again: the connection stays, the unconfirmed send goes again with its message-id", function()
    local hid = "spec-amqp1-detach-" .. H.uid()
    local dir = H.tmpdir("amqp1-detach")
    local peer = H.proc { name = "peer", dir = dir, cmd = H.python .. " -u tests/amqp1/fake_peer.py none '{}' saga.svc.real" }
    peer:start()
    local port = peer:wait_log("LISTENING (%d+)", 20)
    local host = H.host { name = "amqp1-detach-host", host_id = hid, args = "--amqp1 amqp://127.0.0.1:" .. port, scripts = {
      ["sends.lua"] = 'local saga = require "saga"\n' ..
        'saga.define { name = "SendReal", steps = { { name = "Send", action = function(ctx) ctx:send("real", "Hello", {}) end } } }\n' } }
    local ok, err = pcall(function()
      host:start()
      host:wait_log("amqp1: connected to", 20)
      local id = host:start_saga("SendReal", {})
      local esc = id:gsub("%-", "%%-")
      local mid = peer:wait_log("DETACHED saga%.svc%.real (" .. esc .. "%S+)", 20)
      host:wait_log("the broker closed the link to saga%.svc%.real %(amqp:link:detach%-forced: [^)]*%); 1 unconfirmed sends go again in 1s", 20)
      -- asked for again after the backoff, on a new link of the same connection, with the same message-id
      peer:wait_log("RECEIVED saga%.svc%.real " .. mid:gsub("%p", "%%%0"), 20)
      local id2 = host:start_saga("SendReal", {})
      peer:wait_log("RECEIVED saga%.svc%.real " .. id2:gsub("%-", "%%-"), 20)
      local log = H.read(host.curlog)
      assert.is_nil(log:find("connection to 127.0.0.1:" .. port .. " lost", 1, true), log)
      assert.are.equal(1, H.count(log, "amqp1: connected to"))
      -- both confirmed: nothing left in the outbox
      local deadline = os.time() + 10
      local text
      repeat
        local _, m = host:get("/metrics")
        text = tostring(m)
        if text:find("sagahost_outbox_depth 0", 1, true) then break end
        H.sleep(0.1)
      until os.time() > deadline
      assert.truthy(text:find("sagahost_outbox_depth 0", 1, true), text:match("sagahost_outbox_depth %d+"))
    end)
    host:stop()
    peer:stop()
    assert(ok, err)
  end)
end)

describe("AMQP 1.0: lock renewal against a peer acting like Service Bus (peek-lock, the queue's $management node)", function()
  -- The peer (tests/amqp1/fake_peer.py with lock_ms) locks each delivery for 1.5 s as Service Bus does for
  -- the queue's lock duration: a renew-lock request after that, or an accept after that, finds the lock
  -- gone. The host's handler keeps each command for longer (busy Lua, preempted: the loop runs on), so
  -- the delivery is held past its lock unless the host renews it.
  local function scenario(o)
    local uid = H.uid()
    local svc = "slow_" .. uid
    local queue = "saga.svc." .. svc
    local msgs = {}
    for i = 1, o.n or 1 do
      msgs[i] = { id = "cmd-" .. i .. "-" .. uid, subject = "Work", body = cjson.encode { ms = o.cpu_ms },
        reply_to = "peer.replies", delivery_count = o.dc and o.dc[i] or nil }
    end
    local dir = H.tmpdir("amqp1-lock")
    local peer = H.proc { name = "peer", dir = dir, cmd = H.python .. " -u tests/amqp1/fake_peer.py " .. H.q(queue) .. " " ..
      H.q(cjson.encode { messages = msgs, lock_ms = 1500, locked_until = o.locked_until, lose = o.lose,
        refuse_management = o.refuse }) }
    peer:start()
    local port = peer:wait_log("LISTENING (%d+)", 20)
    local host = H.host { name = "amqp1-lock-host", host_id = "spec-amqp1-lock-" .. uid,
      args = "--lua-step-cpu 60s --lua-budget 100000000000 --amqp1 " .. H.q("amqp://127.0.0.1:" .. port .. (o.opts or "")),
      scripts = { ["slow.lua"] = ([[
local saga = require "saga"
saga.handle("SVC", "Work", function(p, msg)
  print("HANDLING " .. msg.message_id)
  local t = os.clock() while os.clock() - t < p.ms / 1000 do end -- busy, but preempted: the loop runs on
  return { done = msg.message_id }
end)
]]):gsub("SVC", svc) } }
    local r = { peer = peer, host = host, msgs = msgs, queue = queue }
    -- the tokens the peer gave, the outcome of each delivery, the renew-lock requests in order
    function r.read()
      local text = peer:log()
      r.token, r.outcome, r.renews = {}, {}, {}
      for id, tok in text:gmatch("DELIVERED (%S+) (%S+)") do r.token[id] = tok end
      for line in text:gmatch("[^\n]+") do
        if line:match('^{"') then
          local got = cjson.decode(line)
          if got.id ~= cjson.null then r.outcome[got.id] = got end
        elseif line:match("^RENEW ") then
          r.renews[#r.renews + 1] = cjson.decode(line:sub(7))
        end
      end
      return r
    end
    function r.has(renew, tok)
      for _, t in ipairs(renew.tokens) do if t == tok then return true end end
      return false
    end
    -- runs f(r) once every delivery has an outcome (the host accepted or rejected it)
    function r.run(f, before)
      local ok, err = pcall(function()
        host:start()
        host:wait_log("amqp1: connected to", 20)
        if before then before(r) end
        local deadline = os.time() + 60 * H.slow
        repeat
          r.read()
          local n = 0
          for _ in pairs(r.outcome) do n = n + 1 end
          if n == #msgs then break end
          H.sleep(0.1)
        until os.time() > deadline
        for _, m in ipairs(msgs) do assert.is_table(r.outcome[m.id], "no outcome for " .. m.id .. ":\n" .. peer:log()) end
        f(r)
      end)
      host:stop()
      peer:stop()
      assert(ok, err)
    end
    return r
  end

  it("renew=1: a held delivery's lock is renewed before it expires, at the lock time the broker gives; accepted after; renewal stops then", function()
    local s = scenario { n = 1, cpu_ms = 4500, opts = "?renew=1" } -- lock_ms stays 30000: the broker's 1.5 s rules
    s.run(function(r)
      local id = s.msgs[1].id
      local tok = r.token[id]
      assert.is_string(tok)
      local got = r.outcome[id]
      assert.are.equal("accepted", got.outcome)
      assert.is_false(got.lock_expired, "the lock expired before the host accepted the delivery")
      local n = 0
      for _, rn in ipairs(r.renews) do
        assert.are.same({ tok }, rn.tokens)
        assert.are.equal(200, rn.status, "a renewal came after the lock had expired: " .. cjson.encode(rn))
        assert.are.equal("com.microsoft:renew-lock", rn.operation)
        assert.are.equal(s.queue, rn.associated_link_name)
        n = n + 1
      end
      -- held about 4.5 s, a 1.5 s lock renewed at 2/3 of it: every second
      assert.is_true(n >= 3, "only " .. n .. " renewals in " .. #r.renews .. ":\n" .. s.peer:log())
      assert.truthy(s.host:log():find("amqp1: lock renewal on", 1, true))
      -- settled: no more renewals of it
      H.sleep(2)
      assert.are.equal(n, #r.read().renews)
    end)
  end)

  it("lock_ms= when the broker gives no lock time; a lost lock (410) ends the renewal of that token alone, logged", function()
    local s = scenario { n = 2, cpu_ms = 2500, opts = "?renew=1&lock_ms=1500", locked_until = false, lose = { 1 } }
    s.run(function(r)
      local a, b = s.msgs[1].id, s.msgs[2].id
      local ta, tb = r.token[a], r.token[b]
      -- the two held deliveries went in one request; the peer failed it whole (one lock is lost) ...
      local first = r.renews[1]
      assert.is_table(first, s.peer:log())
      assert.is_true(r.has(first, ta) and r.has(first, tb), cjson.encode(first))
      assert.are.equal(410, first.status)
      -- ... then each alone: the lost one's 410 ends its renewal; the other goes on being renewed
      local lost_at
      for i, rn in ipairs(r.renews) do
        if lost_at then assert.is_false(r.has(rn, tb), "token " .. tb .. " renewed after its 410: " .. cjson.encode(rn)) end
        if i > 1 and r.has(rn, tb) then
          assert.are.same({ tb }, rn.tokens)
          assert.are.equal(410, rn.status)
          lost_at = i
        end
      end
      assert.is_number(lost_at, "the lost token was not asked alone:\n" .. s.peer:log())
      local ok_a = 0
      for i, rn in ipairs(r.renews) do
        if i > 1 and r.has(rn, ta) then
          assert.are.same({ ta }, rn.tokens)
          assert.are.equal(200, rn.status, cjson.encode(rn))
          ok_a = ok_a + 1
        end
      end
      assert.is_true(ok_a >= 2, "the held delivery was renewed " .. ok_a .. " times:\n" .. s.peer:log())
      assert.are.equal("accepted", r.outcome[a].outcome)
      assert.is_false(r.outcome[a].lock_expired)
      -- the lost one: settled late (Service Bus would deliver it again; the inbox would answer it)
      assert.is_true(r.outcome[b].lock_expired)
      assert.truthy(s.host:log():find("lock token " .. tb .. ") was not renewed (410: The lock supplied is invalid", 1, true),
        s.host:log())
    end)
  end)

  it("is off for a host not under .servicebus. (RabbitMQ has no $management): the lock of a held delivery runs out", function()
    local s = scenario { n = 1, cpu_ms = 2500 }
    s.run(function(r)
      local got = r.outcome[s.msgs[1].id]
      assert.are.equal("accepted", got.outcome)
      assert.is_true(got.lock_expired)
      assert.are.equal(0, #r.renews)
      assert.is_nil(s.host:log():find("lock renewal on", 1, true))
    end)
  end)

  it("a refused $management link costs only renewal, logged and tried again: the connection and the delivery stay", function()
    local s = scenario { n = 1, cpu_ms = 3000, opts = "?renew=1", refuse = true }
    s.run(function(r)
      assert.are.equal("accepted", r.outcome[s.msgs[1].id].outcome)
      assert.is_true(r.outcome[s.msgs[1].id].lock_expired)
      assert.are.equal(0, #r.renews)
      local log = s.host:log()
      assert.truthy(log:find("amqp1: the broker closed the management link " .. s.queue .. "/$management (amqp:not-found: ", 1, true), log)
      assert.are.equal(1, H.count(log, "amqp1: connected to"))
      assert.is_nil(log:find("connection to 127.0.0.1", 1, true), log)
      -- attached again after 1 s while the delivery was held
      assert.is_true(H.count(s.peer:log(), "REFUSED sender") >= 2, s.peer:log())
    end)
  end)

  it("renew on: delivery-count 0 with first-acquirer unset is a first delivery, delivery-count 1 a redelivery", function()
    -- a redelivered command is counted in the inbox ("delivered", n) before its handler runs; a first one is not
    local s = scenario { n = 2, cpu_ms = 2500, opts = "?renew=1", dc = { 0, 1 } }
    local rows
    s.run(function(r)
      assert.are.equal("accepted", r.outcome[s.msgs[1].id].outcome)
      assert.are.equal("accepted", r.outcome[s.msgs[2].id].outcome)
      assert.are.same({ [s.msgs[2].id] = "delivered|2" }, rows)
    end, function()
      local first, again = s.msgs[1].id, s.msgs[2].id
      s.host:wait_log("HANDLING " .. first:gsub("%p", "%%%0"), 20)
      s.host:wait_log("HANDLING " .. again:gsub("%p", "%%%0"), 20)
      rows = {}
      for line in H.sql(s.host.db, "SELECT message_id, reply_status, reply_body FROM inbox WHERE message_id IN ('" ..
          first .. "', '" .. again .. "')"):gmatch("[^\n]+") do
        local mid, rest = line:match("^([^|]+)|(.*)$")
        rows[mid] = rest
      end
    end)
  end)
end)

describe("--amqp1 on the command line", function()
  it("excludes --amqp: a host uses one transport (exit 2 and why)", function()
    local dir = H.tmpdir("amqp1-flags")
    local code, _, err = H.run(H.bin .. " run --db " .. H.q(dir .. "/x.db") .. " --amqp amqp://127.0.0.1:1/ --amqp1 amqp://127.0.0.1:1 " .. H.q(dir))
    assert.are.equal(2, code)
    assert.truthy(err:find("--amqp, --amqp1 and --kafka exclude each other", 1, true), err)
  end)

  it("refuses a URL it cannot read, with the form it expects", function()
    local dir = H.tmpdir("amqp1-flags")
    for _, url in ipairs { "http://host", "amqp://u:hunter2@host/vhost", "amqp://host?prefetch=0", "amqp://host?frob=1" } do
      local code, out, err = H.run(H.bin .. " run --db " .. H.q(dir .. "/x.db") .. " --listen 127.0.0.1:0 --amqp1 " .. H.q(url) ..
        " " .. H.q(dir))
      assert.are_not.equal(0, code, url)
      assert.truthy((out .. err):find("amqp1", 1, true), url .. ": " .. out .. err)
      -- a password (a Service Bus key) is never printed
      assert.is_nil((out .. err):find("hunter2", 1, true), out .. err)
    end
  end)
end)
