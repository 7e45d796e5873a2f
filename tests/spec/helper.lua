-- helper: drives the real sagahost binary for end-to-end specs.
-- The binary is $SAGAHOST (set by tests/run-specs.sh); HTTP goes through curl; every host gets its
-- own temporary directory (scripts, database, log) under tests/tmp/.
local cjson = require "cjson"

local H = {}
H.bin = os.getenv("SAGAHOST") or "build/sagahost"
H.slow = os.getenv("SG_SLOW") and 3 or 1 -- sanitizer builds run slower: stretch waits

local tmp_root = os.getenv("SG_TMP") or "tests/tmp"
os.execute("mkdir -p " .. tmp_root)

-- The store the hosts run on: SG_STORE=postgres gives every host its own database on the tests' private
-- PostgreSQL cluster (tests/pg-cluster.sh, 127.0.0.1:26730 or SG_PG_PORT), anything else an SQLite file
-- in the host's directory.
H.store = os.getenv("SG_STORE") == "postgres" and "postgres" or "sqlite"
H.pg = H.store == "postgres"
H.pg_port = tonumber(os.getenv("SG_PG_PORT")) or 26730
H.pg_bin = os.getenv("SG_PG_BIN") or "/usr/lib/postgresql/15/bin"
local pg_base = "postgres://postgres@127.0.0.1:" .. H.pg_port .. "/"

function H.sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return ok and 0 or code, out
end

-- Runs a command, returning exit code, stdout and stderr separately.
function H.run(cmd)
  local e = os.tmpname()
  local p = io.popen(cmd .. " 2>" .. e)
  local out = p:read("a")
  local ok, _, code = p:close()
  local f = io.open(e)
  local err = f:read("a")
  f:close()
  os.remove(e)
  return ok and 0 or code, out, err
end

function H.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

function H.sleep(s) os.execute("sleep " .. s) end

-- the wall clock in seconds since the epoch, with milliseconds (os.time has whole seconds only)
function H.now()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t
end

-- the timestamp of a host log line ("2026-11-30T17:50:04.286Z info ...", UTC) in seconds since the epoch
function H.log_time(line)
  local y, mo, d, h, mi, s, ms = line:match("(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z")
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  -- days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil)
  if mo <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * (mo > 2 and mo - 3 or mo + 9) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) + tonumber(ms) / 1000
end

function H.write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

function H.read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- FNV-1a, 32 bits, as 8 hex digits: short database names that differ for different paths
local function hash8(str)
  local h = 2166136261
  for i = 1, #str do h = ((h ~ str:byte(i)) * 16777619) & 0xffffffff end
  return string.format("%08x", h)
end

local abs_root
local created = {}

-- The database of a host living in dir: in SQLite mode the file dir/name; in PostgreSQL mode the URL of
-- a database of the test cluster named after that path (created on first use, so that two hosts given
-- the same directory share it, as they share the file in SQLite mode).
function H.db_for(dir, name)
  name = name or "host.db"
  if not H.pg then return dir .. "/" .. name end
  if not abs_root then
    local p = io.popen("cd " .. H.q(tmp_root) .. " && pwd")
    abs_root = p:read("l") or tmp_root
    p:close()
  end
  local path = dir .. "/" .. name
  if path:sub(1, #tmp_root) == tmp_root then path = abs_root .. path:sub(#tmp_root + 1) end
  local base = (dir:match("([^/]+)/*$") or "db") .. "_" .. name
  local db = ("sg_" .. hash8(path) .. "_" .. base:lower():gsub("[^a-z0-9_]", "_")):sub(1, 63)
  if not created[db] then
    local code, out = H.sh(H.pg_bin .. "/psql -X -q -h 127.0.0.1 -p " .. H.pg_port ..
      " -U postgres -d postgres -c " .. H.q("CREATE DATABASE " .. db))
    assert(code == 0 or out:find("already exists", 1, true),
      "cannot create database " .. db .. " on the test cluster (is tests/pg-cluster.sh up?): " .. out)
    created[db] = true
  end
  return pg_base .. db
end

-- One SQL query against a host's database (a file path or a postgres:// URL): rows as sqlite3 prints
-- them ("a|b" lines), trailing whitespace removed.
function H.sql(db, q)
  local cmd
  if db:match("^postgres") then
    cmd = H.pg_bin .. "/psql -X -q -A -t -F '|' -v ON_ERROR_STOP=1 " .. H.q(db) .. " -c " .. H.q(q)
  else
    cmd = "sqlite3 " .. H.q(db) .. " " .. H.q(q)
  end
  local code, out = H.sh(cmd)
  assert(code == 0, out)
  return (out:gsub("%s+$", ""))
end

-- The pid of the host that holds db (the one host a database may have), or nil: in SQLite mode the pid
-- written into db.lock (it stays there after its holder died), in PostgreSQL mode the pid in the
-- application name of the session holding the host's advisory lock (gone with its session).
function H.lock_pid(db)
  if not db:match("^postgres") then return tonumber((H.read(db .. ".lock") or ""):match("^(%d+)")) end
  local dbname = db:match("/([^/?]+)$")
  local out = H.sql(pg_base .. "postgres", "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a" ..
    " ON a.pid = l.pid JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted" ..
    " AND d.datname = '" .. dbname .. "'")
  return tonumber(out:match("sagahost pid (%d+)"))
end

-- busted's pending() of the test running at stack level `level`: marks it pending (skipped, with the
-- reason shown) and ends it
local function pend(level, reason)
  local f = debug.getinfo(level + 1, "f").func
  for i = 1, 255 do
    local name, env = debug.getupvalue(f, i)
    if not name then break end
    if name == "_ENV" and type(env) == "table" and env.pending then env.pending(reason) end
  end
  error("helper: busted's pending() not found")
end

-- Marks the running test pending when the hosts run on PostgreSQL: for the few specs that are about the
-- SQLite file itself. Call it first thing in the test.
function H.sqlite_only(reason)
  if H.pg then pend(2, "SQLite only: " .. reason) end
end

-- The other way round: specs of the PostgreSQL store, pending unless SG_STORE=postgres.
function H.pg_only(reason)
  if not H.pg then pend(2, "PostgreSQL only (SG_STORE=postgres): " .. reason) end
end

-- Ends the PostgreSQL session(s) of the host with that pid (as an operator or a failover would); the
-- number ended.
function H.pg_kill_session(pid)
  local out = H.sql(pg_base .. "postgres", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity" ..
    " WHERE application_name LIKE 'sagahost pid " .. math.tointeger(pid) .. " on %'")
  return tonumber(out)
end

-- Another session takes `table` of db (a postgres:// URL) in ACCESS EXCLUSIVE mode and holds it for
-- `seconds` (psql in the background; its output in dir/locker.out): returns once the lock is granted.
function H.pg_lock(db, table, seconds, dir)
  os.execute(H.pg_bin .. "/psql -X -q " .. H.q(db) .. " -c " ..
    H.q("BEGIN; LOCK TABLE " .. table .. " IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(" .. seconds .. "); COMMIT;") ..
    " > " .. dir .. "/locker.out 2>&1 &")
  for _ = 1, 100 do
    if H.sql(db, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation" ..
        " WHERE c.relname = '" .. table .. "' AND l.mode = 'AccessExclusiveLock' AND l.granted") == "1" then
      return
    end
    H.sleep(0.05)
  end
  error("the lock on " .. table .. " was not taken: " .. (H.read(dir .. "/locker.out") or ""))
end

local counter = 0
function H.tmpdir(name)
  counter = counter + 1
  local d = string.format("%s/%s-%d-%d", tmp_root, name or "t", os.time(), counter)
  os.execute("rm -rf " .. d .. " && mkdir -p " .. d .. "/sagas")
  return d
end

function H.cli(args, server)
  local cmd = H.bin .. " " .. args
  if server then cmd = cmd .. " --server " .. server end
  return H.run(cmd)
end

-- occurrences of a plain string
function H.count(text, needle)
  local n, i = 0, 1
  while true do
    local s, e = text:find(needle, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

---------------------------------------------------------------------------------------------------
local Host = {}
Host.__index = Host

-- opts: scripts = { ["name.lua"] = source }, copy = { "sagas/x.lua", ... }, args = "extra flags", dir,
-- curl_args = "extra curl flags for every request" (e.g. "--cacert cert.pem" for a host with --tls-cert:
-- its url is then https://localhost:PORT, the name its certificate is made for),
-- db = a database (path or postgres:// URL) instead of the host's own, e.g. one several hosts share
-- (H.db_for(some_dir, "shared.db")), host_id = its --host-id (passed with or without amqp),
-- env = "VAR=value ..." put before the command (e.g. SAGAHOST_CRON_MINUTE_MS=300)
function H.host(opts)
  opts = opts or {}
  local self = setmetatable({ opts = opts }, Host)
  self.dir = opts.dir or H.tmpdir(opts.name)
  self.scripts = self.dir .. "/sagas"
  self.db = opts.db or H.db_for(self.dir, "host.db")
  self.logfile = self.dir .. "/host.log"
  for name, src in pairs(opts.scripts or {}) do H.write(self.scripts .. "/" .. name, src) end
  for _, f in ipairs(opts.copy or {}) do os.execute("cp " .. f .. " " .. self.scripts .. "/") end
  self.runs = 0
  return self
end

function Host:script(name, src) H.write(self.scripts .. "/" .. name, src) end

function Host:start(extra, retry)
  self.runs = self.runs + 1
  local log = self.logfile .. "." .. self.runs
  self.curlog = log
  local transport = ""
  if self.opts.amqp then
    transport = "--amqp " .. H.q(type(self.opts.amqp) == "string" and self.opts.amqp or H.amqp_url)
  end
  if self.opts.host_id then transport = transport .. " --host-id " .. H.q(self.opts.host_id) end
  local cmd = string.format("%s%s run --db %s --listen 127.0.0.1:0 %s %s %s %s > %s 2>&1 & echo $!",
    self.opts.env and (self.opts.env .. " ") or "", H.bin, self.db, transport, self.opts.args or "", extra or "", self.scripts, log)
  local p = io.popen(cmd)
  self.pid = tonumber(p:read("l"))
  p:close()
  local deadline = os.time() + 20 * H.slow
  while os.time() < deadline do
    local text = H.read(log) or ""
    local port = text:match("listening on http://[%d%.]+:(%d+)")
    if port then
      self.url = "http://127.0.0.1:" .. port
      return self
    end
    port = text:match("listening on https://[%d%.]+:(%d+)")
    if port then
      self.url = "https://localhost:" .. port
      return self
    end
    if not self:alive() then
      -- right after a kill -9 the killed host's last thread may still hold the database lock: once more
      if self.killed and text:find("is in use by another sagahost", 1, true) and (retry or 0) < 20 then
        H.sleep(0.25)
        self.runs = self.runs - 1
        return self:start(extra, (retry or 0) + 1)
      end
      error("sagahost exited at start:\n" .. text)
    end
    H.sleep(0.05)
  end
  error("sagahost did not start listening in time:\n" .. (H.read(log) or ""))
end

function Host:alive()
  if not self.pid then return false end
  -- a stopped host is an orphan nobody reaps at once: a zombie (state Z) has exited
  local stat = H.read("/proc/" .. self.pid .. "/stat")
  if not stat then return false end
  return stat:match("^%d+ %b() (%a)") ~= "Z"
end

function Host:kill9()
  if self.pid then
    self.killed = true
    os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
    while self:alive() do H.sleep(0.02) end
    -- the main thread can be a zombie while another thread (the tracing exporter's) is still being torn
    -- down, the files (the database lock) open until it has ended too: wait until it is the last one
    local deadline = H.now() + 10
    while H.now() < deadline do
      local threads = tonumber((H.read("/proc/" .. self.pid .. "/status") or ""):match("Threads:%s*(%d+)") or 0)
      if threads <= 1 then break end
      H.sleep(0.02)
    end
    self.pid = nil
  end
end

-- graceful stop (SIGTERM), waits for the exit
function Host:stop()
  if self.pid then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
    local deadline = os.time() + 10 * H.slow
    while self:alive() and os.time() < deadline do H.sleep(0.02) end
    if self:alive() then self:kill9() end
    self.pid = nil
  end
end

-- everything every run of this host logged
function Host:log()
  local all = {}
  for i = 1, self.runs do all[#all + 1] = H.read(self.logfile .. "." .. i) or "" end
  return table.concat(all)
end

-- HTTP: returns status, decoded body (or raw text if not JSON), raw text; max_time (seconds, optional)
-- bounds the request (status nil when it ran out), 120 s by default
function Host:request(method, path, body, headers, max_time)
  local bodyfile = os.tmpname()
  local outfile = os.tmpname()
  -- bounded: a host that takes a connection and never answers fails the spec instead of hanging the run
  local cmd = { "curl -s --max-time", tostring(math.floor((max_time or 120) * H.slow)), "-o", outfile, "-w '%{http_code}' -X", method,
                self.opts.curl_args or "" }
  for k, v in pairs(headers or {}) do cmd[#cmd + 1] = "-H " .. H.q(k .. ": " .. v) end
  if body then
    H.write(bodyfile, type(body) == "table" and cjson.encode(body) or body)
    cmd[#cmd + 1] = "--data-binary @" .. bodyfile
    cmd[#cmd + 1] = "-H 'Content-Type: application/json'"
  end
  cmd[#cmd + 1] = H.q(self.url .. path)
  local p = io.popen(table.concat(cmd, " "))
  local code = tonumber(p:read("a"))
  p:close()
  local text = H.read(outfile) or ""
  os.remove(bodyfile)
  os.remove(outfile)
  local ok, decoded = pcall(cjson.decode, text)
  return code, ok and decoded or text, text
end

function Host:get(path) return self:request("GET", path) end
function Host:post(path, body, headers, max_time) return self:request("POST", path, body, headers, max_time) end

function Host:start_saga(type_, input, key)
  local code, body = self:post("/v1/sagas/" .. type_, input or {}, key and { ["Idempotency-Key"] = key } or nil)
  assert(code == 201 or code == 200, "start " .. type_ .. " failed: " .. tostring(code) .. " " .. cjson.encode(body))
  return body.id
end

function Host:saga(id)
  local code, body = self:get("/v1/sagas/" .. id)
  assert(code == 200, "GET saga " .. id .. ": " .. tostring(code))
  return body
end

local terminal = { completed = true, compensated = true, compensation_failed = true }

-- waits until the saga is terminal (or has `status`), returns it
function Host:wait(id, status, timeout)
  local deadline = os.time() + (timeout or 20) * H.slow
  local s
  repeat
    s = self:saga(id)
    if (status and s.status == status) or (not status and terminal[s.status]) then return s end
    H.sleep(0.05)
  until os.time() > deadline
  error("saga " .. id .. " did not reach " .. (status or "a terminal status") .. " in time; it is " .. cjson.encode(s))
end

-- step attempts of a saga as "name:phase:status" strings (saga-level events left out)
function H.history(s)
  local out = {}
  for _, st in ipairs(s.steps) do
    if st.phase ~= "saga" then out[#out + 1] = st.name .. ":" .. st.phase .. ":" .. st.status end
  end
  return out
end

function Host:cleanup()
  self:stop()
end

---------------------------------------------------------------------------------------------------
-- RabbitMQ: the tests' own node, which tests/amqp-broker.sh starts on 127.0.0.1:26720 (SG_BROKER_PORT);
-- no other broker on the machine is used. H.host{ amqp = true, host_id = "x" } runs a host with --amqp
-- H.amqp_url (a string instead of true names another URL) and --host-id x.
H.broker_url = "amqp://guest:guest@127.0.0.1:" .. (tonumber(os.getenv("SG_BROKER_PORT")) or 26720) .. "/"
H.amqp_url = os.getenv("SG_AMQP_URL") or H.broker_url

-- starts the tests' node unless it is up (and its app if a broker-restart spec left it stopped)
function H.broker_up()
  local code, out = H.sh("bash tests/amqp-broker.sh")
  assert(code == 0, "RabbitMQ is not available (tests/amqp-broker.sh failed): " .. out)
end

-- rabbitmqctl against the tests' node only (rabbitmqctl -n sagahost-test@localhost with its cookie)
function H.rabbitmqctl(args)
  local code, out = H.sh("bash tests/amqp-broker.sh ctl " .. args)
  assert(code == 0, "rabbitmqctl " .. args .. " failed: " .. out)
  return out
end

H.python = os.getenv("SG_PYTHON") or "/usr/bin/python3"
H.participants = "tests/participants"

-- a string unique to this run, for queue, service and host names that must not meet earlier runs
function H.uid()
  counter = counter + 1
  local p = io.open("/proc/self/stat")
  local pid = p and p:read("n") or 0
  if p then p:close() end
  return string.format("%d%d%d", os.time() % 100000, pid % 10000, counter)
end

-- pika wants the vhost percent-encoded: "/" is %2F
function H.pika_url(url)
  url = url or H.amqp_url
  local base, vhost = url:match("^(amqps?://[^/]+)/?(.*)$")
  if vhost == "" or vhost == "/" then vhost = "%2F" end
  return base .. "/" .. vhost
end

-- tests/participants/amqp_tool.py: delete, count, publish, get (see that file)
function H.amqp_tool(...)
  local args = { H.python, H.participants .. "/amqp_tool.py", H.q(H.pika_url()) }
  for _, a in ipairs({ ... }) do args[#args + 1] = H.q(a) end
  local code, out, err = H.run(table.concat(args, " "))
  assert(code == 0, "amqp_tool " .. table.concat({ ... }, " ") .. " failed: " .. out .. err)
  return out
end

-- Deletes what a spec declared on the broker: the queue of each service and the reply queue of each
-- host id, each with its dead-letter queue. Errors are ignored (cleanup after a failed spec).
function H.delete_queues(services, host_ids)
  local q = {}
  for _, svc in ipairs(services) do q[#q + 1] = "saga.svc." .. svc; q[#q + 1] = "saga.svc." .. svc .. ".dlq" end
  for _, id in ipairs(host_ids) do q[#q + 1] = "saga.reply." .. id; q[#q + 1] = "saga.reply." .. id .. ".dlq" end
  pcall(H.amqp_tool, "delete", table.unpack(q))
end

-- the sample scripts of sagas/ with their services renamed service -> service_<suffix>, so that a run
-- does not meet the queues of other runs: returns { ["order_processing.lua"] = source, ... }
H.sample_services = { "inventory", "payment", "shipping" }
-- trace: every handler (written `function(p)` in the samples) first prints
-- "HANDLED <message_id> <service>.<command>", so specs can count how often each command took effect;
-- delay: then it works (busy) for that many seconds, a slow participant
function H.samples(suffix, files, trace, delay)
  local out = {}
  for _, f in ipairs(files) do
    local src = assert(H.read("sagas/" .. f), "no sagas/" .. f)
    for _, svc in ipairs(H.sample_services) do
      src = src:gsub('"' .. svc .. '"', '"' .. svc .. "_" .. suffix .. '"')
    end
    if trace then
      src = src:gsub("function%(p%)",
        'function(p, msg) print("HANDLED " .. msg.message_id .. " " .. msg.service .. "." .. msg.command)' ..
        (delay and (" local t0 = os.clock() while os.clock() - t0 < " .. delay .. " do end") or ""))
    end
    out[f] = src
  end
  return out
end

-- waits until the current run of the host logged the pattern; returns the first capture (or match)
function Host:wait_log(pattern, timeout, from_all)
  local deadline = os.time() + (timeout or 20) * H.slow
  repeat
    local text = from_all and self:log() or H.read(self.curlog) or ""
    local m = text:match(pattern)
    if m then return m end
    H.sleep(0.05)
  until os.time() > deadline
  error("host log never showed " .. pattern .. ":\n" .. (H.read(self.curlog) or ""))
end

-- start, then wait until the AMQP transport is connected (queues declared, consumers running)
function Host:start_amqp(extra)
  self:start(extra)
  self:wait_log("amqp: connected to", 30)
  return self
end

function Host:healthz()
  local code, body = self:get("/healthz")
  assert(code == 200, "healthz: " .. tostring(code))
  return body
end

-- waits until every saga of ids is terminal; returns { id = saga }
function Host:wait_all(ids, timeout)
  local deadline = os.time() + (timeout or 60) * H.slow
  local left = {}
  for _, id in ipairs(ids) do left[id] = true end
  local got, n = {}, #ids
  while true do
    -- the list endpoint pages by 1000; a saga that is terminal stays terminal
    local after, more = nil, true
    while more do
      local code, body = self:get("/v1/sagas?limit=1000" .. (after and ("&after=" .. after) or ""))
      assert(code == 200, "list sagas: " .. tostring(code))
      for _, s in ipairs(body.sagas) do
        if left[s.id] and terminal[s.status] then left[s.id] = nil; got[s.id] = s; n = n - 1 end
      end
      after = body.next ~= cjson.null and body.next or nil
      more = after ~= nil
    end
    if n == 0 then return got end
    if os.time() > deadline then
      local some = {}
      for id in pairs(left) do
        some[#some + 1] = id .. "=" .. self:saga(id).status
        if #some >= 5 then break end
      end
      error(n .. " of " .. #ids .. " sagas not terminal in time, e.g. " .. table.concat(some, ", "))
    end
    H.sleep(0.2)
  end
end

-- A background process (an independent participant): H.proc{ cmd = "...", dir = tmpdir, name = "x" }
local Proc = {}
Proc.__index = Proc

function H.proc(opts)
  local self = setmetatable({ opts = opts, runs = 0 }, Proc)
  self.logfile = (opts.dir or H.tmpdir(opts.name)) .. "/" .. (opts.name or "proc") .. ".log"
  return self
end

function Proc:start()
  self.runs = self.runs + 1
  self.curlog = self.logfile .. "." .. self.runs
  local p = io.popen(string.format("exec %s > %s 2>&1 & echo $!", self.opts.cmd, self.curlog))
  self.pid = tonumber(p:read("l"))
  p:close()
  return self
end

function Proc:alive()
  return self.pid and os.execute("kill -0 " .. self.pid .. " 2>/dev/null") == true
end

function Proc:wait_log(pattern, timeout)
  local deadline = os.time() + (timeout or 20) * H.slow
  repeat
    local text = H.read(self.curlog) or ""
    local m = text:match(pattern)
    if m then return m end
    if not self:alive() then error("process exited:\n" .. text) end
    H.sleep(0.05)
  until os.time() > deadline
  error("process log never showed " .. pattern .. ":\n" .. (H.read(self.curlog) or ""))
end

Proc.kill9 = Host.kill9
Proc.stop = Host.stop
Proc.log = Host.log

---------------------------------------------------------------------------------------------------
-- Kafka: librdkafka's mock cluster (tests/kafka/mock_cluster.c, built next to the sagahost binary under
-- test as the CMake target kafka_mock_cluster), a process whose stdin takes broker failures and leader
-- changes. H.kafka_mock(n): a cluster of n brokers of its own (no run sees another's records):
-- m.brokers (the bootstrap list), m.cmd("down 2") (waits for the answer and asserts it is ok), m.stop(),
-- m.kill().
H.kafka_mock_bin = (H.bin:match("^(.*)/[^/]*$") or ".") .. "/kafka_mock_cluster"

function H.kafka_mock(n)
  local dir = H.tmpdir("kafka-mock")
  local fifo = dir .. "/in"
  assert(os.execute("mkfifo " .. fifo))
  local p = H.proc { cmd = H.kafka_mock_bin .. " " .. n .. " < " .. fifo, dir = dir, name = "mock" }
  p:start()
  local w = assert(io.open(fifo, "w")) -- unblocks the process's open of its stdin
  w:setvbuf("line")
  local m = { proc = p }
  m.brokers = p:wait_log("bootstrap (%S+)")
  local answers = 0
  function m.cmd(line)
    w:write(line, "\n")
    answers = answers + 1
    local deadline = H.now() + 10
    while H.now() < deadline do
      local log = H.read(p.curlog) or ""
      local got = {}
      for a in log:gmatch("\n([^\n]+)") do got[#got + 1] = a end
      if #got >= answers then
        assert(got[answers] == "ok", "mock cluster: " .. line .. ": " .. got[answers])
        return
      end
      H.sleep(0.05)
    end
    error("mock cluster never answered " .. line)
  end
  function m.stop()
    pcall(function() w:write("quit\n"); w:close() end)
    local deadline = H.now() + 10
    while p:alive() and H.now() < deadline do H.sleep(0.05) end
    if p:alive() then p:kill9() end
  end
  -- killed (kill -9) rather than asked to quit, which takes seconds: for a cluster nothing is kept of
  function m.kill()
    p:kill9()
    pcall(function() w:close() end)
  end
  return m
end

return H
