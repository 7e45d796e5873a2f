-- The lifecycle event stream (GET /v1/events, Server-Sent Events) and GET /v1/sagas/{id}?wait=, on a
-- real host: order, filters, Last-Event-ID resume from the store across a restart, a stalled client
-- that is dropped without slowing the host, definition events, and (PostgreSQL) two hosts' events seen
-- from either host.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
saga.define {
  name = "Trip",
  retry = { attempts = 2, initial = "10ms", jitter = false },
  steps = {
    { name = "hotel",
      action = function(ctx) if ctx.input.nap then ctx:sleep(ctx.input.nap) end; ctx.data.hotel = "h1" end,
      compensate = function(ctx) ctx.data.hotel = nil end },
    { name = "flight",
      action = function(ctx) if ctx.input.fail then error("no seats") end end,
      compensate = function(ctx) end },
  },
}
saga.define {
  name = "Note",
  steps = { { name = "write", action = function(ctx) end } },
}
]]

-- an SSE client: curl -N writing the stream to a file, in the background
local function sse(h, query, headers, extra)
  local out = h.dir .. "/sse-" .. H.uid() .. ".txt"
  local hdr = ""
  for k, v in pairs(headers or {}) do hdr = hdr .. " -H " .. H.q(k .. ": " .. v) end
  local cmd = string.format("curl -sN %s %s %s > %s 2>/dev/null & echo $!", extra or "", hdr,
    H.q(h.url .. "/v1/events" .. (query or "")), out)
  local p = io.popen(cmd)
  local pid = tonumber(p:read("l"))
  p:close()
  local c = { pid = pid, out = out }
  function c.text() return H.read(out) or "" end
  -- the stream's events: { id = ..., data = decoded } in order
  function c.events()
    local list = {}
    for block in c.text():gmatch("(.-)\n\n") do
      local id = block:match("^id: ([^\n]+)") or block:match("\nid: ([^\n]+)")
      local data = block:match("data: ([^\n]+)")
      if id and data then list[#list + 1] = { id = id, data = cjson.decode(data) } end
    end
    return list
  end
  function c.close() os.execute("kill " .. pid .. " 2>/dev/null") end
  function c.alive() return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true end
  -- waits until the stream has said it is connected
  local deadline = H.now() + 5 * H.slow
  while not c.text():find("retry:", 1, true) and H.now() < deadline do H.sleep(0.02) end
  assert(c.text():find("retry:", 1, true), "the event stream did not open: " .. c.text())
  return c
end

-- waits until pred(events) holds, returns the events
local function until_events(c, pred, what)
  local deadline = H.now() + 10 * H.slow
  local evs
  repeat
    evs = c.events()
    if pred(evs) then return evs end
    H.sleep(0.05)
  until H.now() > deadline
  error("timed out waiting for " .. what .. "; got " .. #evs .. " events:\n" .. c.text():sub(1, 3000))
end

local function of_saga(evs, id)
  local out = {}
  for _, e in ipairs(evs) do if e.data.saga_id == id then out[#out + 1] = e end end
  return out
end

local function terminal_of(evs, id)
  for _, e in ipairs(of_saga(evs, id)) do if e.data.kind == "terminal" then return e end end
end

-- "kind:step_name:outcome" of a saga's events
local function trace(evs, id)
  local out = {}
  for _, e in ipairs(of_saga(evs, id)) do
    local o = e.data.outcome
    out[#out + 1] = e.data.kind .. ":" .. tostring(e.data.step_name) .. ":" .. (o == cjson.null and "nil" or tostring(o))
  end
  return out
end

describe("GET /v1/events", function()
  local h
  before_each(function()
    h = H.host({ name = "events", scripts = { ["trip.lua"] = SCRIPT } }):start()
  end)
  after_each(function() h:stop() end)

  it("streams each saga's lifecycle in order, after its commits, with increasing event ids", function()
    local c = sse(h)
    local ok_id = h:start_saga("Trip", {})
    local bad_id = h:start_saga("Trip", { fail = true })
    local evs = until_events(c, function(e) return terminal_of(e, ok_id) and terminal_of(e, bad_id) end,
      "both terminal events")
    c.close()
    assert.same({ "started:hotel:nil", "attempt_started:hotel:nil", "attempt_ended:hotel:completed",
                  "attempt_started:flight:nil", "attempt_ended:flight:completed", "terminal:flight:completed" },
                trace(evs, ok_id))
    assert.same({ "started:hotel:nil", "attempt_started:hotel:nil", "attempt_ended:hotel:completed",
                  "attempt_started:flight:nil", "attempt_ended:flight:failed",
                  "attempt_started:flight:nil", "attempt_ended:flight:failed",
                  "compensating:flight:nil",
                  "attempt_started:hotel:nil", "attempt_ended:hotel:completed", "terminal:hotel:compensated" },
                trace(evs, bad_id))
    -- what an event says is what the store says
    local failed = of_saga(evs, bad_id)[5].data
    assert.equal("action", failed.phase)
    assert.equal(2, failed.step)
    assert.equal(1, failed.attempt)
    assert.truthy(failed.detail:find("no seats", 1, true))
    assert.equal("compensated", terminal_of(evs, bad_id).data.status)
    assert.equal("compensated", h:saga(bad_id).status)
    assert.equal("compensate", of_saga(evs, bad_id)[9].data.phase)
    -- ids are unique, each event's data carries its id, and they come in the store's order
    local seen = {}
    for i, e in ipairs(evs) do
      assert.equal(e.id, e.data.event_id)
      assert.is_nil(seen[e.id])
      seen[e.id] = true
      -- "batch.k" (SQLite) and "txid-batch.k" (PostgreSQL): in stream order
      local function key(id)
        local t, b, k = id:match("^(%d+)-(%d+)%.(%d+)$")
        if not t then t, b, k = 0, id:match("^(%d+)%.(%d+)$") end
        assert(b and k, "malformed event id " .. id)
        return { tonumber(t), tonumber(b), tonumber(k) }
      end
      if i > 1 then
        local a, b = key(evs[i - 1].id), key(e.id)
        local later = a[1] < b[1] or (a[1] == b[1] and (a[2] < b[2] or (a[2] == b[2] and a[3] < b[3])))
        assert.is_true(later, evs[i - 1].id .. " then " .. e.id)
      end
    end
  end)

  it("filters by saga id, type and status", function()
    local by_type = sse(h, "?type=Note")
    local by_status = sse(h, "?status=compensated")
    local a = h:start_saga("Trip", { fail = true })
    local by_saga = sse(h, "?saga=" .. a) -- opened after the start: from now on
    local n = h:start_saga("Note", {})
    local b = h:start_saga("Trip", {})
    h:wait(a); h:wait(n); h:wait(b)
    local evs = until_events(by_type, function(e) return terminal_of(e, n) end, "the Note's terminal event")
    for _, e in ipairs(evs) do assert.equal("Note", e.data.type) end
    evs = until_events(by_status, function(e) return terminal_of(e, a) end, "a compensated event")
    assert.equal(1, #evs)
    assert.equal(a, evs[1].data.saga_id)
    evs = by_saga.events()
    for _, e in ipairs(evs) do assert.equal(a, e.data.saga_id) end
    for _, c in ipairs({ by_type, by_status, by_saga }) do c.close() end
    local code, body = h:get("/v1/events?status=nope")
    assert.equal(400, code)
    assert.truthy(body.error:find("unknown status", 1, true))
  end)

  it("resumes after Last-Event-ID from the store, across a restart, missing nothing", function()
    local c = sse(h)
    local ids = {}
    for i = 1, 5 do ids[i] = h:start_saga("Trip", { fail = (i % 2 == 0) or nil }) end
    local evs = until_events(c, function(e)
      for _, id in ipairs(ids) do if not terminal_of(e, id) then return false end end
      return true
    end, "five terminal events")
    c.close()
    -- the client saw up to the 7th event, then lost its connection; the host restarts meanwhile
    h:stop()
    h:start()
    local after = evs[7].id
    local more = h:start_saga("Note", {})
    h:wait(more)
    local r = sse(h, nil, { ["Last-Event-ID"] = after })
    local got = until_events(r, function(e) return terminal_of(e, more) end, "the resumed stream to reach the new saga")
    r.close()
    -- exactly the events after the 7th, in the same order, then the definitions loaded at the restart
    -- and the new saga's
    for i = 8, #evs do
      assert.equal(evs[i].id, got[i - 7].id)
      assert.same(evs[i].data, got[i - 7].data)
    end
    local rest = {}
    for i = #evs - 6, #got do rest[#rest + 1] = got[i].data.kind end
    assert.same({ "definition_loaded", "started", "attempt_started", "attempt_ended", "terminal" }, rest)
    -- the query parameter works as the header does (for clients that cannot set headers)
    local q = sse(h, "?saga=" .. ids[1] .. "&last_event_id=" .. evs[1].id)
    until_events(q, function(e) return terminal_of(e, ids[1]) end, "the resumed saga's events")
    q.close()
    local code, body = h:request("GET", "/v1/events", nil, { ["Last-Event-ID"] = "not-an-id" })
    assert.equal(400, code)
    assert.truthy(body.error:find("Last-Event-ID", 1, true))
  end)

  it("shows definitions loaded and failing, with the file and the error", function()
    local c = sse(h)
    h:script("broken.lua", "saga.define { name = ")
    local evs = until_events(c, function(e)
      for _, x in ipairs(e) do if x.data.kind == "definition_failed" then return true end end
    end, "a definition_failed event")
    local f
    for _, x in ipairs(evs) do if x.data.kind == "definition_failed" then f = x.data end end
    assert.truthy(f.file:find("broken.lua", 1, true))
    assert.truthy(f.error:find("broken.lua", 1, true))
    h:script("broken.lua", "local saga = require 'saga'\nsaga.define { name = 'Fixed', steps = { { name = 's', action = function() end } } }")
    evs = until_events(c, function(e)
      for _, x in ipairs(e) do if x.data.kind == "definition_loaded" and x.data.file:find("broken.lua", 1, true) then return true end end
    end, "the fixed file's definition_loaded event")
    c.close()
  end)

  it("drops a client that does not read; the host goes on and the readers miss nothing", function()
    assert.equal(0, (H.run(H.bin .. " bench --write-script " .. h.scripts)))
    H.sleep(0.5) -- the bench saga is picked up (hot reload)
    -- 1 byte a second: this client reads nothing to speak of
    local stalled = sse(h, nil, nil, "--limit-rate 1")
    local live = sse(h, "?type=BenchOrder&status=completed")
    -- 4000 sagas make ~8 events each (~12 MB of stream): far more than the 1 MiB a client may leave unread
    -- plus what the sockets hold
    local code, out, err = H.run(string.format("%s bench --server %s --sagas 4000 --concurrency 32", H.bin, h.url))
    assert.equal(0, code, out .. err)
    local deadline = H.now() + 20 * H.slow
    while not h:log():find("dropping a subscriber", 1, true) and H.now() < deadline do H.sleep(0.1) end
    assert.truthy(h:log():find("dropping a subscriber: it does not read", 1, true), "the stalled client was not dropped")
    -- the reading client got every saga's end
    local evs = until_events(live, function(e) return #e >= 4000 end, "4000 completed events")
    assert.equal(4000, #evs)
    local _, health = h:get("/healthz")
    assert.equal(1, health.event_subscribers_dropped)
    live.close()
    stalled.close()
  end)
end)

describe("GET /v1/sagas/{id}?wait=", function()
  local h
  before_each(function()
    h = H.host({ name = "wait", scripts = { ["trip.lua"] = SCRIPT } }):start()
  end)
  after_each(function() h:stop() end)

  it("answers when the saga ends, or when the time is up", function()
    local id = h:start_saga("Trip", { nap = "1500ms" })
    local t0 = H.now()
    local code, s = h:get("/v1/sagas/" .. id .. "?wait=200ms")
    local took = H.now() - t0
    assert.equal(200, code)
    assert.equal("running", s.status)
    assert.is_true(took >= 0.15 and took < 1.2, "a wait of 200ms took " .. took)
    t0 = H.now()
    code, s = h:get("/v1/sagas/" .. id .. "?wait=30s")
    took = H.now() - t0
    assert.equal(200, code)
    assert.equal("completed", s.status)
    assert.is_true(took < 5 * H.slow, "the wait answered " .. took .. "s later")
    assert.equal("h1", s.data.hotel)
    -- a finished saga answers at once, an unknown one 404, a bad wait 400
    t0 = H.now()
    code, s = h:get("/v1/sagas/" .. id .. "?wait=30s")
    assert.equal("completed", s.status)
    assert.is_true(H.now() - t0 < 1)
    code = h:get("/v1/sagas/01a00000-0000-7000-8000-000000000000?wait=5s")
    assert.equal(404, code)
    code, s = h:get("/v1/sagas/" .. id .. "?wait=forever")
    assert.equal(400, code)
    assert.truthy(s.error:find("wait", 1, true))
    code = h:get("/v1/sagas/" .. id .. "?wait=10m")
    assert.equal(400, code)
  end)

  it("POST ?wait= starts the saga and answers with it once it has ended, in one request", function()
    -- a saga that ends within the wait: 201 and the whole saga, as GET /v1/sagas/{id} shows it
    local t0 = H.now()
    local code, s = h:post("/v1/sagas/Trip?wait=30s", { fail = true })
    assert.equal(201, code)
    assert.equal("compensated", s.status)
    assert.is_true(H.now() - t0 < 5 * H.slow)
    assert.truthy(s.error:find("no seats", 1, true), s.error)
    assert.same({ "hotel:action:completed", "flight:action:failed", "flight:action:failed",
                  "hotel:compensate:completed" }, H.history(s))
    local code2, stored = h:get("/v1/sagas/" .. s.id)
    assert.equal(200, code2)
    assert.same(stored, s)
    -- still running when the wait is over: 201 and the saga as it is; it goes on
    t0 = H.now()
    code, s = h:post("/v1/sagas/Trip?wait=300ms", { nap = "1500ms" })
    local took = H.now() - t0
    assert.equal(201, code)
    assert.equal("running", s.status)
    assert.is_true(took >= 0.25 and took < 1.4, "a wait of 300ms took " .. took)
    assert.equal("completed", h:wait(s.id).status)
    -- a known idempotency key: 200, the same saga, waited for like a new one
    local key = "trip-" .. H.uid()
    code, s = h:post("/v1/sagas/Trip?wait=30s", { nap = "300ms" }, { ["Idempotency-Key"] = key })
    assert.equal(201, code)
    assert.equal("completed", s.status)
    local again
    code, again = h:post("/v1/sagas/Trip?wait=30s", { nap = "300ms" }, { ["Idempotency-Key"] = key })
    assert.equal(200, code)
    assert.equal(s.id, again.id)
    assert.equal("completed", again.status)
    -- a malformed wait is refused before anything starts; an unknown type is 404 as without a wait
    local _, before = h:get("/v1/counts?type=Trip")
    code, s = h:post("/v1/sagas/Trip?wait=forever", {})
    assert.equal(400, code)
    assert.truthy(s.error:find("wait", 1, true))
    code = h:post("/v1/sagas/Trip?wait=6m", {})
    assert.equal(400, code)
    local _, after = h:get("/v1/counts?type=Trip")
    assert.same(before, after)
    code = h:post("/v1/sagas/NoSuchSaga?wait=5s", {})
    assert.equal(404, code)
  end)

  it("sagahost start --wait waits for the end without polling", function()
    -- the CLI talks to the host through a proxy that writes down every request line
    local port = h.url:match(":(%d+)$")
    local reqlog = h.dir .. "/requests-" .. H.uid() .. ".txt"
    local p = io.popen("/usr/bin/python3 tests/spec/count_proxy.py " .. port .. " " .. H.q(reqlog) ..
                       " & echo $!; wait", "r")
    local proxy_pid = tonumber(p:read("l"))
    local proxy_port = tonumber(p:read("l"))
    assert(proxy_pid and proxy_port, "the counting proxy did not start")
    local via = "http://127.0.0.1:" .. proxy_port
    local code, out, err = H.cli("start Trip --input '{\"nap\":\"700ms\"}' --wait --timeout 30", via)
    os.execute("kill " .. proxy_pid)
    p:close()
    assert.equal(0, code, err)
    assert.truthy(out:find("completed", 1, true), out)
    -- one request: the start waits for the end (POST ?wait=); no GET, no polling
    local lines = H.read(reqlog) or ""
    assert.equal(1, H.count(lines, "\n"), lines)
    assert.truthy(lines:find("^POST /v1/sagas/Trip%?wait=%d+ms\n$"), lines)
    -- a saga that outlives --timeout: exit 1, it is said to go on, and it does
    code, out, err = H.cli("start Trip --input '{\"nap\":\"1500ms\"}' --wait --timeout 0.3", h.url)
    assert.equal(1, code)
    assert.truthy(err:find("still running", 1, true), err)
    local id = err:match("saga (%S+) is still")
    assert.equal("completed", h:wait(id).status)
    -- a saga that compensates: its JSON on stdout, exit 1
    code, out, err = H.cli("start Trip --input '{\"fail\":true}' --wait", h.url)
    assert.equal(1, code)
    assert.equal("compensated", cjson.decode(out).status)
    assert.truthy(err:find("ended compensated", 1, true), err)
  end)
end)

describe("events with several hosts", function()
  it("a client connected to either host sees both hosts' events", function()
    H.pg_only("several hosts share a database only on PostgreSQL")
    local dir = H.tmpdir("events-shared")
    local db = H.db_for(dir, "shared.db")
    local a = H.host({ name = "ev-a", db = db, host_id = "ev-a", scripts = { ["trip.lua"] = SCRIPT } }):start()
    local b = H.host({ name = "ev-b", db = db, host_id = "ev-b", scripts = { ["trip.lua"] = SCRIPT } }):start()
    local ca, cb = sse(a), sse(b)
    local on_a = a:start_saga("Trip", {})
    local on_b = b:start_saga("Trip", { fail = true })
    for _, c in ipairs({ ca, cb }) do
      local evs = until_events(c, function(e) return terminal_of(e, on_a) and terminal_of(e, on_b) end,
        "both hosts' sagas to end")
      assert.equal("ev-a", terminal_of(evs, on_a).data.host_id)
      assert.equal("ev-b", terminal_of(evs, on_b).data.host_id)
      assert.equal(6, #of_saga(evs, on_a))
      assert.equal(11, #of_saga(evs, on_b))
      c.close()
    end
    -- a wait on one host for a saga another host runs
    local slow = b:start_saga("Trip", { nap = "800ms" })
    local code, s = a:get("/v1/sagas/" .. slow .. "?wait=20s")
    assert.equal(200, code)
    assert.equal("completed", s.status)
    a:stop(); b:stop()
  end)
end)

describe("event retention", function()
  it("forgets events older than --event-retention; a resume from before them starts at the oldest kept", function()
    local h = H.host({ name = "ev-retention", scripts = { ["trip.lua"] = SCRIPT }, args = "--event-retention 2s" }):start()
    local old = h:start_saga("Note", {})
    h:wait(old)
    local c = sse(h, nil, { ["Last-Event-ID"] = H.pg and "0-0" or "0" })
    local evs = until_events(c, function(e) return terminal_of(e, old) end, "the first saga's events")
    c.close()
    H.sleep(4 * H.slow) -- past the retention, and a sweep (twice per retention)
    local new = h:start_saga("Note", {})
    h:wait(new)
    c = sse(h, nil, { ["Last-Event-ID"] = H.pg and "0-0" or "0" })
    evs = until_events(c, function(e) return terminal_of(e, new) end, "the second saga's events")
    c.close()
    assert.equal(0, #of_saga(evs, old))
    assert.equal(4, #of_saga(evs, new))
    h:stop()
  end)
end)
