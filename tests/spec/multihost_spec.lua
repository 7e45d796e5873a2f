-- End-to-end, PostgreSQL store only (SG_STORE=postgres): several orchestrator hosts share one database.
-- Each host owns the sagas it started; a host that dies (kill -9) loses them to the others once its lease
-- (--lease 3s here) has run out; a host cut from the database for longer than its lease is fenced when it
-- comes back (its sagas were taken over: it drops them and applies nothing twice). Any host reads every
-- saga and forwards operator verbs to the saga's owner.
local H = require "helper"
local cjson = require "cjson"

local LEASE = "3s"
local pg_admin = "postgres://postgres@127.0.0.1:" .. H.pg_port .. "/postgres"

local terminal = { completed = true, compensated = true, compensation_failed = true }

-- a host id as a Lua pattern (ids hold '-')
local function pat(s) return (s:gsub("%p", "%%%0")) end

-- the sagas of `owner` that the hosts in `takers` logged taking over: the sum of N over the lines
-- "took over N saga(s) of host <owner> ...", the first such line, its time and the time of the last one
local function took_over(takers, owner)
  local n, first, first_t, last_t = 0, nil, nil, nil
  for _, h in ipairs(takers) do
    for line in h:log():gmatch("[^\n]+") do
      local k = line:match("took over (%d+) saga%(s%) of host " .. pat(owner) .. "%f[^%w_.-]")
      if k then
        n = n + tonumber(k)
        local t = H.log_time(line)
        if not first_t or (t and t < first_t) then first, first_t = line, t end
        if t and (not last_t or t > last_t) then last_t = t end
      end
    end
  end
  return n, first, first_t, last_t
end

-- POST a start to host with an idempotency key, again while the host answers 503 (its store is away) or
-- nothing; returns the saga id
local function start(host, type_, input, key)
  local deadline = os.time() + 30 * H.slow
  while true do
    local code, body = host:post("/v1/sagas/" .. type_, input, { ["Idempotency-Key"] = key })
    if code == 201 or code == 200 then return body.id end
    if not host:alive() then error("host " .. host.opts.host_id .. " died:\n" .. (H.read(host.curlog) or "")) end
    if (code ~= 503 and code ~= 0 and code ~= nil) or os.time() > deadline then
      error("start " .. key .. " on " .. host.opts.host_id .. ": " .. tostring(code) .. " " ..
            (type(body) == "table" and cjson.encode(body) or tostring(body)))
    end
    H.sleep(0.2)
  end
end

-- statuses of ids straight from the shared database: { id = status }
local function statuses(db, ids)
  local out = {}
  for i = 1, #ids, 200 do
    local list = {}
    for j = i, math.min(i + 199, #ids) do list[#list + 1] = "'" .. ids[j] .. "'" end
    for line in H.sql(db, "SELECT id, status FROM sagas WHERE id IN (" .. table.concat(list, ",") .. ")"):gmatch("[^\n]+") do
      local id, st = line:match("^([^|]+)|(.*)$")
      out[id] = st
    end
  end
  return out
end

local function open_count(db, ids)
  local st, n = statuses(db, ids), 0
  for _, id in ipairs(ids) do if not terminal[st[id]] then n = n + 1 end end
  return n
end

-- waits until every saga of ids is terminal in the shared database (hosts may be answering 503 meanwhile)
local function wait_terminal(db, ids, timeout)
  local deadline = os.time() + timeout * H.slow
  while true do
    local st, left, some = statuses(db, ids), 0, {}
    for _, id in ipairs(ids) do
      if not terminal[st[id]] then
        left = left + 1
        if #some < 5 then some[#some + 1] = id .. "=" .. tostring(st[id]) end
      end
    end
    if left == 0 then return end
    if os.time() > deadline then
      error(left .. " of " .. #ids .. " sagas not terminal in time, e.g. " .. table.concat(some, ", "))
    end
    H.sleep(0.25)
  end
end

-- a POST that gives up after 10 s (code 0) instead of hanging the spec when a host holds it
local function post_timed(host, path, body, headers)
  local saved = host.opts.curl_args
  host.opts.curl_args = (saved or "") .. " --max-time 10"
  local code, decoded = host:post(path, body, headers)
  host.opts.curl_args = saved
  return code, type(decoded) == "table" and cjson.encode(decoded) or tostring(decoded)
end

local function wait_healthy(hosts, timeout)
  local deadline = os.time() + timeout * H.slow
  for _, h in ipairs(hosts) do
    while h:get("/healthz") ~= 200 do
      assert(h:alive(), "host " .. h.opts.host_id .. " died:\n" .. (H.read(h.curlog) or ""))
      if os.time() > deadline then error("host " .. h.opts.host_id .. " is not healthy again in time") end
      H.sleep(0.2)
    end
  end
end

-------------------------------------------------------------------------------------------------------------
-- the chaos run: 3 orchestrators on one database, a participant over RabbitMQ

local ORCH = [[
local saga = require "saga"
saga.define { name = "Chaos", steps = {
  { name = "reserve",
    action = function(ctx) ctx.data.r = ctx:call("SVC", "Reserve", { n = ctx.input.n }) end,
    compensate = function(ctx) ctx:call("SVC", "Release", { n = ctx.input.n }) end },
  { name = "nap", action = function(ctx) ctx:sleep(ctx.input.nap) end },
  { name = "charge", action = function(ctx) ctx.data.c = ctx:call("SVC", "Charge", { n = ctx.input.n }) end },
} }
]]

local PART = [[
local saga = require "saga"
local function trace(msg) print("HANDLED " .. msg.message_id .. " " .. msg.saga_id .. " " .. msg.command) end
saga.handle("SVC", "Reserve", function(p, msg) trace(msg) return { reserved = p.n } end)
saga.handle("SVC", "Release", function(p, msg) trace(msg) return { released = p.n } end)
saga.handle("SVC", "Charge", function(p, msg)
  trace(msg)
  if p.n % 10 == 0 then error({ message = "card declined", retryable = false }) end
  return { charged = p.n }
end)
]]

local N = 500
-- every 5th saga naps 3-4.5 s (so that every host has sagas in flight whenever something happens to it),
-- the others 200-500 ms; every 10th is declined at charge and compensates
local function nap_of(n) return n % 5 == 0 and (3000 + n * 7 % 1500) .. "ms" or (200 + n * 37 % 301) .. "ms" end
local function expected_status(n) return n % 10 == 0 and "compensated" or "completed" end
local HIST = {
  completed = { "reserve:action:completed", "nap:action:completed", "charge:action:completed" },
  compensated = { "reserve:action:completed", "nap:action:completed", "charge:action:failed",
                  "reserve:compensate:completed" },
}

describe("several hosts on one PostgreSQL database", function()
  it("500 sagas over 3 hosts: kill -9 one, restart one, cut one from the database, stop the server", function()
    H.pg_only("several hosts share one PostgreSQL database")
    H.broker_up()
    local uid = H.uid()
    local svc = "mhsvc_" .. uid
    local shared = H.db_for(H.tmpdir("mh-shared"), "shared.db")
    -- C logs in as a role of its own, so that it alone can be cut from the server (NOLOGIN, sessions ended)
    local role_c = "sg_mh_c_" .. uid
    H.sql(pg_admin, "CREATE ROLE " .. role_c .. " LOGIN SUPERUSER")
    local shared_c = shared:gsub("^postgres://postgres@", "postgres://" .. role_c .. "@")
    local function orch(name, db)
      return H.host { name = "mh-" .. name, amqp = true, host_id = "mh-" .. name .. "-" .. uid, db = db,
                      args = "--lease " .. LEASE, scripts = { ["chaos.lua"] = (ORCH:gsub("SVC", svc)) } }
    end
    local A, B, C = orch("a", shared), orch("b", shared), orch("c", shared_c)
    local part = H.host { name = "mh-part", amqp = true, host_id = "mh-part-" .. uid,
                          scripts = { ["part.lua"] = (PART:gsub("SVC", svc)) } }
    local cut = false
    local function cut_c(on)
      H.sql(pg_admin, "ALTER ROLE " .. role_c .. (on and " NOLOGIN" or " LOGIN"))
      cut = on
      if on then
        H.sql(pg_admin, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '" .. role_c .. "'")
      end
    end

    local ok, err = xpcall(function()
      part:start_amqp()
      A:start_amqp()
      B:start_amqp()
      C:start_amqp()
      local ids, n_of, owner_of = {}, {}, {}
      local function start_n(host, n)
        local id = start(host, "Chaos", { n = n, nap = nap_of(n) }, "mh-" .. uid .. "-" .. n)
        ids[#ids + 1] = id
        n_of[id] = n
        owner_of[id] = host
        return id
      end
      local function wave(from, to, hosts, each)
        for n = from, to do
          start_n(hosts[n % #hosts + 1], n)
          if each then each(n) end
        end
      end

      -- 1. sagas on all three; then A dies
      wave(1, 200, { A, B, C })
      local a_ids = {}
      for _, id in ipairs(ids) do if owner_of[id] == A then a_ids[#a_ids + 1] = id end end
      A:kill9()
      local t_kill = H.now()
      H.sleep(0.3) -- a COMMIT A sent just before it died is finished by its backend
      -- what A left unfinished (A is dead and its lease still runs: nobody else touches them yet)
      local a_open = open_count(shared, a_ids)
      assert.is_true(a_open > 0, "A had no saga in flight when it was killed")

      -- 2. B and C go on starting sagas; one of them takes A's over once its lease has run out
      local t_seen
      wave(201, 300, { B, C }, function(n)
        if n % 10 == 0 and not t_seen and took_over({ B, C }, A.opts.host_id) >= a_open then t_seen = H.now() end
      end)
      local deadline = os.time() + 30 * H.slow
      while took_over({ B, C }, A.opts.host_id) < a_open do
        assert(os.time() < deadline, "A's sagas were not taken over (" .. took_over({ B, C }, A.opts.host_id) ..
          " of " .. a_open .. " logged)\nB:\n" .. B:log() .. "\nC:\n" .. C:log())
        H.sleep(0.1)
      end
      t_seen = t_seen or H.now()
      local n_a, line_a, t_line = took_over({ B, C }, A.opts.host_id)
      assert.are.equal(a_open, n_a)
      assert.matches("lease expired", line_a, 1, true)
      local takeover_s = (t_line or t_seen) - t_kill
      print(string.format("\n  takeover: %.1fs after kill -9 (lease %s; %d saga(s) of A in flight; seen by the test after %.1fs)",
                          takeover_s, LEASE, a_open, t_seen - t_kill))
      assert.is_true(takeover_s >= 1.0, "A's sagas were taken over while its lease still ran: " .. line_a)

      -- 3. B restarts with its id (stopped: it hands its sagas over at once); sagas keep coming on B and C;
      --    then B is killed and at once started again: before its lease runs out, it gets its sagas back
      B:stop()
      B:start_amqp()
      wave(301, 370, { B, C })
      B:kill9()
      H.sleep(0.3)
      -- what B owns unfinished (its own starts, and those it kept across the clean restart)
      local b_open = tonumber(H.sql(shared, "SELECT count(*) FROM sagas WHERE owner = '" .. B.opts.host_id ..
                                    "' AND status IN ('running', 'compensating')"))
      assert.is_true(b_open > 0, "B had no saga in flight when it was killed")
      local b_taken = took_over({ A, C }, B.opts.host_id)
      B:start_amqp()
      local recovered = tonumber((H.read(B.curlog) or ""):match("recovered (%d+) saga%(s%)"))
      assert.are.equal(b_open, recovered, "B, back within its lease, did not get its " .. b_open .. " open sagas back")
      print(string.format("  B killed and restarted at once: it got back its %d open saga(s)", recovered))

      -- 4. C is cut from the database (its sessions ended, logins refused) for longer than its lease: B
      --    takes C's sagas over; C, back, is fenced and drops them
      local c_ids = {}
      for _, id in ipairs(ids) do if owner_of[id] == C then c_ids[#c_ids + 1] = id end end
      local t_cut = H.now()
      cut_c(true)
      -- its backends gone (one may still have been finishing a COMMIT), what C owns is frozen
      deadline = os.time() + 10
      while H.sql(pg_admin, "SELECT count(*) FROM pg_stat_activity WHERE usename = '" .. role_c .. "'") ~= "0" do
        assert(os.time() < deadline, "C's sessions did not end")
        H.sleep(0.1)
      end
      local c_open = open_count(shared, c_ids)
      assert.is_true(c_open > 0, "C had no saga in flight when it was cut off")
      wave(371, 400, { B })
      H.sleep(1.5)
      -- C, which has noticed by now (its lease renewals fail), refuses starts with 503 instead of holding them
      local c503, c503_body = post_timed(C, "/v1/sagas/Chaos", { n = 0, nap = "1ms" },
                                         { ["Idempotency-Key"] = "mh-" .. uid .. "-cut" })
      assert.are.equal(503, c503, "a start on C while it is cut off: " .. tostring(c503) .. " " .. c503_body)
      wave(401, 430, { B })
      deadline = os.time() + 30 * H.slow
      -- (C may own more than c_open: sagas of A it took over and has not finished yet)
      while took_over({ B }, C.opts.host_id) < c_open do
        assert(os.time() < deadline, "B did not take C's " .. c_open .. " sagas over while C was cut off:\n" .. B:log())
        H.sleep(0.1)
      end
      local t_c = H.now()
      H.sleep(1)
      cut_c(false)
      assert.is_true(C:alive(), "C died without its database:\n" .. H.read(C.curlog))
      -- the line whose message starts with "fenced:" (after the timestamp and the level)
      local fenced = C:wait_log("Z%s+%a+%s+(fenced:[^\n]*)", 30)
      local n_c = took_over({ B }, C.opts.host_id)
      print(string.format("  C cut off for %.1fs: B took over %d saga(s) of C after %.1fs; C: %s", H.now() - t_cut, n_c,
                          t_c - t_cut, fenced))
      wait_healthy({ C }, 30)
      assert.are.equal(b_taken, took_over({ A, C }, B.opts.host_id), "B's sagas were taken over though B came back in time")

      -- 5. A comes back under its id (everything it had was taken over); all three take sagas; then the
      --    whole server stops for 3 s with sagas in flight
      A:start_amqp()
      wave(431, N, { A, B, C })
      local code, out = H.sh("bash tests/pg-cluster.sh stop")
      assert(code == 0, out)
      H.sleep(3)
      for _, h in ipairs({ A, B, C, part }) do assert.is_true(h:alive(), h.opts.host_id .. " died without its database") end
      local b503, b503_body = post_timed(B, "/v1/sagas/Chaos", { n = 0, nap = "1ms" })
      assert.are.equal(503, b503, "a start on B while the server is down: " .. tostring(b503) .. " " .. b503_body)
      code, out = H.sh("bash tests/pg-cluster.sh")
      assert(code == 0, out)
      wait_healthy({ A, B, C, part }, 60)

      -- every saga ends as designed, each transition once
      assert.are.equal(N, #ids)
      wait_terminal(shared, ids, 90)
      local readers = { A, B, C }
      for i, id in ipairs(ids) do
        local s = readers[i % 3 + 1]:saga(id) -- any host answers for any saga
        local want = expected_status(n_of[id])
        assert.are.equal(want, s.status, "saga " .. id .. " (n=" .. n_of[id] .. ")")
        assert.are.same(HIST[want], H.history(s), "history of saga " .. id .. " (n=" .. n_of[id] .. ")")
      end
      -- each command took effect once at the participant: no message id twice, each saga's commands once
      local seen, per_saga, total = {}, {}, 0
      for mid, sid, cmd in part:log():gmatch("HANDLED (%S+) (%S+) (%a+)") do
        assert.is_nil(seen[mid], "command " .. mid .. " handled twice")
        seen[mid] = true
        total = total + 1
        per_saga[sid] = per_saga[sid] or {}
        assert.is_nil(per_saga[sid][cmd], "saga " .. sid .. ": " .. cmd .. " handled twice (two message ids)")
        per_saga[sid][cmd] = true
      end
      local want_total = 0
      for _, id in ipairs(ids) do
        local comp = n_of[id] % 10 == 0
        want_total = want_total + (comp and 3 or 2)
        assert.are.same(comp and { Reserve = true, Charge = true, Release = true } or { Reserve = true, Charge = true },
                        per_saga[id] or {}, "commands of saga " .. id)
      end
      assert.are.equal(want_total, total)
      local fenced_lines = 0
      for _, h in ipairs({ A, B, C }) do
        for _ in h:log():gmatch("Z%s+%a+%s+fenced:") do fenced_lines = fenced_lines + 1 end
      end
      print(string.format("  %d sagas: %d completed, %d compensated, each transition once; %d commands handled once each;" ..
                          " %d host run(s) fenced in all", N, N - N // 10, N // 10, total, fenced_lines))
    end, debug.traceback)
    for _, h in ipairs({ A, B, C, part }) do h:stop() end
    H.sh("bash tests/pg-cluster.sh")
    if cut then pcall(cut_c, false) end
    pcall(H.sql, pg_admin, "DROP ROLE IF EXISTS " .. role_c)
    H.delete_queues({ svc }, { A.opts.host_id, B.opts.host_id, C.opts.host_id, part.opts.host_id })
    assert(ok, err)
  end)

  ----------------------------------------------------------------------------------------------------------
  -- in-process transport (no broker): takeover, reads and operator verbs through any host

  local LOCAL = [[
local saga = require "saga"
saga.handle("mh_local", "Work", function(p) return { worked = p.n } end)
saga.define { name = "Nap", steps = {
  { name = "work", action = function(ctx) ctx.data.w = ctx:call("mh_local", "Work", { n = ctx.input.n }) end },
  { name = "nap", action = function(ctx) ctx:sleep("2s") end },
  { name = "done", action = function(ctx) ctx.data.done = true end },
} }
saga.define { name = "Long", steps = {
  { name = "first", action = function(ctx) ctx.data.first = true end,
    compensate = function(ctx) ctx.data.undone = true end },
  { name = "wait", action = function(ctx) ctx:sleep("60s") end },
} }
]]

  it("without a broker: a dead host's sagas finish on another; reads and operator verbs work on any host", function()
    H.pg_only("several hosts share one PostgreSQL database")
    local uid = H.uid()
    local shared = H.db_for(H.tmpdir("mh-local"), "shared.db")
    local function host(name)
      return H.host { name = "mhl-" .. name, host_id = "mhl-" .. name .. "-" .. uid, db = shared,
                      args = "--lease " .. LEASE, scripts = { ["local.lua"] = LOCAL } }
    end
    local A, B, C = host("a"), host("b"), host("c")
    local dup
    local ok, err = xpcall(function()
      A:start()
      B:start()
      C:start()
      -- a second live host with B's id on the same database is refused at start
      dup = H.host { name = "mhl-dup", host_id = B.opts.host_id, db = shared, args = "--lease " .. LEASE,
                     scripts = { ["local.lua"] = LOCAL } }
      local started, why = pcall(dup.start, dup)
      assert.is_false(started, "a second host with B's id was let in")
      assert.matches(B.opts.host_id, why, 1, true)
      assert.is_true(B:alive())

      local ids = {}
      for i = 1, 50 do ids[#ids + 1] = A:start_saga("Nap", { n = i }) end
      A:kill9()
      local t_kill = H.now()
      H.sleep(0.3)
      local a_open = open_count(shared, ids)
      -- the sagas whose sleep A had made durable (journaled) before it died
      local asleep = {}
      for sid in H.sql(shared, "SELECT saga_id FROM journal WHERE kind = 'sleep'"):gmatch("[^\n]+") do asleep[sid] = true end
      assert.is_true(a_open > 0, "all 50 sagas finished before A was killed")
      local deadline = os.time() + 30 * H.slow
      while took_over({ B, C }, A.opts.host_id) < a_open do
        assert(os.time() < deadline, "A's sagas were not taken over:\nB:\n" .. B:log() .. "\nC:\n" .. C:log())
        H.sleep(0.1)
      end
      local n, line, t_line, t_last = took_over({ B, C }, A.opts.host_id)
      assert.are.equal(a_open, n)
      assert.matches("lease expired", line, 1, true)
      -- B answers for all of them, whoever finished them
      B:wait_all(ids, 30)
      local open_naps, latest = 0, -math.huge
      for _, id in ipairs(ids) do
        local s = B:saga(id)
        assert.are.equal("completed", s.status)
        assert.are.same({ "work:action:completed", "nap:action:completed", "done:action:completed" }, H.history(s))
        -- the 2 s sleeps kept their due time (all past when the lease ran out): they ended at the takeover,
        -- not 2 s after it as sleeps started over would
        for _, st in ipairs(s.steps) do
          if st.name == "nap" and st.phase == "action" and asleep[id] then
            local fin = H.log_time(st.finished_at)
            if fin > t_kill then
              open_naps = open_naps + 1
              latest = math.max(latest, fin - t_last)
              assert.is_true(fin - t_last < 1.2, string.format("saga %s slept again after the takeover: its nap" ..
                " ended %.1fs after the last took-over line", id, fin - t_last))
            end
          end
        end
      end
      assert.is_true(open_naps > 0, "no journaled sleep was cut by the kill")
      print(string.format("\n  takeover: %.1fs after kill -9 (lease %s, %d saga(s), no broker); the %d journaled sleeps cut" ..
                          " ended at most %.2fs after the last took-over line", t_line - t_kill, LEASE, n, open_naps, latest))

      -- an operator verb sent to B for a saga C owns is applied by C and answered by B
      local id = C:start_saga("Long", {})
      local s = C:wait(id, "running")
      deadline = os.time() + 10 * H.slow
      while #H.history(s) < 1 do
        assert(os.time() < deadline, "Long did not reach its sleep")
        H.sleep(0.1)
        s = C:saga(id)
      end
      local code, body = B:post("/v1/sagas/" .. id .. "/compensate", { reason = "test", by = "mh-spec" })
      assert.are.equal(200, code, cjson.encode(body))
      assert.are.equal(id, body.id)
      assert.is_true(body.status == "compensating" or body.status == "compensated", "status " .. tostring(body.status))
      s = B:wait(id, "compensated", 20)
      assert.are.same({ "first:action:completed", "wait:action:failed", "first:compensate:completed" }, H.history(s))
      local event
      for _, st in ipairs(s.steps) do
        if st.phase == "saga" and st.event == "operator_compensate" then event = st.error end
      end
      assert.are.equal("by mh-spec: test", event)
      -- a verb the saga's status does not allow is refused the same way through a non-owner
      assert.are.equal(409, (B:post("/v1/sagas/" .. id .. "/compensate", { reason = "again" })))

      -- the owner dies with the verb on its way: it is applied once the saga is taken over
      local id2 = C:start_saga("Long", {})
      deadline = os.time() + 10 * H.slow
      while #H.history(C:saga(id2)) < 1 do
        assert(os.time() < deadline, "Long did not reach its sleep")
        H.sleep(0.1)
      end
      C:kill9()
      local t0 = H.now()
      local code2, body2 = post_timed(B, "/v1/sagas/" .. id2 .. "/compensate", { reason = "owner gone", by = "mh-spec" })
      assert.are.equal(200, code2, body2)
      s = B:wait(id2, "compensated", 20)
      assert.are.same({ "first:action:completed", "wait:action:failed", "first:compensate:completed" }, H.history(s))
      print(string.format("  a verb for a saga of a dead host: answered after %.1fs (the takeover)", H.now() - t0))
    end, debug.traceback)
    for _, h in ipairs({ A, B, C, dup }) do if h then h:stop() end end
    assert(ok, err)
  end)

  ----------------------------------------------------------------------------------------------------------
  -- after a takeover a participant often gets a command twice in quick succession: the old owner's call
  -- (delayed, e.g. parked while the participant's own database was away) and the new owner's re-send

  local DUP_PUB = [[
import json, sys, pika
url, queue, reply, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.queue_declare(reply, durable=True)
for i in range(n):
    mid = "%s.0.a.1.%d" % (prefix, i)
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2, correlation_id=mid,
                                 message_id=mid, reply_to=reply, type="Post",
                                 headers={"saga-id": prefix, "saga-type": "Dup", "step": 0, "attempt": 1})
    for _ in range(2):
        ch.basic_publish("", queue, json.dumps({"n": i}).encode(), props)
conn.close()
]]

  it("a command delivered twice back to back (a call and a taker's re-send) runs its handler once", function()
    H.pg_only("the participant's inbox on PostgreSQL")
    H.broker_up()
    local uid = H.uid()
    local svc = "mhdup_" .. uid
    local reply = "mhdup_reply_" .. uid
    local part = H.host { name = "mh-dup", amqp = true, host_id = "mh-dup-" .. uid, scripts = { ["p.lua"] = ([[
local saga = require "saga"
saga.handle("SVC", "Post", function(p, msg)
  print("HANDLED " .. msg.message_id)
  -- every third one runs past its 2 ms slice: preempted, it is still running when its repeat comes
  if p.n % 3 == 0 then local t = os.clock(); while os.clock() - t < 0.004 do end end
  return { posted = p.n }
end)
]]):gsub("SVC", svc) } }
    local n = 100
    local ok, err = xpcall(function()
      part:start_amqp()
      local py = part.dir .. "/dup_pub.py"
      H.write(py, DUP_PUB)
      local code, out, errs = H.run(table.concat({ H.python, py, H.q(H.pika_url()), "saga.svc." .. svc, reply,
                                                   "dup" .. uid, n }, " "))
      assert(code == 0, out .. errs)
      -- every delivery is answered (the repeat from the inbox)
      local deadline = os.time() + 20 * H.slow
      while tonumber(H.amqp_tool("count", reply)) < 2 * n and os.time() < deadline do H.sleep(0.2) end
      local seen, handled, twice = {}, 0, {}
      for mid in part:log():gmatch("HANDLED (%S+)") do
        handled = handled + 1
        if seen[mid] then twice[#twice + 1] = mid end
        seen[mid] = true
      end
      assert.are.equal(0, #twice, #twice .. " of " .. n .. " commands delivered twice were handled twice, e.g. " ..
                       tostring(twice[1]))
      assert.are.equal(n, handled)
      assert.are.equal(2 * n, tonumber(H.amqp_tool("count", reply)))
    end, debug.traceback)
    part:stop()
    H.delete_queues({ svc }, { part.opts.host_id })
    pcall(H.amqp_tool, "delete", reply)
    assert(ok, err)
  end)
end)
