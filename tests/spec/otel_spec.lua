-- OpenTelemetry tracing (docs/operations.md, "Tracing"): real hosts export to a local OTLP/HTTP
-- receiver (tests/otel/receiver.mjs, which keeps every JSON request it gets), and the spans must form
-- one tree per saga: saga span -> attempt spans -> call client spans -> participant server spans, across a
-- kill -9 and restart, continuing a traceparent given at the start, and continued by a pika participant
-- from the traceparent header of its command.
local H = require "helper"
local cjson = require "cjson"

local SAGA = [[
local saga = require "saga"
local SVC = "@SVC@"
saga.define {
  name = "Traced",
  steps = {
    { name = "First", action = function(ctx) ctx.data.a = ctx:call(SVC, "Work", { x = 1 }) end },
    { name = "Nap", action = function(ctx) ctx:sleep(ctx.input.nap or "10ms") end },
    { name = "Last", action = function(ctx) ctx.data.b = ctx:call(SVC, "Work", { x = 2 }) end },
  },
}
saga.handle(SVC, "Work", function(p) return { got = p.x } end)
]]

local PIKA_SAGA = [[
local saga = require "saga"
saga.define {
  name = "TracedPika",
  steps = { { name = "Echo", action = function(ctx) ctx.data.echo = ctx:call("@SVC@", "Echo", { x = 1 }) end } },
}
]]

-- a saga whose compensation fails until the ledger script is replaced (quarantine, then an operator's retry)
local OP_SAGA = [[
local saga = require "saga"
saga.define {
  name = "TracedOp",
  compensate_retry = { attempts = 1 },
  steps = {
    { name = "Book", action = function(ctx) ctx:call("@LED@", "Do", {}) end,
      compensate = function(ctx) ctx:call("@LED@", "Undo", {}) end },
    { name = "Refuse", action = function(ctx) ctx:fail("refused") end },
  },
}
]]
local LEDGER_BROKEN = [[
local saga = require "saga"
saga.handle("@LED@", "Do", function() return {} end)
saga.handle("@LED@", "Undo", function() error("ledger is read-only") end)
]]
local LEDGER_FIXED = [[
local saga = require "saga"
saga.handle("@LED@", "Do", function() return {} end)
saga.handle("@LED@", "Undo", function() return { fixed = true } end)
]]

-- calls nobody answers: one with a call timeout, one that waits until an operator compensates
local DEAF_SAGA = [[
local saga = require "saga"
saga.define {
  name = "Deaf",
  steps = { { name = "Ask", retry = { attempts = 1 },
    action = function(ctx) ctx:call("@NOBODY@", "Answer", {}, { timeout = "300ms" }) end } },
}
saga.define {
  name = "Hangs",
  steps = { { name = "Wait", action = function(ctx) ctx:call("@NOBODY@", "Answer", {}) end } },
}
]]

-- the receiver: a node process writing each request as a line of dir/spans.jsonl
local function receiver(dir)
  local r = H.proc { name = "otlp", dir = dir, cmd = "node tests/otel/receiver.mjs " .. H.q(dir .. "/spans.jsonl") }
  r:start()
  r.port = r:wait_log("LISTENING (%d+)", 20)
  r.url = "http://127.0.0.1:" .. r.port
  r.file = dir .. "/spans.jsonl"
  return r
end

-- every span received so far: { trace, id, parent, name, kind, service, attrs = {k = v}, error }
local function spans(r)
  local out = {}
  for line in ((H.read(r.file) or "")):gmatch("[^\n]+") do
    local req = cjson.decode(line)
    for _, rs in ipairs(req.resourceSpans) do
      local service
      for _, a in ipairs(rs.resource.attributes or {}) do
        if a.key == "service.name" then service = a.value.stringValue end
      end
      for _, ss in ipairs(rs.scopeSpans) do
        for _, s in ipairs(ss.spans) do
          local attrs = {}
          for _, a in ipairs(s.attributes or {}) do attrs[a.key] = a.value.stringValue or a.value.intValue end
          out[#out + 1] = { trace = s.traceId, id = s.spanId, parent = s.parentSpanId, name = s.name, kind = s.kind,
            service = service, attrs = attrs, error = s.status and s.status.code == 2,
            start = tonumber(s.startTimeUnixNano), finish = tonumber(s.endTimeUnixNano) }
        end
      end
    end
  end
  return out
end

-- the spans of one trace, once pred(list) holds (waits up to 15 s)
local function wait_trace(r, trace, pred)
  local deadline = os.time() + 15 * H.slow
  local list
  repeat
    list = {}
    for _, s in ipairs(spans(r)) do if s.trace == trace then list[#list + 1] = s end end
    if pred(list) then return list end
    H.sleep(0.2)
  until os.time() > deadline
  error("trace " .. trace .. " never had what was expected; it has " .. cjson.encode(list))
end

-- no span id is sent twice
local function assert_unique(r)
  local seen = {}
  for _, s in ipairs(spans(r)) do
    local k = s.trace .. "/" .. s.id
    assert.is_nil(seen[k], "span " .. s.name .. " " .. k .. " exported twice")
    seen[k] = true
  end
end

local function by(list, f)
  local out = {}
  for _, s in ipairs(list) do if f(s) then out[#out + 1] = s end end
  return out
end

local function named(list, name) return by(list, function(s) return s.name == name end) end

-- the saga's trace id: from its saga span, found by saga.id
local function trace_of(r, id)
  local deadline = os.time() + 15 * H.slow
  repeat
    for _, s in ipairs(spans(r)) do if s.attrs["saga.id"] == id then return s.trace end end
    H.sleep(0.2)
  until os.time() > deadline
  error("no span of saga " .. id)
end

-- checks the tree of a finished Traced saga; returns the saga span
local function check_tree(list, id)
  local saga = named(list, "saga Traced")
  assert.are.equal(1, #saga, "one saga span: " .. cjson.encode(saga))
  saga = saga[1]
  assert.are.equal(1, saga.kind)
  assert.are.equal(id, saga.attrs["saga.id"])
  assert.are.equal("completed", saga.attrs["saga.status"])
  local steps = by(list, function(s) return s.parent == saga.id end)
  local names = {}
  for _, s in ipairs(steps) do names[#names + 1] = s.name end
  table.sort(names)
  assert.are.same({ "step First", "step Last", "step Nap" }, names)
  for _, step in ipairs(steps) do
    assert.are.equal("completed", step.attrs["saga.outcome"])
    assert.are.equal("action", step.attrs["saga.phase"])
    assert.is_true(step.start >= saga.start and step.finish <= saga.finish, "the attempt lies within the saga")
    if step.name ~= "step Nap" then
      local calls = by(list, function(s) return s.parent == step.id end)
      assert.are.equal(1, #calls, "one call under " .. step.name)
      local call = calls[1]
      assert.are.equal(3, call.kind) -- client
      assert.matches("^call tsvc_", call.name)
      assert.is_string(call.attrs["messaging.system"])
      assert.are.equal("saga.commands", call.attrs["messaging.destination.name"])
      assert.are.equal("send", call.attrs["messaging.operation"])
      assert.matches("^" .. id:gsub("%-", "%%-") .. "%.", call.attrs["messaging.message.id"])
      local servers = by(list, function(s) return s.parent == call.id end)
      assert.are.equal(1, #servers, "the participant's server span under " .. call.name)
      assert.are.equal(2, servers[1].kind)
      assert.are.equal("process", servers[1].attrs["messaging.operation"])
      assert.are.equal(call.attrs["messaging.message.id"], servers[1].attrs["messaging.message.id"])
    end
  end
  return saga
end

describe("tracing with OTLP/HTTP", function()
  local dir, recv, host, svc, led
  setup(function()
    dir = H.tmpdir("otel")
    recv = receiver(dir)
    svc = "tsvc_" .. H.uid()
    led = "tled_" .. H.uid()
    host = H.host { name = "otel", scripts = { ["traced.lua"] = (SAGA:gsub("@SVC@", svc)),
      ["op.lua"] = (OP_SAGA:gsub("@LED@", led)), ["ledger.lua"] = (LEDGER_BROKEN:gsub("@LED@", led)) },
      args = "--otlp " .. recv.url .. " --grpc 127.0.0.1:0" }
    host:start()
  end)
  teardown(function()
    if host then host:stop() end
    if recv then recv:stop() end
  end)

  it("gives each saga one trace: saga span, attempt spans, call client spans, participant server spans", function()
    local id = host:start_saga("Traced", {})
    assert.are.equal("completed", host:wait(id).status)
    local trace = trace_of(recv, id)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Traced") == 1 and #l >= 8 end)
    local saga = check_tree(list, id)
    assert.is_nil(saga.parent, "without a traceparent the saga span is a root")
    local _, m = host:get("/metrics")
    assert.matches("sagahost_otel_spans_exported_total %d+", m)
    assert.matches("sagahost_otel_spans_dropped_total 0", m)
  end)

  it("continues the traceparent given to POST /v1/sagas/{type}", function()
    local trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    local code, body = host:post("/v1/sagas/Traced", {}, { traceparent = "00-" .. trace .. "-" .. parent .. "-01",
      tracestate = "vendor=x" })
    assert.are.equal(201, code)
    assert.are.equal("completed", host:wait(body.id).status)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Traced") == 1 and #l >= 8 end)
    local saga = check_tree(list, body.id)
    assert.are.equal(parent, saga.parent)
  end)

  it("continues the traceparent given as metadata to the gRPC Start", function()
    local trace, parent = "5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8"
    local port = host:log():match("gRPC .- listening on [%d.]+:(%d+)")
    assert(port, "the host does not say where gRPC listens:\n" .. host:log():sub(1, 2000))
    local code, out = H.run(string.format("node tests/grpc/client.js 127.0.0.1:%s Start %s %s", port,
      H.q(cjson.encode({ type = "Traced", input = "{}" })),
      H.q(cjson.encode({ traceparent = "00-" .. trace .. "-" .. parent .. "-01" }))))
    assert.are.equal(0, code, out)
    local r = cjson.decode(out)
    assert.is_true(r.ok, out)
    local id = r.response.id
    assert.are.equal("completed", host:wait(id).status)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Traced") == 1 end)
    local saga = check_tree(list, id)
    assert.are.equal(parent, saga.parent)
  end)

  it("keeps one trace across a kill -9 and restart mid-saga, and ends the saga span once", function()
    local id = host:start_saga("Traced", { nap = "3s" })
    -- the first step is done and the nap begun; its spans are exported (batches go every 500 ms)
    H.sleep(1.5)
    assert.are.equal("running", host:saga(id).status)
    local trace = trace_of(recv, id)
    host:kill9()
    host:start()
    assert.are.equal("completed", host:wait(id, nil, 30).status)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Traced") >= 1 and #named(l, "step Last") >= 1 end)
    H.sleep(1)
    list = wait_trace(recv, trace, function() return true end)
    check_tree(list, id)
    assert.are.equal(1, #named(list, "saga Traced"), "the saga span ends once")
  end)

  it("ends the saga span once at compensation_failed; an operator's retry is a span of its own", function()
    local id = host:start_saga("TracedOp", {})
    assert.are.equal("compensation_failed", host:wait(id).status)
    local trace = trace_of(recv, id)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga TracedOp") == 1 end)
    local saga = named(list, "saga TracedOp")[1]
    assert.are.equal("compensation_failed", saga.attrs["saga.status"])
    assert.is_true(saga.error)
    host:script("ledger.lua", (LEDGER_FIXED:gsub("@LED@", led)))
    H.sleep(1)
    local code, body = host:post("/v1/sagas/" .. id .. "/retry", { by = "alice" })
    assert.are.equal(200, code, body and body.error)
    assert.are.equal("compensated", host:wait(id, "compensated").status)
    list = wait_trace(recv, trace, function(l) return #named(l, "retry saga TracedOp") == 1 end)
    H.sleep(1) -- anything sent twice would be in by now
    list = wait_trace(recv, trace, function() return true end)
    assert.are.equal(1, #named(list, "saga TracedOp"), "the saga span is exported once")
    assert_unique(recv)
    local op = named(list, "operator retry")
    assert.are.equal(1, #op)
    assert.are.equal(saga.id, op[1].parent)
    assert.matches("by alice", op[1].attrs["saga.operator.detail"])
    local retry = named(list, "retry saga TracedOp")[1]
    assert.are.equal(saga.id, retry.parent)
    assert.are.equal("compensated", retry.attrs["saga.status"])
    assert.is_true(retry.start >= saga.finish, "the retry span begins after the saga span ended")
    -- the compensation after the retry is a child of the retry's span, its call a child of that
    local after = by(list, function(s) return s.name == "compensate Book" and s.parent == retry.id end)
    assert.are.equal(1, #after)
    assert.are.equal("completed", after[1].attrs["saga.outcome"])
    assert.are.equal(1, #by(list, function(s) return s.parent == after[1].id and s.kind == 3 end))
  end)
end)

describe("tracing through RabbitMQ", function()
  local dir, recv, orch, pika, svc, own, hid, nobody
  setup(function()
    H.broker_up()
    dir = H.tmpdir("otel-amqp")
    recv = receiver(dir)
    local suffix = H.uid()
    svc, own, hid = "tpika_" .. suffix, "tsvc_" .. suffix, "spec-otel-" .. suffix
    nobody = "tnobody_" .. suffix
    orch = H.host { name = "otel-amqp", amqp = true, host_id = hid, args = "--otlp " .. recv.url, dir = dir,
      scripts = { ["pika.lua"] = (PIKA_SAGA:gsub("@SVC@", svc)), ["traced.lua"] = (SAGA:gsub("@SVC@", own)),
        ["deaf.lua"] = (DEAF_SAGA:gsub("@NOBODY@", nobody)) } }
    pika = H.proc { name = "pika", dir = dir, cmd = "env OTEL_EXPORTER_OTLP_ENDPOINT=" .. recv.url .. " " .. H.python ..
      " -u " .. H.participants .. "/pika_participant.py " .. svc .. " " .. H.q(H.pika_url()) }
    pika:start()
    pika:wait_log("READY", 30)
    orch:start_amqp()
  end)
  teardown(function()
    if orch then orch:stop() end
    if pika then pika:stop() end
    if recv then recv:stop() end
    if svc then H.delete_queues({ svc, own, nobody }, { hid }) end
  end)

  it("a sagahost participant over the broker continues the trace from the command's traceparent", function()
    local id = orch:start_saga("Traced", {})
    assert.are.equal("completed", orch:wait(id, nil, 30).status)
    local trace = trace_of(recv, id)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Traced") == 1 and #l >= 8 end)
    check_tree(list, id)
    for _, s in ipairs(by(list, function(x) return x.kind == 2 or x.kind == 3 end)) do
      assert.are.equal("rabbitmq", s.attrs["messaging.system"])
    end
  end)

  it("a pika participant continues the trace from the traceparent header it received", function()
    local id = orch:start_saga("TracedPika", {})
    local s = orch:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    local trace = trace_of(recv, id)
    local list = wait_trace(recv, trace, function(l)
      return #named(l, "saga TracedPika") == 1 and #by(l, function(x) return x.service == "pika-" .. svc end) == 1
    end)
    local call = by(list, function(x) return x.kind == 3 end)
    assert.are.equal(1, #call)
    call = call[1]
    local step = named(list, "step Echo")[1]
    assert.are.equal(step.id, call.parent)
    local theirs = by(list, function(x) return x.service == "pika-" .. svc end)[1]
    assert.are.equal(call.id, theirs.parent, "the participant's span is a child of the call's")
    assert.are.equal(2, theirs.kind)
    -- what the participant saw, and its own span, as it echoed them
    assert.are.equal("00-" .. trace .. "-" .. call.id .. "-01", s.data.echo.traceparent_in)
    assert.are.equal("00-" .. trace .. "-" .. theirs.id .. "-01", s.data.echo.traceparent)
    -- the reply's traceparent (the participant's span) is recorded on the call span
    assert.are.equal(s.data.echo.traceparent, call.attrs["saga.reply.traceparent"])
  end)

  it("a call that times out still has its client span, an error saying so", function()
    local id = orch:start_saga("Deaf", {})
    assert.is_truthy(({ failed = true, compensated = true })[orch:wait(id, nil, 30).status])
    local trace = trace_of(recv, id)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Deaf") == 1 and #by(l, function(x) return x.kind == 3 end) == 1 end)
    local call = by(list, function(x) return x.kind == 3 end)[1]
    assert.are.equal("call " .. nobody .. ".Answer", call.name)
    assert.is_true(call.error)
    assert.are.equal("none", call.attrs["saga.reply.status"])
    assert.are.equal(named(list, "step Ask")[1].id, call.parent)
    assert.is_true(call.finish - call.start >= 250e6, "it lasted until the timeout")
    assert_unique(recv)
  end)

  it("a call without a reply ends its client span when an operator compensates the saga", function()
    local id = orch:start_saga("Hangs", {})
    H.sleep(1)
    local code, body = orch:post("/v1/sagas/" .. id .. "/compensate", { reason = "nobody answers", by = "carol" })
    assert.are.equal(200, code, body and body.error)
    assert.are.equal("compensated", orch:wait(id, nil, 30).status)
    local trace = trace_of(recv, id)
    local list = wait_trace(recv, trace, function(l) return #named(l, "saga Hangs") == 1 and #by(l, function(x) return x.kind == 3 end) == 1 end)
    local call = by(list, function(x) return x.kind == 3 end)[1]
    assert.is_true(call.error)
    assert.are.equal(named(list, "step Wait")[1].id, call.parent)
    local op = named(list, "operator compensate")
    assert.are.equal(1, #op)
    assert.matches("by carol: nobody answers", op[1].attrs["saga.operator.detail"])
    assert_unique(recv)
  end)
end)
