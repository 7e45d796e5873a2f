-- End-to-end: the edges ("Every edge hardened"): one writer per database file, a wrong script
-- directory at start, retry jitter that differs between processes, a `null` command body, and 405
-- for every route's wrong methods.
local H = require "helper"
local cjson = require "cjson"

local order = { order_id = "e-1", sku = "book", qty = 1, amount = 42, card = "ok" }

-- a sagahost command that must end by itself: if it does not (a refusal that did not happen), the
-- timeout ends it and the spec fails on the exit code instead of hanging
local function run_bounded(args)
  return H.run("timeout " .. math.floor(20 * H.slow) .. " " .. H.bin .. " " .. args)
end

local lock_pid = H.lock_pid -- db.lock's pid, or the PostgreSQL session's that holds the host lock

local function my_pid()
  local f = io.open("/proc/self/stat")
  local pid = f:read("n")
  f:close()
  return pid
end

describe("one writer per database file", function()
  it("refuses a second run on the same database, naming the file and the holder's pid", function()
    local a = H.host { name = "lock", copy = { "sagas/*.lua" } }
    a:start()
    local ok, err = pcall(function()
      local id = a:start_saga("OrderProcessing", order)
      assert.are.equal("completed", a:wait(id).status)
      assert.are.equal(a.pid, lock_pid(a.db))
      local code, _, stderr = run_bounded(string.format("run --db %s --listen 127.0.0.1:0 %s", a.db, a.scripts))
      assert.are.equal(1, code, "the second host was not refused:\n" .. stderr)
      assert.matches(a.db, stderr, 1, true)
      assert.matches("pid " .. a.pid, stderr, 1, true)
      assert.matches("in use", stderr, 1, true)
      -- the refused host changed nothing: the first one still owns the file and serves
      assert.are.equal(a.pid, lock_pid(a.db))
      assert.is_true(a:alive())
      assert.are.equal("completed", a:saga(id).status)
    end)
    a:stop()
    assert(ok, err)
  end)

  it("a holder killed with -9 leaves no lock that blocks the restart", function()
    local a = H.host { name = "lock-kill", copy = { "sagas/*.lua" } }
    a:start()
    local id = a:start_saga("OrderProcessing", order)
    a:wait(id)
    local first = a.pid
    a:kill9()
    if not H.pg then -- the file still names the dead holder (a PostgreSQL session dies with it)
      assert.are.equal(first, lock_pid(a.db))
    end
    a:start()
    local ok, err = pcall(function()
      assert.are.equal(a.pid, lock_pid(a.db))
      assert.are.equal("completed", a:saga(id).status)
    end)
    a:stop()
    assert(ok, err)
    -- and after a clean stop too
    a:start()
    a:stop()
  end)

  it("bench --db on a database a host runs on is refused before anything is deleted", function()
    local a = H.host { name = "lock-bench", copy = { "sagas/*.lua" } }
    a:start()
    local ok, err = pcall(function()
      local id = a:start_saga("OrderProcessing", order)
      a:wait(id)
      local code, _, stderr = run_bounded("bench --sagas 5 --db " .. a.db)
      assert.are_not.equal(0, code)
      assert.matches("pid " .. a.pid, stderr, 1, true)
      -- the files are the same ones: a restart finds the saga
      a:kill9()
      a:start()
      assert.are.equal("completed", a:saga(id).status)
    end)
    a:stop()
    assert(ok, err)
  end)

  it("in one process: two hosts on two files run side by side, a second host on one file is refused", function()
    local moddir = os.getenv("SAGAHOST_MODULE_DIR") or "build"
    package.cpath = moddir .. "/?.so;" .. package.cpath
    local sagahost = require "sagahost"
    sagahost.log_level("off")
    local d = H.tmpdir("lock-inproc")
    os.execute("cp sagas/*.lua " .. d .. "/sagas/")
    local one, two = H.db_for(d, "one.db"), H.db_for(d, "two.db")
    local h1 = assert(sagahost.open { dir = d .. "/sagas", db = one })
    local h2, msg = sagahost.open { dir = d .. "/sagas", db = two }
    local h3, refused = sagahost.open { dir = d .. "/sagas", db = one }
    local ok, err = pcall(function()
      assert(h2, msg)
      assert.is_nil(h3)
      assert.matches(one, refused, 1, true)
      assert.matches("pid " .. my_pid(), refused, 1, true)
      local id1 = assert(h1:start("OrderProcessing", cjson.encode(order)))
      local id2 = assert(h2:start("OrderProcessing", cjson.encode(order)))
      assert.are.equal(0, h1:run(10))
      assert.are.equal(0, h2:run(10))
      assert.are.equal("completed", h1:saga(id1).status)
      assert.are.equal("completed", h2:saga(id2).status)
    end)
    if h3 then h3:close() end
    if h2 then h2:close() end
    h1:close()
    assert(ok, err)
    -- closed: the file is free for the next host
    local again = assert(sagahost.open { dir = d .. "/sagas", db = one })
    again:close()
  end)
end)

describe("start-up", function()
  it("a missing script directory is an error: exit 2, naming it, before any database is made", function()
    local d = H.tmpdir("nodir")
    local missing = d .. "/no/such/dir"
    local code, _, stderr = run_bounded(string.format("run --db %s/host.db --listen 127.0.0.1:0 %s", d, missing))
    assert.are.equal(2, code)
    assert.matches("script directory " .. missing, stderr, 1, true)
    assert.matches("No such file or directory", stderr, 1, true)
    assert.is_nil(H.read(d .. "/host.db"))
    assert.is_nil(H.read(d .. "/host.db.lock"))
  end)

  it("a file where the directory should be is an error too", function()
    local d = H.tmpdir("filedir")
    H.write(d .. "/order.lua", "-- not a directory")
    local code, _, stderr = run_bounded(string.format("run --db %s/host.db --listen 127.0.0.1:0 %s/order.lua", d, d))
    assert.are.equal(2, code)
    assert.matches(d .. "/order.lua is not a directory", stderr, 1, true)
  end)

  it("the in-process module refuses it too", function()
    local moddir = os.getenv("SAGAHOST_MODULE_DIR") or "build"
    package.cpath = moddir .. "/?.so;" .. package.cpath
    local sagahost = require "sagahost"
    local d = H.tmpdir("nodir-inproc")
    local h, msg = sagahost.open { dir = d .. "/missing", db = d .. "/db" }
    assert.is_nil(h)
    assert.matches("script directory " .. d .. "/missing", msg, 1, true)
    assert.is_nil(H.read(d .. "/db"))
  end)

  it("check fails on a missing directory instead of passing it", function()
    local code, out, stderr = run_bounded("check /no/such/dir")
    assert.are.equal(2, code)
    assert.matches("script directory /no/such/dir", stderr, 1, true)
    assert.is_nil(out:match("OK"))
  end)
end)

-- "2026-11-30T13:59:18.123Z" -> ms (only differences are used, so the local time zone is harmless)
local function ms_of(ts)
  local y, mo, d, h, mi, s, ms = ts:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z$")
  assert(y, "not a timestamp: " .. tostring(ts))
  return os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = tonumber(h),
    min = tonumber(mi), sec = tonumber(s) } * 1000 + tonumber(ms)
end

describe("retry jitter", function()
  it("draws every delay from [delay/2, delay], differently in every process", function()
    local script = [[
local saga = require "saga"
saga.define { name = "Flaky", steps = {
  { name = "Fail", retry = { attempts = 6, backoff = "fixed", initial = "400ms", jitter = true },
    action = function(ctx) error("not yet") end },
} }
]]
    local a = H.host { name = "jitter-a", scripts = { ["f.lua"] = script } }
    local b = H.host { name = "jitter-b", scripts = { ["f.lua"] = script } }
    a:start()
    b:start()
    local gaps = {}
    local ok, err = pcall(function()
      local ida, idb = a:start_saga("Flaky", {}), b:start_saga("Flaky", {})
      for _, pair in ipairs { { a, ida }, { b, idb } } do
        local s = pair[1]:wait(pair[2], nil, 30)
        assert.are.equal("compensated", s.status)
        local attempts = {}
        for _, st in ipairs(s.steps) do
          if st.phase == "action" then attempts[#attempts + 1] = st end
        end
        assert.are.equal(6, #attempts)
        local g = {}
        for i = 2, #attempts do
          g[#g + 1] = ms_of(attempts[i].started_at) - ms_of(attempts[i - 1].finished_at)
        end
        gaps[#gaps + 1] = g
      end
    end)
    a:stop()
    b:stop()
    assert(ok, err)
    local diff = 0
    for i = 1, 5 do
      for _, g in ipairs(gaps) do
        -- the timer fires at its due time, never before; after it, only scheduling delays
        assert.is_true(g[i] >= 199 and g[i] <= 400 + 250 * H.slow,
          "retry delay " .. g[i] .. " ms outside [200, 400] (+ scheduling): " .. cjson.encode(gaps))
      end
      diff = diff + math.abs(gaps[1][i] - gaps[2][i])
    end
    -- two processes seeded alike would draw the same five delays, apart from a few ms of timer noise
    assert.is_true(diff > 60, "two hosts drew the same retry delays: " .. cjson.encode(gaps))
  end)
end)

-- publishes one command through saga.commands (as an orchestrator does) with a raw body, and
-- declares the queue its reply goes to
local publisher = [[
import sys
import pika
url, service, command, body, mid, reply = sys.argv[1:7]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.queue_declare(reply, durable=True)
ch.confirm_delivery()
props = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=mid,
                             correlation_id=mid, reply_to=reply, type=command)
ch.basic_publish("saga.commands", service + "." + command, body.encode(), props, mandatory=True)
conn.close()
]]

describe("a command whose body is JSON null", function()
  it("reaches the handler as nil (nested nulls stay cjson.null)", function()
    local uid = H.uid()
    local svc = "nulls_" .. uid
    local reply = "edges.reply." .. uid
    local part = H.host { name = "null-part", amqp = true, host_id = "null-part-" .. uid, scripts = {
      ["n.lua"] = ([[
local saga = require "saga"
saga.handle("SVC", "Null", function(p)
  return { is_nil = p == nil, kind = type(p), inner = type(p) == "table" and type(p.a) or "none" }
end)
]]):gsub("SVC", svc) } }
    local pub = part.dir .. "/publish.py"
    H.write(pub, publisher)
    part:start_amqp()
    local function call(body, mid)
      local code, out, err = H.run(table.concat({ H.python, pub, H.q(H.pika_url()), svc, "Null", H.q(body), mid,
        reply }, " "))
      assert(code == 0, "publish failed: " .. out .. err)
      local got = cjson.decode(H.amqp_tool("get", reply, tostring(20 * H.slow)))
      assert.is_table(got, "no reply to " .. mid)
      assert.are.equal(mid, got.correlation_id)
      assert.are.equal("ok", got.headers["saga-status"], got.body)
      return cjson.decode(got.body)
    end
    local ok, err = pcall(function()
      assert.are.same({ is_nil = true, kind = "nil", inner = "none" }, call("null", "null-" .. uid))
      assert.are.same({ is_nil = false, kind = "table", inner = "userdata" }, call('{"a":null}', "nested-" .. uid))
    end)
    part:stop()
    pcall(H.amqp_tool, "delete", reply, "saga.svc." .. svc, "saga.svc." .. svc .. ".dlq",
      "saga.reply.null-part-" .. uid, "saga.reply.null-part-" .. uid .. ".dlq")
    assert(ok, err)
  end)
end)

describe("HTTP methods", function()
  local host, id
  setup(function()
    host = H.host { name = "methods", copy = { "sagas/*.lua" } }
    host:start()
    id = host:start_saga("OrderProcessing", order)
    host:wait(id)
  end)
  teardown(function() host:stop() end)

  -- status, Allow header, body of one request (HEAD through -I: curl -X HEAD would wait for a body)
  local function req(method, path)
    local hdr, out = os.tmpname(), os.tmpname()
    local cmd = method == "HEAD" and { "curl -s -I -o", out } or { "curl -s -o", out, "-X", method }
    if method == "POST" then cmd[#cmd + 1] = "--data-binary '{}' -H 'Content-Type: application/json'" end
    cmd[#cmd + 1] = "-D " .. hdr .. " -w '%{http_code}' " .. H.q(host.url .. path)
    local p = io.popen(table.concat(cmd, " "))
    local code = tonumber(p:read("a"))
    p:close()
    local allow = (H.read(hdr) or ""):match("\n[Aa]llow: ([^\r\n]*)")
    local body = H.read(out) or ""
    os.remove(hdr)
    os.remove(out)
    return code, allow, body
  end

  it("answers every route's methods: the right ones, 405 with Allow for the others, 404 off the map", function()
    local s = "/v1/sagas/" .. id
    local GH, GHP = "GET, HEAD", "GET, HEAD, POST"
    local matrix = {
      { "GET", "/healthz", 200 }, { "HEAD", "/healthz", 200 }, { "DELETE", "/healthz", 405, GH },
      { "POST", "/healthz", 405, GH },
      { "GET", "/metrics", 200 }, { "HEAD", "/metrics", 200 }, { "PUT", "/metrics", 405, GH },
      { "GET", "/v1/definitions", 200 }, { "POST", "/v1/definitions", 405, GH }, { "PATCH", "/v1/definitions", 405, GH },
      { "GET", "/v1/breakers", 200 }, { "DELETE", "/v1/breakers", 405, GH },
      { "GET", "/v1/sagas", 200 }, { "HEAD", "/v1/sagas", 200 }, { "POST", "/v1/sagas", 405, GH },
      { "DELETE", "/v1/sagas", 405, GH },
      { "GET", s, 200 }, { "HEAD", s, 200 }, { "PUT", s, 405, GHP }, { "DELETE", s, 405, GHP },
      { "POST", "/v1/sagas/OrderProcessing", 201 }, { "POST", "/v1/sagas/NoSuchType", 404 },
      { "GET", s .. "/plan", 200 }, { "POST", s .. "/plan", 405, GH },
      { "GET", s .. "/compensate", 405, "POST" }, { "DELETE", s .. "/retry", 405, "POST" },
      { "PUT", s .. "/resolve", 405, "POST" },
      { "POST", s .. "/compensate", 409 }, { "POST", s .. "/retry", 409 }, { "POST", s .. "/resolve", 400 }, -- (no note)
      { "GET", "/v1/nothing", 404 }, { "DELETE", "/v2/x", 404 }, { "GET", s .. "/nope", 404 },
      { "POST", s .. "/nope", 404 }, { "POST", s .. "/compensate/extra", 404 },
      { "GET", "/", 200 }, { "HEAD", "/", 200 }, { "POST", "/", 405, GH }, { "GET", "/ui/app.js", 200 }, -- the dashboard
      { "DELETE", "/ui/app.js", 405, GH }, { "GET", "/ui/nope.js", 404 }, { "GET", "/ui", 404 }, { "GET", "/ui/a/b", 404 },
      { "GET", s .. "/plan/x/y", 404 },
      { "BREWCOFFEE", "/healthz", 405, GH }, { "BREWCOFFEE", "/nowhere", 404 },
    }
    local wrong = {}
    for _, m in ipairs(matrix) do
      local method, path, want, want_allow = m[1], m[2], m[3], m[4]
      local code, allow, body = req(method, path)
      local bad = code ~= want or allow ~= want_allow
      if method ~= "HEAD" and want >= 400 then
        local okj, j = pcall(cjson.decode, body)
        bad = bad or not okj or type(j) ~= "table" or type(j.error) ~= "string"
        -- the method is the client's token: never echoed
        bad = bad or body:find(method, 1, true) ~= nil
      end
      if bad then
        wrong[#wrong + 1] = string.format("%s %s: %s (Allow %s) %s, want %d (Allow %s)", method, path, tostring(code),
          tostring(allow), body, want, tostring(want_allow))
      end
    end
    assert.are.same({}, wrong)
  end)
end)
