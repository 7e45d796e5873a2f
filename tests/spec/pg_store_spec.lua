-- End-to-end, PostgreSQL store only (SG_STORE=postgres): the host's connection is cut (its session
-- ended on the server, as an operator, a restart or a failover would) while sagas run, again and
-- again. The batch in flight is held, new starts get 503 until the host has reconnected and written
-- it, and every saga that was acknowledged completes with each step once.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
saga.handle("ledger", "Post", function(p) print("POSTED " .. p.n) return { posted = p.n } end)
saga.define { name = "Cut", steps = {
  { name = "post", action = function(ctx) ctx.data.r = ctx:call("ledger", "Post", { n = ctx.input.n }) end },
  { name = "nap", action = function(ctx) ctx:sleep("150ms") end },
  { name = "done", action = function(ctx) ctx.data.done = true end },
} }
]]

describe("PostgreSQL store", function()
  -- The PostgreSQL store sends a batch's saga rows and history rows as one statement per kind, their
  -- values as array literals: every byte must come back as it went in (quotes, backslashes, braces,
  -- commas, the word NULL, empty strings, non-ASCII), in rows written together. The sagas are
  -- started by one curl with parallel transfers (their inserts share batches), fail their first
  -- attempt and are retried after the same 10 ms (their updates and history rows share batches).
  -- Runs on SQLite too.
  it("sagas written in one batch keep every byte of their inputs, data, errors and history", function()
    local host = H.host { name = "pg-batch", scripts = { ["batch.lua"] = [[
local saga = require "saga"
saga.define { name = "Kid", steps = {
  { name = "echo", retry = { attempts = 2, initial = "10ms" }, action = function(ctx)
      if ctx.attempt == 1 then error("first try: " .. ctx.input.s, 0) end
      ctx.data.s = ctx.input.s; ctx.data.n = ctx.input.n; ctx.data.empty = "" end },
} }
]] } }
    host:start()
    local ok, err = pcall(function()
      local strings = { [["quoted"]], [[back\slash]], [[\"both\\"]], "{braces,commas}", "NULL", "null",
                        "", " ", "ünïcödé ✓ 日本", "new\nline\ttab", "'single'", [[{"json":[1,"a\"b"]}]],
                        "trailing\\", "(parens)", "a,b,c", "}{", string.rep("x", 3000) }
      local dir = H.tmpdir("pg-batch-posts")
      local cmd = { "curl -s -Z --parallel-max 32" }
      for i, str in ipairs(strings) do
        H.write(dir .. "/in" .. i, cjson.encode({ s = str, n = i }))
        if i > 1 then cmd[#cmd + 1] = "--next" end
        cmd[#cmd + 1] = "-X POST -H 'Content-Type: application/json' --data-binary @" .. dir .. "/in" .. i ..
                        " -o " .. dir .. "/out" .. i .. " " .. H.q(host.url .. "/v1/sagas/Kid")
      end
      H.sh(table.concat(cmd, " "))
      local ids = {}
      for i = 1, #strings do
        local out = cjson.decode(H.read(dir .. "/out" .. i))
        assert.is_truthy(out.id, "start " .. i .. ": " .. cjson.encode(out))
        ids[i] = out.id
      end
      local got = host:wait_all(ids, 30)
      for i, id in ipairs(ids) do
        assert.are.equal("completed", got[id].status)
        local sg = host:saga(id)
        assert.are.equal(strings[i], sg.input.s)
        assert.are.equal(i, sg.input.n)
        assert.are.equal(strings[i], sg.data.s)
        assert.are.equal("", sg.data.empty)
        assert.are.same({ "echo:action:failed", "echo:action:completed" }, H.history(sg))
        assert.are.equal("first try: " .. strings[i], sg.steps[1].error)
      end
      local _, hz = host:get("/healthz")
      print(string.format("\n  %d sagas, %s commits in all", #strings, tostring(hz.commits)))
    end)
    host:stop()
    assert(ok, err)
  end)

  it("a lost connection holds the batch, answers 503, reconnects and loses nothing", function()
    H.pg_only("it cuts the host's PostgreSQL session")
    local host = H.host { name = "pg-cut", scripts = { ["cut.lua"] = SCRIPT } }
    host:start()
    local ok, err = pcall(function()
      local acked, refused, cuts = {}, 0, 0
      for i = 1, 120 do
        local code, body = host:post("/v1/sagas/Cut", { n = i })
        if code == 201 then acked[#acked + 1] = body.id
        elseif code == 503 then refused = refused + 1; assert.matches("store cannot write", body.error, 1, true)
        else error("start " .. i .. ": " .. tostring(code) .. " " .. cjson.encode(body)) end
        if i % 20 == 10 then cuts = cuts + H.pg_kill_session(host.pid) end
        H.sleep(0.02)
      end
      assert.is_true(cuts >= 5, "sessions cut: " .. cuts)
      local got = host:wait_all(acked, 30)
      for _, id in ipairs(acked) do assert.are.equal("completed", got[id].status) end
      -- each acknowledged saga's command was handled once, its steps completed once
      local log = host:log()
      for _, id in ipairs(acked) do
        local s = host:saga(id)
        assert.are.same({ "post:action:completed", "nap:action:completed", "done:action:completed" }, H.history(s))
        assert.are.equal(1, H.count(log, "POSTED " .. s.input.n .. "\n"))
      end
      assert.matches("postgres: reconnected to", log, 1, true)
      print(string.format("\n  %d sessions cut: %d starts acknowledged and completed, %d refused with 503",
                          cuts, #acked, refused))
      assert.are.equal(200, (host:get("/healthz")))
    end)
    host:stop()
    assert(ok, err)
  end)

  it("a stopped server: commands wait unacked at the participant, sagas wait at the orchestrator, both go on", function()
    H.pg_only("it stops the tests' PostgreSQL cluster for a few seconds")
    local uid = H.uid()
    local svc = "pgsvc_" .. uid
    local part = H.host { name = "pg-part", amqp = true, host_id = "pg-part-" .. uid,
      scripts = { ["p.lua"] = ([[
local saga = require "saga"
saga.handle("SVC", "Post", function(p, msg)
  print("HANDLED " .. msg.message_id)
  return { posted = p.n }
end)
]]):gsub("SVC", svc) } }
    local orch = H.host { name = "pg-orch", amqp = true, host_id = "pg-orch-" .. uid,
      scripts = { ["o.lua"] = ([[
local saga = require "saga"
saga.define { name = "PgStop", steps = {
  { name = "post", action = function(ctx) ctx.data.r = ctx:call("SVC", "Post", { n = ctx.input.n }) end },
  { name = "nap", action = function(ctx) ctx:sleep("300ms") end },
  { name = "again", action = function(ctx) ctx.data.r2 = ctx:call("SVC", "Post", { n = -ctx.input.n }) end },
} }
]]):gsub("SVC", svc) } }
    local ok, err = xpcall(function()
      part:start_amqp()
      orch:start_amqp()
      local acked = {}
      for i = 1, 20 do acked[#acked + 1] = orch:start_saga("PgStop", { n = i }) end
      -- the server goes away while commands, replies and sleeps are in flight
      local code, out = H.sh("bash tests/pg-cluster.sh stop")
      assert(code == 0, out)
      H.sleep(3)
      assert.is_true(part:alive(), "the participant died without its database")
      assert.is_true(orch:alive(), "the orchestrator died without its database")
      local c = orch:post("/v1/sagas/PgStop", { n = 999 })
      assert.are.equal(503, c)
      code, out = H.sh("bash tests/pg-cluster.sh")
      assert(code == 0, out)
      -- reads reconnect at most once a second, the held batch at the next retry (backoff up to 5 s)
      local back
      for _ = 1, 60 do
        if orch:get("/healthz") == 200 and part:get("/healthz") == 200 then back = true break end
        H.sleep(0.25)
      end
      assert.is_true(back, "the hosts did not come back after the server did")
      local all = orch:wait_all(acked, 60)
      local handled, n = {}, 0
      for id in part:log():gmatch("HANDLED (%S+)") do
        assert.is_nil(handled[id], "command " .. id .. " handled twice")
        handled[id] = true
        n = n + 1
      end
      assert.are.equal(2 * #acked, n)
      for _, id in ipairs(acked) do
        assert.are.equal("completed", all[id].status)
        assert.are.same({ "post:action:completed", "nap:action:completed", "again:action:completed" },
                        H.history(orch:saga(id)))
      end
      print(string.format("\n  server stopped for 3 s: %d sagas completed, %d commands handled once each", #acked, n))
    end, debug.traceback)
    orch:stop()
    part:stop()
    H.sh("bash tests/pg-cluster.sh")
    H.delete_queues({ svc }, { "pg-orch-" .. uid, "pg-part-" .. uid })
    assert(ok, err)
  end)

  it("a read stuck in the database does not hold up the host: the loop and the other reads go on", function()
    H.pg_only("it locks a table of the host's PostgreSQL database")
    local host = H.host { name = "pg-stuck", scripts = { ["cut.lua"] = SCRIPT } }
    host:start()
    local dir = H.tmpdir("pg-stuck-out")
    local ok, err = pcall(function()
      local id = host:start_saga("Cut", { n = 1 })
      assert.are.equal("completed", host:wait(id, nil, 20).status)
      -- another session holds the history table for 4 s: reading the saga's history waits for it
      H.pg_lock(host.db, "history", 4, dir)
      local t_lock = H.now()
      os.execute("curl -s -o " .. dir .. "/get.json -w '%{http_code}' " .. H.q(host.url .. "/v1/sagas/" .. id) ..
        " > " .. dir .. "/get.code 2>&1 &")
      H.sleep(0.3)
      -- meanwhile the host goes on: the loop answers at once, and a read that does not need the
      -- locked table is answered though the stuck one is on its way
      local t0 = H.now()
      assert.are.equal(200, (host:get("/healthz")))
      assert.are.equal(200, (host:get("/metrics")))
      local dt_loop = H.now() - t0
      t0 = H.now()
      local code, list = host:get("/v1/sagas?limit=5")
      local dt_list = H.now() - t0
      assert.are.equal(200, code)
      assert.are.equal(id, list.sagas[1].id)
      assert.is_true(dt_loop < 1, string.format("/healthz and /metrics took %.2fs while a read was stuck", dt_loop))
      assert.is_true(dt_list < 1, string.format("the list took %.2fs while another read was stuck", dt_list))
      assert.are.equal("", H.read(dir .. "/get.code") or "", "the stuck read was answered before the lock ended")
      -- once the lock is gone, the stuck read is answered, complete
      local got
      for _ = 1, 200 do
        got = H.read(dir .. "/get.code")
        if got and got ~= "" then break end
        H.sleep(0.05)
      end
      local waited = H.now() - t_lock
      assert.are.equal("200", got)
      local s = cjson.decode(H.read(dir .. "/get.json"))
      assert.are.same({ "post:action:completed", "nap:action:completed", "done:action:completed" }, H.history(s))
      assert.is_true(waited > 3, string.format("the read did not wait for the lock (%.2fs)", waited))
      print(string.format("\n  a read stuck %.1fs behind a lock: /healthz and /metrics answered in %.0f ms, the list in %.0f ms",
                          waited, dt_loop * 1000, dt_list * 1000))
    end)
    host:stop()
    assert(ok, err)
  end)
end)
