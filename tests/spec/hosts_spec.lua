-- End-to-end, PostgreSQL only (SG_STORE=postgres): the edges of several hosts on one database, each
-- shown on its own (the chaos of them all at once is multihost_spec): one id per live host; a clean
-- stop lets the others take over at once; a host frozen past its lease is fenced when it wakes and
-- loads what it still owns, and nothing is applied twice.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
saga.handle("hsvc", "Do", function(p) print("DID " .. p.k) return { ok = p.k } end)
saga.define { name = "Slow", steps = {
  { name = "first", action = function(ctx) ctx.data.a = ctx:call("hsvc", "Do", { k = ctx.input.n .. "a" }) end },
  { name = "nap", action = function(ctx) ctx:sleep(ctx.input.nap or "3s") end },
  { name = "last", action = function(ctx) ctx.data.b = ctx:call("hsvc", "Do", { k = ctx.input.n .. "b" }) end },
} }
]]

local EXPECTED = { "first:action:completed", "nap:action:completed", "last:action:completed" }

-- the metric's value in a /metrics text
local function metric(host, name)
  local _, _, text = host:get("/metrics")
  return tonumber(text:match("\n" .. name .. " (%d+)"))
end

-- n hosts on one shared database (in-process transport: each host runs the handlers itself)
local function hosts(n, lease, tag)
  local db = H.db_for(H.tmpdir("hosts-" .. tag), "shared.db")
  local list = {}
  for i = 1, n do
    list[i] = H.host { name = "hosts-" .. tag .. i, db = db, host_id = tag .. "-" .. i,
                       args = "--lease " .. lease, scripts = { ["s.lua"] = SCRIPT } }
  end
  return list, db
end

-- every "DID k" line of all the hosts' logs, counted per k
local function effects(list)
  local seen = {}
  for _, h in ipairs(list) do
    for k in h:log():gmatch("DID (%S+)\n") do seen[k] = (seen[k] or 0) + 1 end
  end
  return seen
end

local function stop_all(list) for _, h in ipairs(list) do h:stop() end end

describe("several hosts on one database", function()
  it("refuses a second live host with the same id, naming the holder", function()
    H.pg_only("host ids are per PostgreSQL database")
    local list = hosts(1, "5s", "dup")
    local a = list[1]
    a:start()
    local ok, err = pcall(function()
      local b = H.host { name = "hosts-dup-b", db = a.db, host_id = "dup-1", scripts = { ["s.lua"] = SCRIPT } }
      local code, out = H.sh(string.format("timeout 20 %s run --db %s --host-id dup-1 --listen 127.0.0.1:0 %s",
        H.bin, H.q(a.db), H.q(b.scripts)))
      assert.are_not.equal(0, code)
      assert.matches("host id 'dup-1' is in use", out, 1, true)
      assert.matches("sagahost pid " .. a.pid, out, 1, true)
      -- the first one is untouched
      local id = a:start_saga("Slow", { n = "d1", nap = "10ms" })
      assert.are.equal("completed", a:wait(id).status)
      local code2, health = a:get("/healthz")
      assert.are.equal(200, code2)
      assert.are.equal("dup-1", health.host_id)
    end)
    a:stop()
    assert(ok, err)
  end)

  it("a host stopped cleanly releases its lease: another takes its sagas over at once", function()
    H.pg_only("leases are PostgreSQL's")
    local list = hosts(2, "6s", "rel")
    local a, b = list[1], list[2]
    a:start()
    b:start()
    local ok, err = pcall(function()
      local ids = {}
      for i = 1, 20 do ids[i] = a:start_saga("Slow", { n = "r" .. i, nap = "3s" }) end
      H.sleep(0.5)
      -- napping: all 20 are in flight on a, by type
      assert.are.equal(20, metric(a, 'sagahost_type_in_flight{type="Slow"}'))
      assert.are.equal(20, metric(a, 'sagahost_type_started_total{type="Slow"}'))
      local t0 = H.now()
      a:stop()
      -- takeover looks every lease/3 (2 s): well before the 6 s lease would have run out
      local taken = b:wait_log("took over (%d+) saga%(s%) of host rel%-1 %(it stopped and released them%)", 5)
      local took = H.now() - t0
      assert.is_true(took < 4.5, "takeover took " .. took .. " s")
      local got = b:wait_all(ids, 30)
      for _, id in ipairs(ids) do
        assert.are.equal("completed", got[id].status)
        assert.are.same(EXPECTED, H.history(b:saga(id)))
      end
      for k, n in pairs(effects(list)) do assert.are.equal(1, n, "effect " .. k .. " applied " .. n .. " times") end
      assert.are.equal(20, metric(b, "sagahost_sagas_taken_over_total"))
      print(string.format("\n  a clean stop: %s sagas taken over %.1f s later (lease 6 s), all completed once", taken, took))
    end)
    stop_all(list)
    assert(ok, err)
  end)

  it("a takeover that waits on the database does not stop the host taking over: it serves meanwhile", function()
    H.pg_only("leases are PostgreSQL's")
    local list, db = hosts(2, "3s", "stk")
    local a, b = list[1], list[2]
    a:start()
    b:start()
    local dir = H.tmpdir("hosts-stk-out")
    local ok, err = pcall(function()
      local ids = {}
      for i = 1, 10 do ids[i] = a:start_saga("Slow", { n = "s" .. i, nap = "2s" }) end
      H.sleep(0.5)
      -- another session holds the journal table for 4 s: the takeover round reads the journals of
      -- what it claims, so it waits on that lock
      H.pg_lock(db, "journal", 4, dir)
      local t_lock = H.now()
      a:stop() -- releases its lease: b takes its sagas over at its next look (lease/3)
      -- while the round waits on the lock, b answers at once
      local worst, polls, waiting = 0, 0, false
      while H.now() - t_lock < 3 do
        local t0 = H.now()
        assert.are.equal(200, (b:get("/healthz")))
        assert.are.equal(200, (b:get("/v1/sagas?limit=1")))
        worst = math.max(worst, H.now() - t0)
        polls = polls + 1
        -- b's round is there, on one of its reads' connections, waiting for the lock
        waiting = waiting or H.sql(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE" ..
          " 'sagahost pid " .. math.tointeger(b.pid) .. " on % (reads)' AND wait_event_type = 'Lock'") ~= "0"
        H.sleep(0.1)
      end
      assert.is_true(waiting, "b's takeover round was never seen waiting for the lock")
      assert.is_nil(b:log():match("took over %d+ saga%(s%) of host stk%-1"), "the takeover did not wait for the lock")
      assert.is_true(worst < 1, string.format("b took %.2fs to answer while its takeover waited", worst))
      local taken = b:wait_log("took over (%d+) saga%(s%) of host stk%-1", 10)
      local took = H.now() - t_lock
      assert.are.equal("10", taken)
      assert.is_true(took > 3.5, string.format("the takeover did not wait for the lock (%.1fs)", took))
      local got = b:wait_all(ids, 30)
      for _, id in ipairs(ids) do
        assert.are.equal("completed", got[id].status)
        assert.are.same(EXPECTED, H.history(b:saga(id)))
      end
      for k, n in pairs(effects(list)) do assert.are.equal(1, n, "effect " .. k .. " applied " .. n .. " times") end
      print(string.format("\n  a takeover held %.1fs by a lock: %d polls of /healthz and the list meanwhile, slowest %.0f ms",
                          took, polls, worst * 1000))
    end)
    stop_all(list)
    assert(ok, err)
  end)

  it("a host frozen past its lease is fenced when it wakes: it drops its sagas and nothing is applied twice", function()
    H.pg_only("leases are PostgreSQL's")
    local list = hosts(2, "1s", "fen")
    local a, b = list[1], list[2]
    a:start()
    b:start()
    local ok, err = pcall(function()
      local ids = {}
      for i = 1, 20 do ids[i] = a:start_saga("Slow", { n = "f" .. i, nap = "4s" }) end
      -- frozen (a GC pause, a VM migration, a debugger): its lease runs out and b takes the sagas
      os.execute("kill -STOP " .. a.pid)
      local taken = b:wait_log("took over (%d+) saga%(s%) of host fen%-1", 6)
      os.execute("kill -CONT " .. a.pid)
      -- a wakes with its sagas in memory and timers due: its first commit is refused
      local fenced = a:wait_log("fenced: ([^\n]+)", 6)
      local got = b:wait_all(ids, 30)
      for _, id in ipairs(ids) do
        assert.are.equal("completed", got[id].status)
        assert.are.same(EXPECTED, H.history(b:saga(id)))
      end
      for k, n in pairs(effects(list)) do assert.are.equal(1, n, "effect " .. k .. " applied " .. n .. " times") end
      assert.are.equal(1, metric(a, "sagahost_fenced_total"))
      -- a goes on serving: it registered again and takes new work
      local code, health = a:get("/healthz")
      assert.are.equal(200, code, cjson.encode(health))
      local id = a:start_saga("Slow", { n = "after", nap = "10ms" })
      assert.are.equal("completed", a:wait(id).status)
      print(string.format("\n  frozen past its 1 s lease: %s sagas taken over, then the host was fenced (%s)",
                          taken, fenced:sub(1, 80)))
    end)
    os.execute("kill -CONT " .. (a.pid or 0) .. " 2>/dev/null")
    stop_all(list)
    assert(ok, err)
  end)

  it("a verb for a saga whose owner is dead is accepted (202), then applied by the host that takes it over", function()
    H.pg_only("leases are PostgreSQL's")
    local list = hosts(2, "12s", "fwd")
    local a, b = list[1], list[2]
    a:start()
    b:start()
    local ok, err = pcall(function()
      local id = a:start_saga("Slow", { n = "w1", nap = "60s" })
      H.sleep(0.5)
      a:kill9()
      -- b cannot reach the owner: after 10 s it says the verb waits in the saga's mail
      local t0 = H.now()
      local code, body = b:post("/v1/sagas/" .. id .. "/compensate", { reason = "owner gone", by = "ops" })
      assert.are.equal(202, code, cjson.encode(body))
      assert.are.equal(id, body.id)
      assert.is_true(body.accepted)
      assert.is_false(body.applied)
      local waited = H.now() - t0
      assert.is_true(waited >= 9.5, "answered after " .. waited .. " s")
      -- the lease runs out, b takes the saga over with its mail, and applies the verb
      local s = b:wait(id, "compensated", 40)
      assert.are.equal("compensated", s.status)
      local events = 0
      for _, st in ipairs(s.steps) do
        if st.phase == "saga" and st.event == "operator_compensate" then
          events = events + 1
          assert.matches("by ops: owner gone", st.error, 1, true)
        end
      end
      assert.are.equal(1, events, cjson.encode(s.steps))
      print(string.format("\n  a verb for a dead owner's saga: 202 after %.1f s, applied at the takeover, %.1f s after the request",
                          waited, H.now() - t0))
    end)
    stop_all(list)
    assert(ok, err)
  end)
end)
