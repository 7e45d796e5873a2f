-- End-to-end over a real RabbitMQ (the tests' own node, tests/amqp-broker.sh): the orchestrator and
-- its participants are separate sagahost processes, or an independent pika client that follows only
-- docs/protocol.md. Every run uses its own service names and host ids (H.uid()) and deletes its queues
-- afterwards, so runs never see each other's messages.
local H = require "helper"
local cjson = require "cjson"

-- (a run interrupted during the restart spec leaves the node up with its app stopped: this starts the app)
local broker_up = H.broker_up
local rabbitmqctl = H.rabbitmqctl -- the tests' node only

local function order_input(i, tag)
  return { order_id = tag .. "-" .. i, sku = "book", qty = 1 + i % 3, amount = 10 + i, card = i % 4 == 0 and "declined" or "ok" }
end

local EXPECT_HISTORY = {
  ok = { "ReserveInventory:action:completed", "ProcessPayment:action:completed", "CreateShipment:action:completed" },
  declined = { "ReserveInventory:action:completed", "ProcessPayment:action:failed", "ReserveInventory:compensate:completed" },
}
local EXPECT_STATUS = { ok = "completed", declined = "compensated" }

-- checks one finished OrderProcessing saga (s from GET /v1/sagas/<id>) against its input
local function check_order(s, input)
  assert.are.equal(EXPECT_STATUS[input.card], s.status, "saga " .. s.id .. " for card " .. input.card)
  assert.are.same(EXPECT_HISTORY[input.card], H.history(s))
  assert.are.equal("r-" .. input.order_id .. "-book", s.data.reservation)
  if input.card == "ok" then
    assert.are.equal("p-" .. input.order_id, s.data.payment)
    assert.are.equal("t-" .. input.order_id, s.data.tracking)
  else
    assert.matches("card declined", s.error)
    assert.is_nil(s.data.payment)
  end
end

-- The sample OrderProcessing saga and its three participants as four sagahost processes over the broker.
-- Participants print "HANDLED <message_id> <service>.<command>" in every handler.
-- delay: seconds each participant handler works (busy), so that messages queue up
local function order_group(name, delay)
  local g = { suffix = H.uid() }
  local function host(role, files)
    return H.host { name = name .. "-" .. role, amqp = true, host_id = "spec-" .. role .. "-" .. g.suffix,
      scripts = H.samples(g.suffix, files, true, role ~= "orch" and delay or nil) }
  end
  g.orch = host("orch", { "order_processing.lua" })
  g.inventory = host("inventory", { "inventory.lua" })
  g.payment = host("payment", { "payment.lua" })
  g.shipping = host("shipping", { "shipping.lua" })
  g.participants = { g.inventory, g.payment, g.shipping }
  g.hosts = { g.orch, g.inventory, g.payment, g.shipping }
  function g.start()
    for _, h in ipairs(g.hosts) do h:start_amqp() end
  end
  function g.stop()
    for _, h in ipairs(g.hosts) do h:stop() end
    local queues = {}
    for _, svc in ipairs(H.sample_services) do
      queues[#queues + 1] = "saga.svc." .. svc .. "_" .. g.suffix
      queues[#queues + 1] = "saga.svc." .. svc .. "_" .. g.suffix .. ".dlq"
    end
    for _, h in ipairs(g.hosts) do
      queues[#queues + 1] = "saga.reply." .. h.opts.host_id
      queues[#queues + 1] = "saga.reply." .. h.opts.host_id .. ".dlq"
    end
    pcall(H.amqp_tool, "delete", table.unpack(queues))
  end
  -- message_id -> { n = times handled, what = "service.command" } over every run of every participant
  function g.handled()
    local out = {}
    for _, h in ipairs(g.participants) do
      for mid, what in h:log():gmatch("HANDLED (%S+) (%S+)") do
        local e = out[mid] or { n = 0, what = what }
        e.n = e.n + 1
        out[mid] = e
      end
    end
    return out
  end
  -- starts count sagas, returns ids and inputs
  function g.start_orders(count, tag)
    local ids, inputs = {}, {}
    for i = 1, count do
      inputs[i] = order_input(i, tag)
      ids[i] = g.orch:start_saga("OrderProcessing", inputs[i])
    end
    return ids, inputs
  end
  return g
end

-- each command of each saga took effect exactly once: the three commands it should have sent, each
-- handled by one participant once
local function check_effects_once(g, ids, inputs)
  local handled = g.handled()
  local per_saga = {}
  for mid, e in pairs(handled) do
    assert.are.equal(1, e.n, "command " .. mid .. " (" .. e.what .. ") was handled " .. e.n .. " times")
    local sid = mid:match("^([^.]+)")
    per_saga[sid] = per_saga[sid] or {}
    table.insert(per_saga[sid], (e.what:gsub("_" .. g.suffix, "")))
  end
  for i, id in ipairs(ids) do
    local got = per_saga[id] or {}
    table.sort(got)
    local want = inputs[i].card == "ok" and { "inventory.Reserve", "payment.Charge", "shipping.CreateShipment" }
      or { "inventory.Release", "inventory.Reserve", "payment.Charge" }
    assert.are.same(want, got, "commands handled for saga " .. id)
  end
end

describe("OrderProcessing over RabbitMQ, four processes", function()
  local g
  setup(function()
    broker_up()
    g = order_group("amqp-order")
    g.start()
  end)
  teardown(function() if g then g.stop() end end)

  it("a good card completes, every command handled by its participant process", function()
    local input = order_input(1, "good")
    local id = g.orch:start_saga("OrderProcessing", input)
    local s = g.orch:wait(id, nil, 30)
    check_order(s, input)
    -- each step's command was handled in the participant process of its service, not in the orchestrator
    assert.are.equal(1, H.count(g.inventory:log(), "inventory_" .. g.suffix .. ".Reserve"))
    assert.are.equal(1, H.count(g.payment:log(), "payment_" .. g.suffix .. ".Charge"))
    assert.are.equal(1, H.count(g.shipping:log(), "shipping_" .. g.suffix .. ".CreateShipment"))
    assert.are.equal(0, H.count(g.orch:log(), "HANDLED"))
  end)

  it("a declined card compensates: the reservation is released", function()
    local input = order_input(4, "declined")
    assert.are.equal("declined", input.card)
    local id = g.orch:start_saga("OrderProcessing", input)
    local s = g.orch:wait(id, nil, 30)
    check_order(s, input)
    assert.are.equal(1, H.count(g.inventory:log(), "inventory_" .. g.suffix .. ".Release"))
    assert.are.equal(0, H.count(g.shipping:log(), id))
  end)

  it("100 concurrent sagas all reach the right terminal status", function()
    local ids, inputs = g.start_orders(100, "c")
    local done = g.orch:wait_all(ids, 120)
    local completed, compensated = 0, 0
    for i, id in ipairs(ids) do
      check_order(g.orch:saga(id), inputs[i])
      if done[id].status == "completed" then completed = completed + 1 else compensated = compensated + 1 end
    end
    assert.are.equal(75, completed)
    assert.are.equal(25, compensated)
    check_effects_once(g, ids, inputs)
  end)
end)

-- it restarts the tests' own node, so it means something only when the hosts use that node
local restart_describe = H.amqp_url == H.broker_url and describe
  or function(name) pending(name .. " (SG_AMQP_URL names another broker: only the tests' node is restarted)") end

restart_describe("a broker restart in the middle of a run", function()
  local g
  local stopped = false
  setup(function()
    broker_up()
    g = order_group("amqp-restart", 0.02)
    g.start()
  end)
  teardown(function()
    if stopped then os.execute("bash tests/amqp-broker.sh ctl start_app >/dev/null 2>&1") end
    broker_up()
    if g then g.stop() end
  end)

  it("every saga reaches its terminal status and every command takes effect once", function()
    -- 50 orders started from a background loop, to participants that take 20 ms per command, so commands
    -- queue up; the broker goes down in the middle of it and comes back 2 s later. The loop starts the
    -- second half only once the broker is down (the file .down), however long rabbitmqctl's stop_app took
    -- on a loaded machine: so sagas are in flight while it is down, whatever the timing
    local out = g.orch.dir .. "/starts.txt"
    local cmd = string.format([[
for i in $(seq 1 50); do
  if [ "$i" -eq 26 ]; then n=0; while [ ! -e %s.down ] && [ "$n" -lt 1200 ]; do sleep 0.05; n=$((n + 1)); done; fi
  card=ok; [ $((i %% 4)) -eq 0 ] && card=declined
  body="{\"order_id\":\"b-$i\",\"sku\":\"book\",\"qty\":$((1 + i %% 3)),\"amount\":$((10 + i)),\"card\":\"$card\"}"
  printf '%%s %%s\n' "$i" "$(curl -s -X POST -H 'Content-Type: application/json' --data "$body" %s/v1/sagas/OrderProcessing)"
  sleep 0.05
done > %s 2>&1 &]], out, g.orch.url, out)
    os.execute(cmd)
    H.sleep(0.2)
    stopped = true
    rabbitmqctl("stop_app")
    H.write(out .. ".down", "")
    H.sleep(0.5)
    local live_while_down = g.orch:healthz().live_sagas
    H.sleep(1.5)
    rabbitmqctl("start_app")
    stopped = false
    broker_up()
    -- the background loop has finished
    local deadline = os.time() + 30 * H.slow
    local lines
    repeat
      H.sleep(0.2)
      lines = select(2, (H.read(out) or ""):gsub("\n", "\n"))
    until lines >= 50 or os.time() > deadline
    local ids, inputs = {}, {}
    for line in (H.read(out) or ""):gmatch("[^\n]+") do
      local i, json = line:match("^(%d+) (.*)$")
      i = tonumber(i)
      local ok, body = pcall(cjson.decode, json)
      assert(ok and body.id, "start " .. tostring(i) .. " failed: " .. line)
      ids[i] = body.id
      inputs[i] = order_input(i, "b")
    end
    assert.are.equal(50, #ids)
    assert.is_true(live_while_down > 0, "no saga was in flight while the broker was down")
    g.orch:wait_all(ids, 120)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
    check_effects_once(g, ids, inputs)
    -- the hosts did lose the broker and reconnect
    for _, h in ipairs(g.hosts) do
      assert.is_true(H.count(h:log(), "amqp: connected to") >= 2, "host " .. h.opts.host_id .. " did not reconnect")
    end
  end)
end)

describe("a participant killed with kill -9 mid-run", function()
  local g
  setup(function()
    broker_up()
    g = order_group("amqp-kill")
    g.start()
  end)
  teardown(function() if g then g.stop() end end)

  it("is restarted and every saga completes", function()
    local ids, inputs = {}, {}
    for i = 1, 60 do
      inputs[i] = order_input(i, "k")
      ids[i] = g.orch:start_saga("OrderProcessing", inputs[i])
      if i == 20 then g.payment:kill9() end
    end
    -- commands for payment wait in its durable queue while it is down
    H.sleep(1)
    local live = g.orch:healthz().live_sagas
    assert.is_true(live > 0, "every saga finished without the payment service")
    g.payment:start_amqp()
    g.orch:wait_all(ids, 120)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
    -- every command took effect; one that was being handled at the kill may have run twice (at least once)
    local handled = g.handled()
    for mid, e in pairs(handled) do
      assert.is_true(e.n <= 2, mid .. " handled " .. e.n .. " times")
    end
    assert.is_true(H.count(g.payment:log(), "HANDLED") >= 60)
  end)
end)

describe("a slow participant", function()
  local g
  setup(function()
    broker_up()
    g = order_group("amqp-slow", 0.03)
    g.start()
  end)
  teardown(function() if g then g.stop() end end)

  it("replies as it goes instead of holding them back until its whole prefetch window is handled", function()
    local ids, inputs = g.start_orders(40, "s")
    g.orch:wait_all(ids, 120)
    for i, id in ipairs(ids) do check_order(g.orch:saga(id), inputs[i]) end
    -- 40 commands at >= 30 ms each keep inventory busy for over a second; payment gets its first command
    -- (which needs inventory's reply) well before inventory has handled the last one
    local function stamps(h)
      local out = {}
      for ts in h:log():gmatch("(%d%d%d%d%-%d%d%-%d%dT[%d:.]+)Z info  [^\n]*HANDLED") do out[#out + 1] = ts end
      table.sort(out)
      return out
    end
    local inv, pay = stamps(g.inventory), stamps(g.payment)
    assert.are.equal(50, #inv) -- 40 Reserve, 10 Release
    assert.are.equal(40, #pay)
    assert.is_true(pay[1] < inv[#inv], "payment's first command came at " .. pay[1] ..
      ", after inventory's last at " .. inv[#inv])
  end)
end)

-- A saga calling a participant written with pika from docs/protocol.md alone.
local PIKA_SAGA = [[
local saga = require "saga"
local SVC = "@SVC@"
saga.define {
  name = "PikaCall",
  retry = { attempts = 3, backoff = "fixed", initial = "100ms" },
  steps = {
    { name = "Echo",
      action = function(ctx) ctx.data.echo = ctx:call(SVC, "Echo", { x = ctx.input.x, list = { 1, 2, 3 } }) end,
      compensate = function(ctx) ctx.data.undone = ctx:call(SVC, "Undo", { x = ctx.input.x }).undone end },
    { name = "MaybeReject",
      action = function(ctx)
        if ctx.input.reject then ctx:call(SVC, "Reject", { reason = ctx.input.reject }) end
        ctx.data.second = true
      end },
  },
}
]]

describe("a participant written with pika from docs/protocol.md", function()
  local orch, pika, suffix, svc, hid
  setup(function()
    broker_up()
    suffix = H.uid()
    svc = "pika_" .. suffix
    hid = "spec-pika-orch-" .. suffix
    orch = H.host { name = "amqp-pika", amqp = true, host_id = hid,
      scripts = { ["pika.lua"] = (PIKA_SAGA:gsub("@SVC@", svc)) } }
    pika = H.proc { name = "pika", dir = orch.dir,
      cmd = H.python .. " -u " .. H.participants .. "/pika_participant.py " .. svc .. " " .. H.q(H.pika_url()) }
    pika:start()
    pika:wait_log("READY", 30)
    orch:start_amqp()
  end)
  teardown(function()
    if orch then orch:stop() end
    if pika then pika:stop() end
    if svc then
      H.delete_queues({ svc }, { hid })
    end
  end)

  it("a saga calling it completes with its reply data", function()
    local id = orch:start_saga("PikaCall", { x = "hello" })
    local s = orch:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    assert.are.same({ "Echo:action:completed", "MaybeReject:action:completed" }, H.history(s))
    assert.are.equal("pika", s.data.echo.by)
    assert.are.same({ x = "hello", list = { 1, 2, 3 } }, s.data.echo.echo)
    assert.is_true(s.data.second)
    local mid = pika:log():match("HANDLED (" .. id:gsub("%-", "%%-") .. "%S*) Echo")
    assert.is_string(mid, "the pika participant did not log the Echo command of " .. id)
  end)

  it("a re-sent command gets the same reply without a second effect, and the extra reply is ignored", function()
    local id = orch:start_saga("PikaCall", { x = "twice" })
    local s = orch:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    local esc = id:gsub("%-", "%%-")
    local mid = pika:log():match("HANDLED (" .. esc .. "%S*) Echo")
    assert.is_string(mid)
    -- the same command again, as a host re-sends it after a reconnect
    H.amqp_tool("publish", "saga.svc." .. svc, cjson.encode { body = '{"x":"twice","list":[1,2,3]}', message_id = mid,
      correlation_id = mid, reply_to = "saga.reply." .. hid, type = "Echo",
      headers = { ["saga-id"] = id, ["saga-type"] = "PikaCall", step = 0, attempt = 1 } })
    pika:wait_log("DUPLICATE " .. mid:gsub("%p", "%%%0"), 20)
    assert.are.equal(1, H.count(pika:log(), "HANDLED " .. mid))
    -- the second reply is acked and ignored: not dead-lettered, and the saga is unchanged
    H.sleep(1)
    assert.are.equal("null", (H.amqp_tool("get", "saga.reply." .. hid .. ".dlq"):gsub("%s+$", "")))
    assert.are.equal("0", (H.amqp_tool("count", "saga.reply." .. hid):gsub("%s+$", "")))
    local again = orch:saga(id)
    assert.are.equal("completed", again.status)
    assert.are.same(s.data, again.data)
  end)

  it("an error reply with retryable=false makes the saga compensate at once", function()
    local id = orch:start_saga("PikaCall", { x = "no", reject = "not today" })
    local s = orch:wait(id, nil, 30)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Echo:action:completed", "MaybeReject:action:failed", "Echo:compensate:completed" }, H.history(s))
    assert.matches("rejected: not today", s.error)
    assert.are.same({ x = "no" }, s.data.undone)
    -- not retried despite attempts = 3: one attempt, one Reject handled
    assert.are.equal(1, s.steps[2].attempt)
    local esc = id:gsub("%-", "%%-")
    local n = 0
    for _ in pika:log():gmatch("HANDLED " .. esc .. "%S* Reject") do n = n + 1 end
    assert.are.equal(1, n)
  end)

  describe("a malformed reply", function()
    local function dlq_get()
      local got = cjson.decode(H.amqp_tool("get", "saga.reply." .. hid .. ".dlq", tostring(15 * H.slow)))
      assert.is_table(got, "nothing arrived in saga.reply." .. hid .. ".dlq")
      return got
    end

    it("without saga-status is dead-lettered with x-saga-error, and the host keeps working", function()
      H.amqp_tool("publish", "saga.reply." .. hid,
        cjson.encode { body = '{"ok":1}', correlation_id = "no-status-" .. suffix })
      local got = dlq_get()
      assert.are.equal("no-status-" .. suffix, got.correlation_id)
      assert.are.equal('{"ok":1}', got.body)
      assert.matches("saga%-status", got.headers["x-saga-error"])
      assert.are.equal("saga.reply." .. hid, got.headers["x-saga-original-routing-key"])
      assert.are.equal("", got.headers["x-saga-original-exchange"])
      -- the host keeps working
      local s = orch:wait(orch:start_saga("PikaCall", { x = "after" }), nil, 30)
      assert.are.equal("completed", s.status)
      assert.are.equal("after", s.data.echo.echo.x)
    end)

    it("with a body that is not JSON is dead-lettered", function()
      H.amqp_tool("publish", "saga.reply." .. hid,
        cjson.encode { body = "not json {", correlation_id = "bad-body-" .. suffix, headers = { ["saga-status"] = "ok" } })
      local got = dlq_get()
      assert.are.equal("bad-body-" .. suffix, got.correlation_id)
      assert.matches("not valid JSON", got.headers["x-saga-error"])
      local s = orch:wait(orch:start_saga("PikaCall", { x = "after2" }), nil, 30)
      assert.are.equal("completed", s.status)
    end)

    it("answering no saga operation is dead-lettered by the engine", function()
      H.amqp_tool("publish", "saga.reply." .. hid, cjson.encode { body = "{}", correlation_id = "nobody-" .. suffix,
        headers = { ["saga-status"] = "ok" } })
      local got = dlq_get()
      assert.are.equal("nobody-" .. suffix, got.correlation_id)
      assert.matches("does not name a saga operation", got.headers["x-saga-error"])
      assert.is_true(orch:alive())
      local s = orch:wait(orch:start_saga("PikaCall", { x = "after3" }), nil, 30)
      assert.are.equal("completed", s.status)
    end)
  end)
end)

-- The transport corks the socket for a loop iteration's publishes and acks (TCP_CORK) and uncorks it
-- before the loop waits. Were a burst left corked, the kernel would hold it up to 200 ms: each of a
-- saga's six hops would wait that long, and a saga would take over a second one at a time.
describe("sagahost bench --amqp", function()
  it("runs every saga through a participant process, one at a time in milliseconds, then 64 at once", function()
    broker_up()
    local bench = { "bench_inventory", "bench_payment", "bench_shipping" }
    local hosts = { "sagahost-bench", "sagahost-bench-participant" }
    local ok, err = pcall(function()
      local code, out, e = H.run(H.bin .. " bench --sagas 40 --concurrency 1 --fail-every 4 --amqp " .. H.q(H.amqp_url))
      assert.are.equal(0, code, e)
      local r = cjson.decode(out:match("({.-})%s*$"))
      assert.are.equal(30, r.completed)
      assert.are.equal(10, r.compensated)
      assert.is_true(r.p50_ms < 400, "one saga at a time, p50 " .. r.p50_ms .. " ms")
      print(string.format("\n  one at a time: p50 %.0f ms, p99 %.0f ms", r.p50_ms, r.p99_ms))
      code, out, e = H.run(H.bin .. " bench --sagas 600 --concurrency 64 --fail-every 6 --amqp " .. H.q(H.amqp_url))
      assert.are.equal(0, code, e)
      r = cjson.decode(out:match("({.-})%s*$"))
      assert.are.equal(500, r.completed)
      assert.are.equal(100, r.compensated)
    end)
    H.delete_queues(bench, hosts)
    assert(ok, err)
  end)
end)
