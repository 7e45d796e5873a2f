-- End-to-end: the gRPC service sagahost.v1.Sagas (--grpc, docs/grpc.md) on a real host, through a real
-- gRPC client (tests/grpc/client.js: @grpc/grpc-js and @grpc/proto-loader, installed by
-- `.ci/deps.sh --test`): Start, Watch (every event of a saga in order up to its terminal one, matching
-- GET /v1/sagas/{id}), Get and List (the HTTP API's answers), WatchAll with a type filter and a resume
-- from an event id, Compensate of a running saga, the status codes, and the auth codes; over TLS
-- (--tls-cert/--tls-key, ALPN h2) on a non-loopback address with --auth; the connection limits
-- (--http-max-per-ip's GOAWAY, --grpc-idle-timeout, --http-request-timeout) through bare HTTP/2
-- connections (tests/grpc/conns.js).
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
saga.define {
  name = "Trip",
  steps = {
    { name = "hotel",
      action = function(ctx) if ctx.input.nap then ctx:sleep(ctx.input.nap) end; ctx.data.hotel = "h1" end,
      compensate = function(ctx) ctx.data.hotel = nil end },
    { name = "flight",
      action = function(ctx) if ctx.input.fail then ctx:fail("no seats") end end,
      compensate = function(ctx) end },
    { name = "car", action = function(ctx) end },
  },
}
saga.define {
  name = "Note",
  steps = { { name = "write", action = function(ctx) end } },
}
]]

local CLIENT = "tests/grpc/client.js"
local CONNS = "tests/grpc/conns.js"

-- starts h with --grpc on a free port; h.grpc is its address
local function start(h, extra)
  h:start("--grpc 127.0.0.1:0 " .. (extra or ""))
  local deadline = H.now() + 5 * H.slow
  repeat
    local port = (H.read(h.curlog) or ""):match("gRPC .- listening on [%d.]+:(%d+)")
    if port then h.grpc = "127.0.0.1:" .. port; return h end
    H.sleep(0.05)
  until H.now() > deadline
  error("no gRPC listening line:\n" .. (H.read(h.curlog) or ""))
end

-- one call through the Node client: its JSON answer ({ok, response | events, code, name, details})
local function call(h, method, req, opts)
  local code, out, err = H.run(string.format("node %s %s %s %s %s", CLIENT, h.grpc, method,
    H.q(cjson.encode(req or {})), H.q(cjson.encode(opts or {}))))
  assert(code == 0 and out ~= "", "the gRPC client failed (" .. tostring(code) .. "): " .. out .. err)
  return cjson.decode(out)
end

-- bare connections (conns.js): per connection {goaway = {code, data}, closed_ms}
local function conns(h, opts)
  local code, out, err = H.run(string.format("node %s %s %s", CONNS, h.grpc, H.q(cjson.encode(opts))))
  assert(code == 0 and out ~= "", "conns.js failed (" .. tostring(code) .. "): " .. out .. err)
  return cjson.decode(out)
end

local function ok(r)
  assert(r.ok, "the call failed: " .. cjson.encode(r))
  return r.response or r.events
end

local zero = H.pg and "0-0" or "0"

describe("gRPC", function()
  local h
  setup(function()
    local pkg = io.open("tests/grpc/node_modules/@grpc/grpc-js/package.json")
    assert(pkg, "tests/grpc/node_modules is missing: run `bash .ci/deps.sh --test` (npm ci in tests/grpc)")
    pkg:close()
    h = H.host { name = "grpc", scripts = { ["trip.lua"] = SCRIPT } }
    start(h)
  end)
  teardown(function() h:stop() end)

  it("Start, then Watch gives every event of the saga in order up to its terminal one, as its history says", function()
    local started = ok(call(h, "Start", { type = "Trip", input = cjson.encode { nap = "300ms" } }))
    assert.is_false(started.existing)
    local r = call(h, "Watch", { id = started.id })
    assert.is_true(r.ok and r.ended, cjson.encode(r))
    local evs = r.events
    assert.equals("started", evs[1].kind)
    assert.equals("terminal", evs[#evs].kind)
    assert.equals("completed", evs[#evs].status)
    local ended = {}
    for _, e in ipairs(evs) do
      assert.equals(started.id, e.saga_id)
      assert.equals("Trip", e.type)
      if e.kind == "attempt_ended" then ended[#ended + 1] = e.step_name .. ":" .. e.phase .. ":" .. e.outcome end
    end
    -- the same attempts as GET /v1/sagas/{id}, in the same order
    local code, s = h:get("/v1/sagas/" .. started.id)
    assert.equals(200, code)
    local hist = {}
    for _, st in ipairs(s.steps) do hist[#hist + 1] = st.name .. ":" .. st.phase .. ":" .. st.status end
    assert.same(hist, ended)
    assert.same({ "hotel:action:completed", "flight:action:completed", "car:action:completed" }, ended)
    -- a Watch of a finished saga gives the same events again, and resumes after an id
    local again = ok(call(h, "Watch", { id = started.id }))
    assert.equals(#evs, #again)
    local rest = ok(call(h, "Watch", { id = started.id, last_event_id = evs[2].event_id }))
    assert.equals(#evs - 2, #rest)
    assert.equals(evs[3].event_id, rest[1].event_id)
  end)

  it("Get and List answer what the HTTP API answers", function()
    local id = ok(call(h, "Start", { type = "Note", input = "{\"n\":1}", idempotency_key = "k-" .. H.uid() })).id
    h:wait(id)
    local g = ok(call(h, "Get", { id = id }))
    local s = h:saga(id)
    for _, f in ipairs { "id", "type", "status", "definition_version", "created_at", "updated_at" } do
      assert.equals(s[f], g[f])
    end
    assert.same(s.input, cjson.decode(g.input))
    assert.equals(#s.steps, #g.steps)
    assert.equals(s.steps[1].name, g.steps[1].name)
    assert.equals(s.idempotency_key, g.idempotency_key)
    local l = ok(call(h, "List", { type = "Note", limit = 1 }))
    local _, hl = h:get("/v1/sagas?type=Note&limit=1")
    assert.equals(hl.sagas[1].id, l.sagas[1].id)
    assert.equals(hl.next ~= cjson.null and hl.next or "", l.next)
  end)

  it("WatchAll filters by type and resumes after an event id", function()
    local ids = {}
    for i = 1, 2 do
      ids[i] = ok(call(h, "Start", { type = "Trip", input = "{}" })).id
      ok(call(h, "Start", { type = "Note", input = "{}" }))
    end
    for _, id in ipairs(ids) do h:wait(id) end
    -- every Trip event the store holds (this spec's sagas: 2 here, 1 before, each 8 events)
    local all = ok(call(h, "WatchAll", { type = "Trip", last_event_id = zero }, { count = 8 * 3 }))
    assert.equals(24, #all)
    for _, e in ipairs(all) do assert.equals("Trip", e.type) end
    local tail = ok(call(h, "WatchAll", { type = "Trip", last_event_id = all[10].event_id }, { count = 14 }))
    for i = 1, 14 do assert.equals(all[10 + i].event_id, tail[i].event_id) end
    -- live: a subscriber from now sees the next Trip's events, not Note's
    local out = h.dir .. "/watchall.json"
    os.execute(string.format("node %s %s WatchAll %s %s > %s 2>&1 &", CLIENT, h.grpc,
      H.q(cjson.encode { type = "Trip" }), H.q(cjson.encode { count = 8 }), out))
    H.sleep(1 * H.slow) -- connected (the stream has no first message to wait for)
    ok(call(h, "Start", { type = "Note", input = "{}" }))
    local id = ok(call(h, "Start", { type = "Trip", input = "{}" })).id
    local deadline = H.now() + 10 * H.slow
    while (H.read(out) or "") == "" and H.now() < deadline do H.sleep(0.1) end
    local live = ok(cjson.decode(H.read(out)))
    assert.equals(8, #live)
    for _, e in ipairs(live) do assert.equals(id, e.saga_id) end
  end)

  it("Compensate stops a running saga; Watch follows it to compensated", function()
    local id = ok(call(h, "Start", { type = "Trip", input = cjson.encode { nap = "30s" } })).id
    local r = ok(call(h, "Compensate", { id = id, reason = "customer cancelled", by = "ada" }))
    assert.is_true(r.applied)
    assert.equals(id, r.saga.id)
    local evs = ok(call(h, "Watch", { id = id }))
    assert.equals("terminal", evs[#evs].kind)
    assert.equals("compensated", evs[#evs].status)
    local kinds = {}
    for _, e in ipairs(evs) do kinds[e.kind] = true end
    assert.is_true(kinds.operator and kinds.compensating)
    assert.equals("compensated", h:saga(id).status)
  end)

  it("Start with delay or start_at: a delayed start, scheduled as the HTTP API shows it", function()
    local id = ok(call(h, "Start", { type = "Note", input = "{}", delay = "2s" })).id
    local g = ok(call(h, "Get", { id = id }))
    local s = h:saga(id)
    assert.equals("scheduled", s.status)
    assert.equals("scheduled", g.status)
    assert.equals(s.start_at, g.start_at)
    assert.equals(0, #g.steps)
    local r = call(h, "Start", { type = "Note", input = "{}", delay = "1s", start_at = "1000" })
    assert.is_false(r.ok)
    assert.equals("INVALID_ARGUMENT", r.name)
    assert.equals("completed", h:wait(id, nil, 10).status)
  end)

  it("answers NOT_FOUND, INVALID_ARGUMENT and FAILED_PRECONDITION", function()
    local function code(r) assert.is_false(r.ok, cjson.encode(r)); return r.name end
    assert.equals("NOT_FOUND", code(call(h, "Get", { id = "01a22ed9-e5a8-7b8a-bee9-67ac0bf15273" })))
    assert.equals("NOT_FOUND", code(call(h, "Start", { type = "NoSuchType", input = "{}" })))
    assert.equals("NOT_FOUND", code(call(h, "Watch", { id = "01a22ed9-e5a8-7b8a-bee9-67ac0bf15273" })))
    assert.equals("NOT_FOUND", code(call(h, "Compensate", { id = "01a22ed9-e5a8-7b8a-bee9-67ac0bf15273" })))
    local bad = call(h, "Start", { type = "Trip", input = "{not json" })
    assert.equals("INVALID_ARGUMENT", code(bad))
    assert.matches("malformed JSON input at line 1", bad.details)
    assert.equals("INVALID_ARGUMENT", code(call(h, "Start", { type = "Trip", input = "[1]" })))
    assert.equals("INVALID_ARGUMENT", code(call(h, "WatchAll", { status = "sleeping" })))
    assert.equals("INVALID_ARGUMENT", code(call(h, "WatchAll", { last_event_id = "x.y" })))
    assert.equals("INVALID_ARGUMENT", code(call(h, "List", { limit = 5000 })))
    local id = ok(call(h, "Start", { type = "Note", input = "{}" })).id
    h:wait(id)
    local r = call(h, "Retry", { id = id })
    assert.equals("FAILED_PRECONDITION", code(r))
    assert.matches("only a compensation_failed saga can be retried", r.details)
    assert.equals("FAILED_PRECONDITION", code(call(h, "Compensate", { id = id, reason = "late" })))
  end)

  it("with --auth: UNAUTHENTICATED without a token, PERMISSION_DENIED for a role too small", function()
    local a = H.host { name = "grpc-auth", scripts = { ["trip.lua"] = SCRIPT } }
    H.write(a.dir .. "/tokens", "reader read rrrrrrrrrrrrrrrrrrrr\nops operate oooooooooooooooooooo\n")
    start(a, "--auth " .. a.dir .. "/tokens")
    finally(function() a:stop() end)
    local r = call(a, "List", {})
    assert.equals("UNAUTHENTICATED", r.name)
    assert.equals("UNAUTHENTICATED", call(a, "List", {}, { token = "wrongwrongwrongwrong" }).name)
    r = call(a, "Start", { type = "Note", input = "{}" }, { token = "rrrrrrrrrrrrrrrrrrrr" })
    assert.equals("PERMISSION_DENIED", r.name)
    assert.matches("needs role start", r.details)
    ok(call(a, "List", {}, { token = "rrrrrrrrrrrrrrrrrrrr" }))
    local id = ok(call(a, "Start", { type = "Trip", input = cjson.encode { nap = "30s" } }, { token = "oooooooooooooooooooo" })).id
    local c = ok(call(a, "Compensate", { id = id, reason = "r", by = "mallory" }, { token = "oooooooooooooooooooo" }))
    -- the operator recorded is the token's name, not the request's "by"
    local evs = ok(call(a, "Watch", { id = id }, { token = "rrrrrrrrrrrrrrrrrrrr" }))
    local op
    for _, e in ipairs(evs) do if e.kind == "operator" then op = e end end
    assert.truthy(op and op.detail:find("ops", 1, true), cjson.encode(op))
    assert.is_nil(op.detail:find("mallory", 1, true))
    assert.equals(id, c.id)
  end)

  it("refuses --grpc on a non-loopback address without --auth and TLS (or --insecure)", function()
    local d = H.tmpdir("grpc-refuse")
    local code, _, err = H.run(H.bin .. " run --db " .. d .. "/x.db --grpc 0.0.0.0:0 " .. d .. "/sagas")
    assert.equals(2, code)
    assert.matches("refusing %-%-grpc 0%.0%.0%.0:0: it has no %-%-auth", err)
    H.write(d .. "/tokens", "ops operate oooooooooooooooooooo\n")
    code, _, err = H.run(H.bin .. " run --db " .. d .. "/x.db --auth " .. d .. "/tokens --grpc 0.0.0.0:0 " .. d .. "/sagas")
    assert.equals(2, code)
    assert.matches("refusing %-%-grpc 0%.0%.0%.0:0: it is plaintext %(no %-%-tls%-cert%)", err)
  end)

  it("caps connections per address: the ones over --http-max-per-ip get a GOAWAY saying so", function()
    local a = H.host { name = "grpc-cap", scripts = { ["trip.lua"] = SCRIPT } }
    start(a, "--http-max-per-ip 2")
    finally(function() a:stop() end)
    local r = conns(a, { n = 4, hold_ms = 800 })
    assert.is_nil(r[1].goaway, cjson.encode(r))
    assert.is_nil(r[2].goaway, cjson.encode(r))
    assert.is_nil(r[1].closed_ms, cjson.encode(r))
    for i = 3, 4 do
      assert.equals(11, r[i].goaway.code, cjson.encode(r)) -- ENHANCE_YOUR_CALM
      assert.matches("too many connections from 127%.0%.0%.1 %(%-%-http%-max%-per%-ip 2%)", r[i].goaway.data)
      assert.truthy(r[i].closed_ms, cjson.encode(r))
    end
    assert.matches("grpc: refusing a connection from 127%.0%.0%.1 with GOAWAY: too many connections", H.read(a.curlog))
    -- once those are gone, calls go through again
    ok(call(a, "List", {}))
  end)

  it("closes a connection idle past --grpc-idle-timeout and one without a request past --http-request-timeout", function()
    local a = H.host { name = "grpc-idle", scripts = { ["trip.lua"] = SCRIPT } }
    local b
    -- one finally for both hosts: busted keeps only the last function given to finally in a test
    finally(function() a:stop(); if b then b:stop() end end)
    start(a, "--grpc-idle-timeout 1s --http-request-timeout 3s")
    local r = conns(a, { n = 1, hold_ms = 2500 })[1]
    assert.equals(0, r.goaway and r.goaway.code, cjson.encode(r)) -- NO_ERROR
    assert.matches("idle for 1s with no call %(%-%-grpc%-idle%-timeout%)", r.goaway.data)
    assert.truthy(r.closed_ms >= 900 and r.closed_ms < 2500, cjson.encode(r))
    -- a Watch keeps its connection open past the idle timeout
    local id = ok(call(a, "Start", { type = "Trip", input = cjson.encode { nap = "2s" } })).id
    local evs = ok(call(a, "Watch", { id = id }))
    assert.equals("completed", evs[#evs].status)
    b = H.host { name = "grpc-slow", scripts = { ["trip.lua"] = SCRIPT } }
    start(b, "--http-request-timeout 1s")
    r = conns(b, { n = 1, hold_ms = 2500, raw = true })[1] -- TCP only: no preface, no request
    assert.truthy(r.closed_ms and r.closed_ms >= 900 and r.closed_ms < 2500, cjson.encode(r))
  end)
end)

describe("gRPC over TLS", function()
  local h, cert
  local OPS = "oooooooooooooooooooo"
  setup(function()
    h = H.host { name = "grpc-tls", scripts = { ["trip.lua"] = SCRIPT } }
    cert = h.dir .. "/cert.pem"
    local key = h.dir .. "/key.pem"
    local code, out = H.sh("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 " ..
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " .. key .. " -out " .. cert)
    assert(code == 0, "openssl: " .. out)
    H.write(h.dir .. "/tokens", "ops operate " .. OPS .. "\n")
    h.opts.args = "--auth " .. h.dir .. "/tokens --tls-cert " .. cert .. " --tls-key " .. key
    h.opts.curl_args = "--cacert " .. cert
    -- a non-loopback address: allowed with --auth and TLS
    h:start("--grpc 0.0.0.0:0 --log-level debug")
    local deadline = H.now() + 5 * H.slow
    repeat
      local port = (H.read(h.curlog) or ""):match("gRPC %(sagahost%.v1%.Sagas, HTTP/2 over TLS%) listening on 0%.0%.0%.0:(%d+)")
      if port then h.grpc = "127.0.0.1:" .. port; break end
      H.sleep(0.05)
    until H.now() > deadline
    assert(h.grpc, "no gRPC over TLS listening line:\n" .. (H.read(h.curlog) or ""))
  end)
  teardown(function() h:stop() end)

  it("serves Start and Watch to a client that trusts the certificate", function()
    local tls = { ca = cert, token = OPS }
    local id = ok(call(h, "Start", { type = "Trip", input = cjson.encode { nap = "200ms" } }, tls)).id
    local r = call(h, "Watch", { id = id }, tls)
    assert.is_true(r.ok and r.ended, cjson.encode(r))
    assert.equals("started", r.events[1].kind)
    assert.equals("terminal", r.events[#r.events].kind)
    assert.equals("completed", r.events[#r.events].status)
    assert.equals(8, #r.events)
  end)

  it("a plaintext client gets nothing from the TLS port", function()
    local r = call(h, "List", {}, { token = OPS, timeout_ms = 3000 })
    assert.is_false(r.ok, cjson.encode(r))
    assert.truthy(r.name == "UNAVAILABLE" or r.name == "DEADLINE_EXCEEDED", cjson.encode(r))
    -- nor does a bare HTTP/2 one, and a TLS one without ALPN h2 is refused in the handshake
    local c = conns(h, { n = 1, hold_ms = 1500, raw = true })[1]
    assert.is_nil(c.goaway)
    local code = H.sh("curl -s -o /dev/null --http1.1 --cacert " .. cert .. " https://127.0.0.1:" .. h.grpc:match(":(%d+)$") .. "/")
    assert.are_not.equal(0, code)
    -- (the host logs it just after sending the alert: curl may be back first)
    local pat = "grpc: TLS handshake with 127%.0%.0%.1 failed: .-no application protocol"
    local deadline = H.now() + 3 * H.slow
    while not (H.read(h.curlog) or ""):find(pat) and H.now() < deadline do H.sleep(0.05) end
    assert.matches(pat, H.read(h.curlog))
  end)
end)
