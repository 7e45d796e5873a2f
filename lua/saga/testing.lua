-- saga.testing: the testing kit for saga authors (docs/testing.md).
--
--   local testing = require "saga.testing"
--   local env = testing.env { scripts = "sagas" }
--   env:mock("payment", "Charge", function(payload, msg) return { charge_id = "c-1" } end)
--   local h = env:start("OrderProcessing", { order_id = "o-1" })
--   assert.are.equal("completed", h:status())
--
-- An in-process engine (the loadable module `sagahost`, build/sagahost.so) on a temporary SQLite store,
-- with a virtual clock that only env:advance moves, mocked participants that record their calls, and
-- seeded fault injection on the in-process transport. A thin layer over the module's host object:
-- JSON in and out with cjson, durations parsed as the scripts parse them (sagahost.duration_ms).
-- Nothing sleeps in real time.
local M = {}

local moddir = os.getenv("SAGAHOST_MODULE_DIR")
if moddir and moddir ~= "" and not package.loaded.sagahost then
  local entry = moddir .. "/?.so"
  if not package.cpath:find(entry, 1, true) then package.cpath = entry .. ";" .. package.cpath end
end
local sagahost = require "sagahost"
local cjson = require "cjson"

sagahost.log_level(os.getenv("SAGAHOST_TEST_LOG") or "off")

--- A mock's return value: the command is taken and never answered (the caller's timeout decides).
M.NO_REPLY = setmetatable({}, { __tostring = function() return "saga.testing.NO_REPLY" end, __metatable = false })

local DEFAULT_START = "2026-01-01T00:00:00Z"

--- ms since the epoch of an RFC 3339 time ("2026-01-01T00:00:00Z", "...T10:00:00.250+02:00") or of a number
--- (the host's own parser, the one ?start_at= uses)
function M.time_ms(v)
  if math.type(v) == "integer" then return v end
  if type(v) == "number" then return math.floor(v) end
  if type(v) ~= "string" then error("saga.testing: a time is an RFC 3339 string or ms since the epoch", 3) end
  local ms, err = sagahost.time_ms(v)
  if not ms then error("saga.testing: " .. err, 3) end
  return ms
end

local function duration_ms(v, what)
  if math.type(v) == "integer" then return v end
  if type(v) == "number" then return math.floor(v) end
  local ms, err = sagahost.duration_ms(v)
  if not ms then error("saga.testing: " .. what .. ": " .. tostring(err), 3) end
  return ms
end

local function decode(s)
  if s == nil then return nil end
  local v = cjson.decode(s)
  if v == cjson.null then return nil end
  return v
end

local function select_calls(list, service, command, saga_id)
  local out = {}
  for _, c in ipairs(list) do
    if (service == nil or c.msg.service == service) and (command == nil or c.msg.command == command)
        and (saga_id == nil or c.msg.saga_id == saga_id) then
      out[#out + 1] = c
    end
  end
  return out
end

---------------------------------------------------------------------------------------------------
-- a saga's handle

local Handle = {}
Handle.__index = Handle

local function row(h)
  local r, err = h.env.host:saga(h.id)
  if not r then error("saga.testing: saga " .. h.id .. ": " .. tostring(err), 3) end
  return r
end

--- "running", "compensating", "completed", "compensated", "compensation_failed", "resolved", "terminated"
function Handle:status() return row(self).status end

--- ctx.data as a table
function Handle:data() return decode(row(self).data) or {} end

--- the saga's error (why it failed or compensated), or nil
function Handle:error() return row(self).error end

--- the attempts that ended and the saga-level events, in execution order:
--- {name, phase = "action" | "compensate" | "saga", status, attempt, error}
function Handle:history() return row(self).steps end

--- {"Step:action", "Step:compensate", ...}: one entry per attempt of a step phase that ended, in order
function Handle:trace()
  local t = {}
  for _, r in ipairs(row(self).steps) do
    if r.phase ~= "saga" then t[#t + 1] = r.name .. ":" .. r.phase end
  end
  return t
end

--- the calls this saga made (to mocks and to the scripts' own handlers): list of {payload, msg}; one per
--- run of a participant (a duplicate the inbox answers is not a run)
function Handle:calls(service, command) return select_calls(self.env._calls, service, command, self.id) end

---------------------------------------------------------------------------------------------------
-- the environment

local Env = {}
Env.__index = Env

--- testing.env{scripts = "sagas", start = "2026-01-01T00:00:00Z", handlers = true, db = path}
function M.env(opts)
  if type(opts) ~= "table" or type(opts.scripts) ~= "string" then
    error("saga.testing.env: scripts (the script directory) is required", 2)
  end
  local start = M.time_ms(opts.start or DEFAULT_START)
  local db, owned = opts.db, false
  if not db then
    db = os.tmpname() -- an empty file: SQLite makes it a database
    owned = true
    -- in memory where the system has it (/dev/shm): a store's fsyncs cost nothing there
    local shm = io.open("/dev/shm/" .. db:match("[^/]+$"), "w")
    if shm then
      shm:close()
      os.remove(db)
      db = "/dev/shm/" .. db:match("[^/]+$")
    end
  end
  local host, err = sagahost.open { dir = opts.scripts, db = db, clock = start, handlers = opts.handlers ~= false }
  if not host then
    if owned then os.remove(db) end
    error("saga.testing.env: " .. tostring(err), 2)
  end
  local env = setmetatable({ host = host, db = db, _owned = owned, _calls = {}, _seed = nil, _mocks = {} }, Env)
  -- the commands the scripts' own handlers answer are recorded too
  local calls = env._calls
  host:mock("*", "*", function(payload_json, msg)
    calls[#calls + 1] = { payload = decode(payload_json), msg = msg }
  end)
  return env
end

--- replaces or adds the participant service.command; fn(payload, msg) returns the ok reply (nil = {}),
--- raises for an error reply, or returns testing.NO_REPLY; fn may be a plain table (always that reply);
--- nil removes the mock. Returns the mock, whose :calls() lists the calls it got: {payload, msg}
--- (and error = what fn raised, no_reply = true when it returned testing.NO_REPLY).
function Env:mock(service, command, fn)
  if type(service) ~= "string" or type(command) ~= "string" then
    error("saga.testing: env:mock(service, command, fn): service and command are strings", 2)
  end
  if fn == nil then
    self.host:mock(service, command, nil)
    self._mocks[service .. "." .. command] = nil
    return nil
  end
  if type(fn) ~= "function" and type(fn) ~= "table" then
    error("saga.testing: env:mock: fn must be a function or a table (the reply)", 2)
  end
  local mock = { service = service, command = command, _calls = {} }
  function mock.calls() return mock._calls end
  local calls = self._calls
  self.host:mock(service, command, function(payload_json, msg)
    local call = { payload = decode(payload_json), msg = msg }
    mock._calls[#mock._calls + 1] = call
    calls[#calls + 1] = call
    local result
    if type(fn) == "table" then
      result = fn
    else
      local ok, r = pcall(fn, decode(payload_json), msg)
      if not ok then
        call.error = r -- what the mock raised: the error reply (and a bug in a mock shows here)
        error(r, 0)
      end
      result = r
    end
    if result == M.NO_REPLY then
      call.no_reply = true
      return "none"
    end
    return "ok", cjson.encode(result == nil and {} or result)
  end)
  self._mocks[service .. "." .. command] = mock
  return mock
end

--- starts a saga and runs until idle; opts.key: its idempotency key. Returns its handle
--- (handle.existed: the key named a saga started before).
function Env:start(type_, input, opts)
  local id, existed = self.host:start(type_, cjson.encode(input == nil and {} or input), opts and opts.key or nil)
  if not id then error("saga.testing: start " .. tostring(type_) .. ": " .. tostring(existed), 2) end
  self.host:run_until_idle()
  return setmetatable({ id = id, existed = existed, env = self }, Handle)
end

--- a handle on a saga by id
function Env:saga(id) return setmetatable({ id = id, existed = true, env = self }, Handle) end

--- all sagas' calls (to mocks and to the scripts' own handlers; optionally of one service, one command):
--- list of {payload, msg}
function Env:calls(service, command) return select_calls(self._calls, service, command, nil) end

--- sends signal name with payload to a saga (its id or handle) and runs until idle; returns what became
--- of it: "delivered" (a ctx:wait took it), "kept" (until one does) or "duplicate"
function Env:signal(saga, name, payload, opts)
  local id = type(saga) == "table" and saga.id or saga
  local outcome, err = self.host:signal(id, name, cjson.encode(payload == nil and {} or payload), opts and opts.key or nil)
  if not outcome then error("saga.testing: signal " .. tostring(name) .. ": " .. tostring(err), 2) end
  self.host:run_until_idle()
  return outcome
end

--- moves the virtual clock by a duration ("30s", "5m", or ms), firing every timer due on the way in
--- due order and running until idle after each; returns the number of live sagas
function Env:advance(d) return self.host:advance(duration_ms(d, "advance")) end

--- runs everything runnable without time passing; returns the number of live sagas
function Env:run_until_idle() return (self.host:run_until_idle()) end

--- the virtual time, ms since the epoch
function Env:now() return self.host:now() end

--- the earliest time something falls due (a timer, a delayed message), or nil
function Env:next_due() return self.host:next_due() end

--- fault injection on the in-process transport, reproducible from the seed:
--- {duplicate = p, drop = p, delay = {min, max}, reorder = true, crash_every = n, seed = s}; nil: off.
--- Without a seed, SAGAHOST_TEST_SEED or a fresh one (env:seed() says which).
function Env:faults(f)
  if f == nil then
    self.host:faults(nil)
    return
  end
  local seed = f.seed or tonumber(os.getenv("SAGAHOST_TEST_SEED") or "")
  if not seed then
    local t = {}
    seed = (os.time() * 1000003 + math.floor(os.clock() * 1e6) + tonumber(tostring(t):match("0x(%x+)") or "0", 16)) % 2147483647
  end
  if math.type(seed) ~= "integer" then error("saga.testing: faults: seed must be an integer", 2) end
  local dmin, dmax = 0, 0
  if f.delay ~= nil then
    if type(f.delay) ~= "table" then error("saga.testing: faults: delay is {min, max}", 2) end
    dmin = duration_ms(f.delay[1] or f.delay.min or 0, "faults.delay")
    dmax = duration_ms(f.delay[2] or f.delay.max or dmin, "faults.delay")
  end
  self._seed = seed
  self.host:faults { duplicate = f.duplicate or 0, drop = f.drop or 0, delay_min = dmin, delay_max = dmax,
                     reorder = f.reorder and true or false, crash_every = f.crash_every or 0, seed = seed }
end

--- the seed of the faults in use (nil without faults)
function Env:seed() return self._seed end

--- runs fn(env); if it fails (an assertion), the fault seed is printed so the run can be repeated
function Env:check(fn)
  local ok, err = pcall(fn, self)
  if ok or not self._seed then
    if not ok then error(err, 0) end
    return
  end
  local note = ("saga.testing: failed with fault seed %d (repeat: env:faults{..., seed = %d})"):format(self._seed, self._seed)
  io.stderr:write(note, "\n")
  if type(err) == "string" then error(err .. "\n" .. note, 0) end
  if type(err) == "table" and type(err.message) == "string" then err.message = err.message .. "\n" .. note end
  error(err, 0)
end

--- crashes the host as kill -9 would (what is not committed is lost) and opens it again on its store
function Env:crash() self.host:crash() end

--- the host's counters: live, completed, compensated, commits, delivered, duplicated, dropped, delayed,
--- reordered, crashes, ...
function Env:stats() return self.host:stats() end

--- closes the host and removes its temporary store
function Env:close()
  if self.closed then return end
  self.closed = true
  local ok, err = pcall(self.host.close, self.host)
  if self._owned then
    for _, suffix in ipairs { "", "-wal", "-shm", "-journal", ".lock" } do os.remove(self.db .. suffix) end
  end
  if not ok then error(err, 2) end
end

Env.__close = Env.close
Env.__gc = Env.close

return M
