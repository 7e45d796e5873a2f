-- End-to-end: GET /metrics against what the host did. The step duration histograms are checked against
-- the attempts in each saga's history (GET /v1/sagas/{id}), the commit histogram, the script load
-- errors across hot reloads, and the transport and outbox gauges with a broker that cannot be reached
-- and then can.
local H = require "helper"

-- A Prometheus text page as a list of samples { name, labels = { k = v }, value }.
local function parse(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local name, labels, value = line:match("^([%w_:]+)(%b{}) (%S+)$")
      if not name then
        name, value = line:match("^([%w_:]+) (%S+)$")
        labels = "{}"
      end
      assert(name, "not a sample line: " .. line)
      local l = {}
      for k, v in labels:gmatch('([%w_]+)="(.-)"[,}]') do l[k] = v end
      out[#out + 1] = { name = name, labels = l, value = value == "+Inf" and math.huge or tonumber(value) }
    end
  end
  return out
end

-- the samples of name whose labels include every one of want
local function pick(samples, name, want)
  local out = {}
  for _, s in ipairs(samples) do
    local ok = s.name == name
    for k, v in pairs(want or {}) do ok = ok and s.labels[k] == v end
    if ok then out[#out + 1] = s end
  end
  return out
end

-- the value of the one sample of name with these labels (nil if there is none)
local function value(samples, name, want)
  local got = pick(samples, name, want)
  assert(#got <= 1, #got .. " samples of " .. name .. " match")
  return got[1] and got[1].value
end

local function scrape(host)
  local code, _, text = host:get("/metrics")
  assert.are.equal(200, code)
  return parse(text), text
end

-- Checks one histogram series (labels: all but le): buckets cumulative in le order, +Inf = _count.
-- Returns _count, and the buckets as { {le, n}, ... }.
local function check_histogram(samples, name, labels)
  local buckets = {}
  for _, s in ipairs(pick(samples, name .. "_bucket", labels)) do
    buckets[#buckets + 1] = { s.labels.le == "+Inf" and math.huge or tonumber(s.labels.le), s.value }
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  assert.is_true(#buckets >= 2, "no buckets for " .. name)
  for i = 2, #buckets do
    assert.is_true(buckets[i][2] >= buckets[i - 1][2], name .. ": bucket le=" .. buckets[i][1] .. " is below the one before")
  end
  assert.are.equal(math.huge, buckets[#buckets][1])
  local count = value(samples, name .. "_count", labels)
  assert.are.equal(count, buckets[#buckets][2], name .. ": +Inf bucket differs from _count")
  assert.is_true(value(samples, name .. "_sum", labels) >= 0)
  return count, buckets
end

local ORDER = [[
local saga = require "saga"
saga.define {
  name = "MetricsOrder",
  retry = { attempts = 2, backoff = "fixed", initial = "10ms", jitter = false },
  steps = {
    { name = "reserve", action = function(ctx) ctx:sleep("30ms") end, compensate = function(ctx) end },
    { name = "charge",
      action = function(ctx) if ctx.input.decline then error("card declined") end end,
      compensate = function(ctx) end },
    { name = "ship",
      action = function(ctx)
        if ctx.input.refuse then ctx:fail("no address") end
        ctx:publish("orders", "Shipped", { n = ctx.input.n })
      end },
  },
}
saga.define { name = "MetricsPing", steps = { { name = "ping", action = function(ctx) end } } }
]]

describe("/metrics", function()
  local host
  setup(function()
    host = H.host { name = "metrics", scripts = { ["order.lua"] = ORDER } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("has a step duration histogram per type, step, phase and outcome that matches the sagas' histories", function()
    local ids = {}
    local inputs = { {}, {}, {}, { decline = true }, { decline = true }, { refuse = true } }
    for i, input in ipairs(inputs) do
      input.n = i
      ids[#ids + 1] = host:start_saga("MetricsOrder", input)
    end
    for _ = 1, 3 do ids[#ids + 1] = host:start_saga("MetricsPing", {}) end
    -- what the histories say: attempts per type|step|phase|outcome
    local want, statuses = {}, {}
    for _, id in ipairs(ids) do
      local s = host:wait(id)
      statuses[s.status] = (statuses[s.status] or 0) + 1
      for _, st in ipairs(s.steps) do
        if st.phase ~= "saga" then
          local k = s.type .. "|" .. st.name .. "|" .. st.phase .. "|" .. st.status
          want[k] = (want[k] or 0) + 1
        end
      end
    end
    assert.are.same({ completed = 6, compensated = 3 }, statuses)
    -- the histories hold what the script does: retries, failures, compensations
    assert.are.equal(4, want["MetricsOrder|charge|action|failed"])          -- 2 declines x 2 attempts
    assert.are.equal(1, want["MetricsOrder|ship|action|failed"])            -- ctx:fail: no retry
    assert.are.equal(3, want["MetricsOrder|reserve|compensate|completed"])
    assert.are.equal(1, want["MetricsOrder|charge|compensate|completed"])
    assert.are.equal(3, want["MetricsPing|ping|action|completed"])

    local samples, text = scrape(host)
    assert.matches("# TYPE sagahost_step_duration_seconds histogram", text, 1, true)
    local seen = 0
    for _, s in ipairs(pick(samples, "sagahost_step_duration_seconds_count")) do
      local l = s.labels
      local k = l.type .. "|" .. l.step .. "|" .. l.phase .. "|" .. l.outcome
      assert.are.equal(want[k], s.value, k)
      seen = seen + 1
    end
    local nwant = 0
    for _ in pairs(want) do nwant = nwant + 1 end
    assert.are.equal(nwant, seen, "one series per type, step, phase and outcome seen in the histories")
    for k in pairs(want) do
      local t, step, phase, outcome = k:match("^(.-)|(.-)|(.-)|(.-)$")
      check_histogram(samples, "sagahost_step_duration_seconds", { type = t, step = step, phase = phase, outcome = outcome })
    end
    -- seconds: every reserve action slept 30 ms
    local n, buckets = check_histogram(samples, "sagahost_step_duration_seconds",
      { type = "MetricsOrder", step = "reserve", phase = "action", outcome = "completed" })
    assert.are.equal(6, n)
    for _, b in ipairs(buckets) do
      if b[1] <= 0.01 then assert.are.equal(0, b[2], "reserve took 30 ms, yet le=" .. b[1] .. " counts it") end
    end
    assert.is_true(value(samples, "sagahost_step_duration_seconds_sum",
      { type = "MetricsOrder", step = "reserve", phase = "action", outcome = "completed" }) >= 6 * 0.029)

    -- the per-type counters are still there
    assert.are.equal(6, value(samples, "sagahost_type_started_total", { type = "MetricsOrder" }))
    assert.are.equal(3, value(samples, "sagahost_type_finished_total", { type = "MetricsOrder", status = "compensated" }))
    assert.are.equal(3, value(samples, "sagahost_type_finished_total", { type = "MetricsPing", status = "completed" }))
    assert.are.equal(5, value(samples, "sagahost_type_attempts_failed_total", { type = "MetricsOrder" }))
    assert.are.equal(0, value(samples, "sagahost_metrics_dropped_total", { family = "step_duration" }))
    assert.are.equal(0, value(samples, "sagahost_metrics_dropped_total", { family = "type" }))
  end)

  it("has a commit duration histogram, and the in-process transport and its outbox", function()
    local samples, text = scrape(host)
    assert.matches("# TYPE sagahost_store_commit_duration_seconds histogram", text, 1, true)
    local n = check_histogram(samples, "sagahost_store_commit_duration_seconds", {})
    assert.is_true(n > 0)
    assert.is_true(n <= value(samples, "sagahost_store_commits_total"))
    assert.are.equal(1, value(samples, "sagahost_transport_connected", { transport = "local" }))
    assert.are.equal(0, value(samples, "sagahost_transport_reconnects_total", { transport = "local" }))
    -- every event published (ship) was confirmed: nothing is left in the outbox
    assert.are.equal(0, value(samples, "sagahost_outbox_depth"))
  end)

  it("counts script load failures and the files failing now, across hot reloads", function()
    local samples = scrape(host)
    local failures0 = value(samples, "sagahost_script_load_failures_total")
    assert.are.equal(0, failures0)
    assert.are.equal(0, value(samples, "sagahost_script_files_failing"))
    -- written elsewhere and renamed in, so that no half-written file is ever loaded
    local function drop(name, src)
      H.write(host.scripts .. "/.tmp", src)
      assert(os.rename(host.scripts .. "/.tmp", host.scripts .. "/" .. name))
    end
    local function wait_metrics(pred, what)
      local deadline = os.time() + 10 * H.slow
      repeat
        local s = scrape(host)
        if pred(s) then return s end
        H.sleep(0.1)
      until os.time() > deadline
      error("/metrics never showed " .. what)
    end
    drop("broken.lua", 'local saga = require "saga"\nsaga.define { name = "Broken", steps = { \n')
    samples = wait_metrics(function(s) return value(s, "sagahost_script_files_failing") == 1 end, "a failing file")
    assert.are.equal(failures0 + 1, value(samples, "sagahost_script_load_failures_total"))
    -- a second broken version is another failed load
    drop("broken.lua", 'local saga = require "saga"\nerror("not yet")\n')
    samples = wait_metrics(function(s) return value(s, "sagahost_script_load_failures_total") == failures0 + 2 end,
      "the second failure")
    assert.are.equal(1, value(samples, "sagahost_script_files_failing"))
    -- fixed: nothing fails any more, and the counter keeps what happened
    drop("broken.lua", 'local saga = require "saga"\nsaga.define { name = "Broken", steps = { { name = "s", action = function() end } } }\n')
    samples = wait_metrics(function(s) return value(s, "sagahost_script_files_failing") == 0 end, "no failing file")
    assert.are.equal(failures0 + 2, value(samples, "sagahost_script_load_failures_total"))
    assert.are.equal(201, (host:post("/v1/sagas/Broken", {})))
  end)
end)

describe("/metrics over RabbitMQ", function()
  local SENDER = [[
local saga = require "saga"
saga.define { name = "Notify", steps = { { name = "send", action = function(ctx)
  ctx:send("sink_SUFFIX", "Note", { n = ctx.input.n })
end } } }
]]
  local SINK = [[
local saga = require "saga"
saga.handle("sink_SUFFIX", "Note", function(p, msg) print("HANDLED " .. msg.message_id) return {} end)
]]
  local suffix = H.uid()
  local host_id, sink_id = "spec-metrics-" .. suffix, "spec-metrics-sink-" .. suffix
  local host, sink
  setup(function() H.broker_up() end)
  teardown(function()
    if host then host:stop() end
    if sink then sink:stop() end
    H.delete_queues({ "sink_" .. suffix }, { host_id, sink_id })
  end)

  local function wait_metrics(pred, what)
    local deadline = os.time() + 20 * H.slow
    local s
    repeat
      s = scrape(host)
      if pred(s) then return s end
      H.sleep(0.1)
    until os.time() > deadline
    error("/metrics never showed " .. what .. ":\n" .. select(2, scrape(host)))
  end
  local function depth(s) return value(s, "sagahost_outbox_depth") end
  local function amqp(s, name) return value(s, name, { transport = "amqp" }) end

  it("shows the transport's state and the outbox depth while the broker is away, refuses, and takes them", function()
    -- nothing listens on port 1: the transport never connects, the sends stay in the outbox
    host = H.host { name = "metrics-amqp", amqp = "amqp://guest:guest@127.0.0.1:1/", host_id = host_id,
                    scripts = { ["notify.lua"] = SENDER:gsub("SUFFIX", suffix) } }
    host:start()
    local ids = {}
    for i = 1, 3 do ids[i] = host:start_saga("Notify", { n = i }) end
    for _, id in ipairs(ids) do assert.are.equal("completed", host:wait(id).status) end
    local samples = scrape(host)
    assert.are.equal(0, amqp(samples, "sagahost_transport_connected"))
    assert.are.equal(3, depth(samples))
    host:stop()

    -- the same database with the broker: the outbox is counted again at connect and published, but no
    -- queue takes sink commands yet: the broker returns them and they stay in the outbox
    host.opts.amqp = true
    host:start_amqp()
    local deadline = os.time() + 20 * H.slow
    while H.count(host:log(), "refused by the broker: unroutable") < 3 and os.time() < deadline do H.sleep(0.1) end
    assert.are.equal(3, H.count(host:log(), "refused by the broker: unroutable"))
    samples = scrape(host)
    assert.are.equal(1, amqp(samples, "sagahost_transport_connected"))
    assert.are.equal(0, amqp(samples, "sagahost_transport_reconnects_total"))
    assert.are.equal(3, depth(samples))

    -- a participant for the sink comes up; the broker closes the orchestrator's connection (no other):
    -- it reconnects, counts that, publishes the outbox again, and this time the broker confirms it all
    sink = H.host { name = "metrics-sink", amqp = true, host_id = sink_id, scripts = { ["sink.lua"] = SINK:gsub("SUFFIX", suffix) } }
    sink:start_amqp()
    local conns = H.rabbitmqctl("list_connections pid client_properties")
    local pid
    for line in conns:gmatch("[^\n]+") do
      if line:find("sagahost " .. host_id, 1, true) then pid = line:match("^(%S+)") end
    end
    assert(pid, "no connection of " .. host_id .. " in:\n" .. conns)
    H.rabbitmqctl("close_connection " .. H.q(pid) .. " 'metrics spec'")
    samples = wait_metrics(function(s)
      return amqp(s, "sagahost_transport_reconnects_total") == 1 and amqp(s, "sagahost_transport_connected") == 1
        and depth(s) == 0
    end, "a reconnect and an empty outbox")
    local function handled() return H.count(sink:log(), "HANDLED ") end
    deadline = os.time() + 20 * H.slow
    while handled() < 3 and os.time() < deadline do H.sleep(0.1) end
    assert.are.equal(3, handled())

    -- and what is sent now goes out and is confirmed too
    assert.are.equal("completed", host:wait(host:start_saga("Notify", { n = 4 })).status)
    wait_metrics(function(s) return depth(s) == 0 end, "an empty outbox")
    deadline = os.time() + 20 * H.slow
    while handled() < 4 and os.time() < deadline do H.sleep(0.1) end
    assert.are.equal(4, handled())
  end)
end)
