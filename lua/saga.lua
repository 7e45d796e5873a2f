-- saga: the Lua half of the saga runtime (the C half is host/lsaga.c, required as "saga.core").
--
-- It owns: the DSL (saga.define, saga.handle) and its validation, the sandbox every script file
-- runs in, the ctx object handed to steps, and the step/handler trampolines the host resumes.
-- Durable operations (ctx:call, ctx:sleep, ...) yield to the host, which journals them and resumes
-- the coroutine with (ok, result_json). This file runs with the full standard library; user scripts
-- never see it directly, only the `saga` table each file gets from `public_for`.
local core = require "saga.core"
local cjson = require "cjson"

-- string.rep with an empty string and separator would loop n times in C for nothing: the host's
-- version answers at once (string methods resolve here too, through the string metatable).
string.rep = core.rep

local json = cjson.new()
json.encode_sparse_array(true)
json.decode_max_depth(200)
json.encode_max_depth(200)

local M = {}

-- The load in progress: saga.define/saga.handle only work while a file is being loaded.
local loading = nil
-- Current good loads by file, and the merged handler registry built from them.
local files = {}
local handlers = {}
-- Every definition version seen: versions[hash] = load (its defs by type).
local versions = {}

---------------------------------------------------------------------------------------------------
-- errors

-- The runtime's own checks see through __metatable (scripts only ever see `false`).
local getmt = debug.getmetatable

-- Errors raised by the runtime itself (ctx:fail, remote error replies) carry this metatable. It is
-- sealed: a script that catches one cannot reach it to change how every other error behaves.
local Err = {}
Err.__index = Err
Err.__tostring = function(e) return e.message end
Err.__metatable = false

-- What a step or handler ends with once the host stopped it for a limit: the C side (script.c)
-- holds the real message; nothing of the script's may run on the way out.
local DOOMED = setmetatable({ message = "stopped by a script limit", retryable = true, traceback = "" }, Err)

local function caller_where(level)
  local info = debug.getinfo(level + 1, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return info.short_src .. ":" .. info.currentline
  end
  return "?"
end

-- Normalises anything raised inside a step or a handler into {message, retryable, fail, traceback}.
-- The traceback is only logged (at debug level): without it, it is "".
local function normalize_error(e)
  if core.doomed() then return DOOMED end -- do not run the script's metamethods (__index, __tostring)
  local tb = core.debugging() and debug.traceback("", 2) or ""
  if getmt(e) == Err then
    e.traceback = tb
    return e
  end
  if type(e) == "table" then
    local msg = e.message or e.error or e.msg
    local r = { message = msg and tostring(msg) or json.encode(e), traceback = tb }
    r.retryable = e.retryable ~= false
    return setmetatable(r, Err)
  end
  return setmetatable({ message = tostring(e), retryable = true, traceback = tb }, Err)
end

---------------------------------------------------------------------------------------------------
-- durations and policies

local function duration_ms(v, what)
  local ms, err = core.duration_ms(v)
  if not ms then error(what .. ": " .. err, 0) end
  return ms
end

local RETRY_KEYS = { attempts = true, backoff = true, initial = true, max = true, multiplier = true, jitter = true }
local DEFAULT_RETRY = { attempts = 3, backoff = "exponential", initial_ms = 100, max_ms = 5000, multiplier = 2, jitter = true }
local DEFAULT_COMP_RETRY = { attempts = 10, backoff = "exponential", initial_ms = 200, max_ms = 30000, multiplier = 2, jitter = true }

-- Validates a retry table; returns it normalised (durations in ms), merged over `base`.
local function parse_retry(t, what, base)
  if t == nil then return base end
  if type(t) ~= "table" then error(what .. " must be a table", 0) end
  for k in pairs(t) do
    if not RETRY_KEYS[k] then
      error(what .. ": unknown key '" .. tostring(k) .. "' (known: attempts, backoff, initial, max, multiplier, jitter)", 0)
    end
  end
  local r = {}
  for k, v in pairs(base) do r[k] = v end
  if t.attempts ~= nil then
    if math.type(t.attempts) ~= "integer" or t.attempts < 1 then error(what .. ".attempts must be an integer >= 1", 0) end
    r.attempts = t.attempts
  end
  if t.backoff ~= nil then
    if t.backoff ~= "fixed" and t.backoff ~= "exponential" then
      error(what .. ".backoff must be \"fixed\" or \"exponential\"", 0)
    end
    r.backoff = t.backoff
  end
  if t.initial ~= nil then r.initial_ms = duration_ms(t.initial, what .. ".initial") end
  if t.max ~= nil then r.max_ms = duration_ms(t.max, what .. ".max") end
  if t.multiplier ~= nil then
    if type(t.multiplier) ~= "number" or t.multiplier < 1 then error(what .. ".multiplier must be a number >= 1", 0) end
    r.multiplier = t.multiplier
  end
  if t.jitter ~= nil then
    if type(t.jitter) ~= "boolean" then error(what .. ".jitter must be a boolean", 0) end
    r.jitter = t.jitter
  end
  if r.max_ms < r.initial_ms then r.max_ms = r.initial_ms end
  return r
end

---------------------------------------------------------------------------------------------------
-- the DSL

local SAGA_KEYS = { name = true, steps = true, retry = true, compensate_retry = true, timeout = true, description = true, key = true }
local STEP_KEYS = { name = true, action = true, compensate = true, compensate_partial = true, retry = true, compensate_retry = true, timeout = true, description = true }
local NAME_PATTERN = "^[%a_][%w_%.%-]*$"

local function define(ld, spec)
  if loading ~= ld then error("saga.define can only be called while its script file loads (at its top level)", 2) end
  local where = caller_where(2)
  local function fail(msg) error(where .. ": saga.define: " .. msg, 0) end
  if type(spec) ~= "table" then fail("expects a table") end
  for k in pairs(spec) do
    if not SAGA_KEYS[k] then fail("unknown key '" .. tostring(k) .. "' (known: name, steps, retry, compensate_retry, timeout, description, key)") end
  end
  local name = spec.name
  if type(name) ~= "string" or not name:match(NAME_PATTERN) then
    fail("'name' must be a string of letters, digits, '_', '.' or '-' (got " .. tostring(name) .. ")")
  end
  local function sfail(msg) fail("saga '" .. name .. "': " .. msg) end
  if loading.defs[name] then sfail("defined twice in this file") end
  if type(spec.steps) ~= "table" or #spec.steps == 0 then sfail("'steps' must be a non-empty list of steps") end
  local key = spec.key
  if key ~= nil and not (type(key) == "string" and key ~= "") and type(key) ~= "function" then
    sfail("'key' must be the name of an input field or a function(input) returning the key (got " .. type(key) .. ")")
  end
  local def = { name = name, file = loading.file, where = where, steps = {}, key = key }
  local ok, err = pcall(function()
    def.timeout_ms = spec.timeout ~= nil and duration_ms(spec.timeout, "timeout") or 0
    def.retry = parse_retry(spec.retry, "retry", DEFAULT_RETRY)
    def.compensate_retry = parse_retry(spec.compensate_retry, "compensate_retry", DEFAULT_COMP_RETRY)
  end)
  if not ok then sfail(err) end
  local seen = {}
  for i, st in ipairs(spec.steps) do
    local function stfail(msg) sfail("step " .. i .. (type(st) == "table" and st.name and (" ('" .. tostring(st.name) .. "')") or "") .. ": " .. msg) end
    if type(st) ~= "table" then stfail("must be a table") end
    for k in pairs(st) do
      if not STEP_KEYS[k] then stfail("unknown key '" .. tostring(k) .. "' (known: name, action, compensate, compensate_partial, retry, compensate_retry, timeout, description)") end
    end
    local sname, action, compensate = st.name, st.action, st.compensate
    if type(sname) ~= "string" or not sname:match(NAME_PATTERN) then stfail("'name' must be a string") end
    if seen[sname] then stfail("duplicate step name") end
    seen[sname] = true
    if type(action) ~= "function" then stfail("'action' must be a function") end
    if compensate ~= nil and type(compensate) ~= "function" then stfail("'compensate' must be a function") end
    if st.compensate_partial ~= nil and type(st.compensate_partial) ~= "boolean" then stfail("'compensate_partial' must be a boolean") end
    local s = { name = sname, action = action, compensate = compensate, compensate_partial = st.compensate_partial ~= false }
    local ok2, err2 = pcall(function()
      s.timeout_ms = st.timeout ~= nil and duration_ms(st.timeout, "timeout") or 0
      s.retry = parse_retry(st.retry, "retry", def.retry)
      s.compensate_retry = parse_retry(st.compensate_retry, "compensate_retry", def.compensate_retry)
    end)
    if not ok2 then stfail(err2) end
    def.steps[i] = s
  end
  for k in pairs(spec.steps) do
    if math.type(k) ~= "integer" or k < 1 or k > #spec.steps then sfail("'steps' must be a list (found key " .. tostring(k) .. ")") end
  end
  loading.defs[name] = def
  loading.order[#loading.order + 1] = name
end

local function handle(ld, service, command, fn)
  if loading ~= ld then error("saga.handle can only be called while its script file loads (at its top level)", 2) end
  local where = caller_where(2)
  local function fail(msg) error(where .. ": saga.handle: " .. msg, 0) end
  if type(service) ~= "string" or not service:match("^[%a_][%w_%-]*$") then
    fail("service must be a name of letters, digits, '_' or '-' (got " .. tostring(service) .. ")")
  end
  if type(command) ~= "string" or not command:match("^[%a_][%w_%-]*$") then
    fail("command must be a name of letters, digits, '_' or '-' (got " .. tostring(command) .. ")")
  end
  if type(fn) ~= "function" then fail("handler for " .. service .. "." .. command .. " must be a function") end
  local key = service .. "." .. command
  if loading.handlers[key] then fail(key .. " is handled twice in this file") end
  loading.handlers[key] = { service = service, command = command, fn = fn, where = where }
end

local BREAKER_KEYS = { failure_rate = true, min_calls = true, window = true, open_for = true }

-- saga.breaker(service, { failure_rate = 0.5, min_calls = 10, window = "30s", open_for = "5s" }):
-- the circuit breaker of a service this host calls (unset keys keep the host's --breaker-* flags).
local function breaker(ld, service, opts)
  if loading ~= ld then error("saga.breaker can only be called while its script file loads (at its top level)", 2) end
  local where = caller_where(2)
  local function fail(msg) error(where .. ": saga.breaker: " .. msg, 0) end
  if type(service) ~= "string" or not service:match("^[%a_][%w_%-]*$") then fail("service must be a name (got " .. tostring(service) .. ")") end
  if type(opts) ~= "table" then fail("expects a table of settings for " .. service) end
  for k in pairs(opts) do
    if not BREAKER_KEYS[k] then fail("unknown key '" .. tostring(k) .. "' (known: failure_rate, min_calls, window, open_for)") end
  end
  local c = { failure_rate = -1, min_calls = 0, window_ms = 0, open_ms = 0 }
  if opts.failure_rate ~= nil then
    if type(opts.failure_rate) ~= "number" or opts.failure_rate < 0 or opts.failure_rate > 1 then
      fail("failure_rate must be a number from 0 (no breaker) to 1")
    end
    c.failure_rate = opts.failure_rate
  end
  if opts.min_calls ~= nil then
    if math.type(opts.min_calls) ~= "integer" or opts.min_calls < 1 then fail("min_calls must be an integer >= 1") end
    c.min_calls = opts.min_calls
  end
  local ok, err = pcall(function()
    if opts.window ~= nil then c.window_ms = duration_ms(opts.window, "window") end
    if opts.open_for ~= nil then c.open_ms = duration_ms(opts.open_for, "open_for") end
  end)
  if not ok then fail(err) end
  if loading.breakers[service] then fail(service .. " is configured twice in this file") end
  loading.breakers[service] = c
end

local SCHEDULE_KEYS = { name = true, cron = true, saga = true, input = true, catch_up = true, timezone = true }
local CATCH_UP = { one = true, all = true, none = true }

-- saga.schedule{ name = "nightly", cron = "0 2 * * *", saga = "Type", input = {...} | function(fire) ... end,
-- catch_up = "one" | "all" | "none", timezone = "UTC" | "local" }: a cron schedule (host/schedule.c fires it).
local function schedule(ld, spec)
  if loading ~= ld then error("saga.schedule can only be called while its script file loads (at its top level)", 2) end
  local where = caller_where(2)
  local function fail(msg) error(where .. ": saga.schedule: " .. msg, 0) end
  if type(spec) ~= "table" then fail("expects a table { name = ..., cron = ..., saga = ... }") end
  for k in pairs(spec) do
    if not SCHEDULE_KEYS[k] then fail("unknown key '" .. tostring(k) .. "' (known: name, cron, saga, input, catch_up, timezone)") end
  end
  local name = spec.name
  if type(name) ~= "string" or not name:match("^[%w_%.%-]+$") or #name > 100 then
    fail("name must be 1 to 100 letters, digits, '_', '.' or '-' (got " .. tostring(name) .. ")")
  end
  if type(spec.cron) ~= "string" then fail(name .. ": cron must be a string like \"*/5 * * * *\"") end
  local ok, err = core.cron_check(spec.cron)
  if not ok then fail(name .. ": " .. err) end
  if type(spec.saga) ~= "string" or not core.is_name(spec.saga) then fail(name .. ": saga must be the name of a saga type") end
  local catch_up = spec.catch_up or "one"
  if not CATCH_UP[catch_up] then fail(name .. ": catch_up must be \"one\", \"all\" or \"none\" (got " .. tostring(catch_up) .. ")") end
  local tz = spec.timezone or "UTC"
  if tz ~= "UTC" and tz ~= "local" then fail(name .. ": timezone must be \"UTC\" or \"local\" (the host's) (got " .. tostring(tz) .. ")") end
  local input_json, input_fn = nil, nil
  if type(spec.input) == "function" then
    input_fn = spec.input
  elseif spec.input == nil or type(spec.input) == "table" then
    local eok, v = pcall(json.encode, spec.input or json.empty_object or {})
    if not eok then fail(name .. ": input cannot be encoded as JSON: " .. tostring(v)) end
    if spec.input == nil or next(spec.input) == nil then v = "{}" end
    input_json = v
  else
    fail(name .. ": input must be a table or a function returning one")
  end
  if loading.schedules[name] then fail("schedule '" .. name .. "' is declared twice in this file") end
  loading.schedules[name] = { name = name, cron = spec.cron, saga = spec.saga, input_json = input_json,
                              input_fn = input_fn, catch_up = catch_up, local_tz = tz == "local", where = where,
                              line = tonumber(where:match(":(%d+)$")) or 0 }
end

local unwrap -- defined with ctx below

-- The `saga` module of one file (require "saga"), with its own `json`: each file gets fresh tables,
-- so what one file does to them (saga.define = ..., saga.json.encode = ...) stays in that file.
local function public_for(ld)
  local pub = {
    define = function(spec) return define(ld, spec) end,
    handle = function(service, command, fn) return handle(ld, service, command, fn) end,
    breaker = function(service, opts) return breaker(ld, service, opts) end,
    schedule = function(spec) return schedule(ld, spec) end,
    json = {
      encode = function(v) return json.encode(unwrap(v, 0)) end,
      decode = function(s) return json.decode(s) end,
    },
    duration = function(v) return duration_ms(v, "duration") / 1000 end,
  }
  return pub
end

---------------------------------------------------------------------------------------------------
-- the sandbox

local function copy(t)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  return r
end

local string_mt = getmetatable("")
local raw_setmetatable, raw_rawset = setmetatable, rawset

-- Tables handed to scripts that must stay as they are (read-only views): rawset cannot write
-- through them and their metatables are sealed.
local sealed = setmetatable({}, { __mode = "k" })

-- table.move in Lua, so that the instruction budget sees every element it moves (the C version
-- would run a loop of any length without the host being able to stop it).
local function table_move(a1, f, e, t, a2)
  a2 = a2 == nil and a1 or a2
  local fi, ei, ti = math.tointeger(f), math.tointeger(e), math.tointeger(t)
  if not fi then error("bad argument #2 to 'move' (number has no integer representation)", 2) end
  if not ei then error("bad argument #3 to 'move' (number has no integer representation)", 2) end
  if not ti then error("bad argument #4 to 'move' (number has no integer representation)", 2) end
  f, e, t = fi, ei, ti
  if e >= f then
    if not (f > 0 or e < math.maxinteger + f) then error("bad argument #3 to 'move' (too many elements to move)", 2) end
    if t > math.maxinteger - (e - f) then error("bad argument #4 to 'move' (destination wrap around)", 2) end
    if t > e or t <= f or not rawequal(a1, a2) then
      for i = 0, e - f do a2[t + i] = a1[f + i] end
    else
      for i = e - f, 0, -1 do a2[t + i] = a1[f + i] end
    end
  end
  return a2
end

local function os_date(fmt, t)
  if type(fmt) == "string" and #fmt > 256 then error("os.date: format longer than 256 characters", 2) end
  return os.date(fmt, t)
end

local function sandbox_env(file, pub)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    -- the host's pcall/xpcall: once a limit has stopped the step, they do not catch that
    pcall = core.pcall, xpcall = core.xpcall,
    select = select, tonumber = tonumber, tostring = tostring, type = type,
    rawequal = rawequal, rawget = rawget, rawlen = rawlen,
    rawset = function(t, k, v)
      if sealed[t] then error("rawset: this table is read-only (ctx.input); keep state in ctx.data", 2) end
      local ok, r = pcall(raw_rawset, t, k, v)
      if not ok then error(r, 2) end -- blamed on the script's line, not on this wrapper
      return r
    end,
    setmetatable = function(t, mt)
      if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
        error("setmetatable: __gc metamethods are not available to saga scripts (a finalizer runs at a " ..
              "garbage collection, outside any step and any limit)", 2)
      end
      local ok, r = pcall(raw_setmetatable, t, mt)
      if not ok then error(r, 2) end
      return r
    end,
    getmetatable = function(v)
      local mt = getmetatable(v)
      if mt == string_mt then return nil end
      return mt
    end,
    string = copy(string), table = copy(table), math = copy(math), utf8 = copy(utf8), coroutine = copy(core.coroutine),
    os = { time = os.time, clock = os.clock, date = os_date, difftime = os.difftime },
    _VERSION = _VERSION,
  }
  env.table.move = table_move
  -- the generator is the host's, seeded at start: a file may not fix every other file's numbers
  env.math.randomseed = function() end
  env.print = function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    core.log("info", file .. ": " .. table.concat(parts, "\t", 1, parts.n))
  end
  env.require = function(name)
    if name == "saga" then return pub end
    if name == "cjson" or name == "json" then return pub.json end
    error("module '" .. tostring(name) .. "' is not available to saga scripts (only 'saga' and 'json')", 2)
  end
  env._G = env
  return env
end

---------------------------------------------------------------------------------------------------
-- loading

-- Runs one script file in a fresh sandbox. Returns the load ({file, hash, defs, order, handlers})
-- or nil and a "file:line: message" error. `historic` loads (an old version an instance still needs)
-- do not register handlers.
function M.load(file, source, hash, historic)
  local ld = { file = file, hash = hash, defs = {}, order = {}, handlers = {}, breakers = {}, schedules = {},
               historic = historic }
  local fn, err = load(source, "@" .. file, "t", sandbox_env(file, public_for(ld)))
  if not fn then return nil, err end
  loading = ld
  local ok, lerr = xpcall(fn, function(e)
    if core.doomed() then return "" end -- the host has the message; run nothing of the script's
    if type(e) == "string" then return e end
    local mt = getmt(e)
    if type(mt) == "table" and rawget(mt, "__tostring") then
      local tok, msg = pcall(tostring, e)
      if tok and type(msg) == "string" then return msg end
    end
    return "error object is a " .. type(e)
  end)
  loading = nil
  if not ok then
    lerr = tostring(lerr)
    -- a load error always names the file that caused it
    if lerr:sub(1, #file + 1) ~= file .. ":" then lerr = file .. ": " .. lerr end
    return nil, lerr
  end
  if not historic then
    for key, h in pairs(ld.handlers) do
      for f, other in pairs(files) do
        if f ~= file and other.handlers[key] then
          return nil, h.where .. ": saga.handle: " .. key .. " is already handled by " .. other.handlers[key].where
        end
      end
    end
    for name, c in pairs(ld.schedules) do
      for f, other in pairs(files) do
        if f ~= file and other.schedules and other.schedules[name] then
          return nil, c.where .. ": saga.schedule: schedule '" .. name .. "' is already declared in " .. other.schedules[name].where
        end
      end
    end
    for name, d in pairs(ld.defs) do
      for f, other in pairs(files) do
        if f ~= file and other.defs[name] then
          return nil, d.where .. ": saga.define: saga '" .. name .. "' is already defined in " .. other.defs[name].where
        end
      end
    end
  end
  versions[hash] = versions[hash] or ld
  if not historic then ld.warnings = M.lint(ld, source) end
  return ld
end

-- Warnings about a loaded file (sagahost check prints them, a load logs them): a step without a
-- compensate function whose action can still fail after a call that completed leaves that call's
-- effect in place (partial steps are compensated by the step's compensate function). A look at the
-- source lines of the action: a call, then on a later line another durable operation, error(),
-- assert() or ctx:fail().
local EFFECTS = { "ctx:call%s*%(", "ctx:call_all%s*[%({]", "ctx:all%s*[%({]", "ctx:run%s*%(" }
local FAILS = { "ctx:call[%w_]*%s*[%({]", "ctx:all%s*[%({]", "ctx:run%s*%(", "ctx:sleep%s*%(", "ctx:wait%s*%(",
                "ctx:fail%s*[%(\"']", "ctx:send%s*%(", "ctx:publish%s*%(", "%f[%w_]error%s*[%(\"'{]", "%f[%w_]assert%s*%(" }
local function any_of(text, pats)
  for _, p in ipairs(pats) do if text:find(p) then return true end end
  return false
end
function M.lint(ld, source)
  local out, lines = {}, nil
  for _, name in ipairs(ld.order) do
    local d = ld.defs[name]
    for _, st in ipairs(d.steps) do
      local info = st.compensate == nil and debug.getinfo(st.action, "S")
      if info and info.source == "@" .. ld.file and info.lastlinedefined > info.linedefined then
        if not lines then
          lines = {}
          for l in (source .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
        end
        local call_at
        for ln = info.linedefined + 1, info.lastlinedefined do
          local text = (lines[ln] or ""):gsub("%-%-.*$", "")
          if call_at and any_of(text, FAILS) then
            out[#out + 1] = string.format("%s:%d: warning: step '%s' of saga '%s' has no compensate function: if its "
              .. "action fails after this call (line %d can), what the call did is never undone; add a compensate "
              .. "function (it also runs for an attempt that failed after its calls)", ld.file, call_at, st.name, name, ln)
            break
          end
          if not call_at and any_of(text, EFFECTS) then call_at = ln end
        end
      end
    end
  end
  return out
end

local function rebuild_handlers()
  handlers = {}
  for _, ld in pairs(files) do
    for key, h in pairs(ld.handlers) do handlers[key] = h end
  end
end

-- Makes a good load the current one for its file (build-validate-swap: only called after load succeeded).
function M.commit(ld)
  files[ld.file] = ld
  rebuild_handlers()
end

-- The file is gone: its sagas take no new starts, its handlers stop answering.
function M.remove(file)
  files[file] = nil
  rebuild_handlers()
end

-- Services with at least one handler, sorted.
function M.services()
  local seen, list = {}, {}
  for _, h in pairs(handlers) do
    if not seen[h.service] then seen[h.service] = true; list[#list + 1] = h.service end
  end
  table.sort(list)
  return list
end

function M.version(hash) return versions[hash] end

-- The input of one fire of a schedule whose input is a function: true and its JSON, or false and why.
-- The function gets { schedule = name, time = fire time (ms since the epoch), missed = caught up }.
function M.schedule_input(file, name, fire_at, missed)
  local ld = files[file]
  local c = ld and ld.schedules[name]
  if not c or not c.input_fn then return false, "schedule " .. name .. " has no input function loaded" end
  local ok, v = xpcall(c.input_fn, function(e)
    if core.doomed() then return "" end -- the host has the message; run nothing of the script's
    if type(e) == "string" then return e end
    if getmt(e) == Err then return e.message end
    return "error object is a " .. type(e)
  end, { schedule = name, time = fire_at, missed = missed })
  if not ok then return false, tostring(v) end
  if v == nil then return true, "{}" end
  if type(v) ~= "table" then return false, "input function (" .. c.where .. ") returned a " .. type(v) .. ", not a table" end
  if next(v) == nil then return true, "{}" end
  local eok, j = pcall(json.encode, unwrap(v, 0))
  if not eok then return false, "input function (" .. c.where .. ") returned what is not JSON: " .. tostring(j) end
  return true, j
end

---------------------------------------------------------------------------------------------------
-- business keys

local readonly -- defined with ctx below

local MAX_KEY = 200

-- The business key of a new saga of type_ (version hash) with this input, as the host starts it (under
-- the limits of a run: RUN_KEY). Returns true and the key (nil = none), or false and why.
function M.saga_key(hash, type_, input_json)
  local ld = versions[hash]
  local def = ld and ld.defs[type_]
  if not def or def.key == nil then return true, nil end
  local ok, input = pcall(json.decode, input_json)
  if not ok or type(input) ~= "table" then input = {} end
  local v, what
  if type(def.key) == "string" then
    what = "key field '" .. def.key .. "'"
    v = input[def.key]
  else
    what = "key function (" .. def.where .. ")"
    local fok, r = xpcall(def.key, function(e)
      if core.doomed() then return "" end -- the host has the message; run nothing of the script's
      if type(e) == "string" then return e end
      if getmt(e) == Err then return e.message end
      if type(e) == "table" and type(rawget(e, "message")) == "string" then return rawget(e, "message") end
      return "error object is a " .. type(e)
    end, readonly(input))
    if not fok then return false, "key function failed: " .. tostring(r) end
    v = r
  end
  if v == nil or v == json.null then return true, nil end
  if math.type(v) == "integer" then
    v = string.format("%d", v)
  elseif type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return false, what .. " gave " .. tostring(v) .. " (not a usable key)" end
    v = (v == math.floor(v) and math.abs(v) < 2^63) and string.format("%d", math.tointeger(v)) or string.format("%.14g", v)
  elseif type(v) ~= "string" then
    return false, what .. " gave a " .. type(v) .. ": a key must be a string or a number (nil for none)"
  end
  if v == "" then return false, what .. " gave an empty string: a key must be 1 to " .. MAX_KEY .. " bytes (nil for none)" end
  if #v > MAX_KEY then return false, what .. " gave " .. #v .. " bytes: a key must be 1 to " .. MAX_KEY .. " bytes" end
  if v:find("\0", 1, true) or not utf8.len(v) then return false, what .. " gave a string that is not UTF-8 text" end
  return true, v
end

---------------------------------------------------------------------------------------------------
-- ctx

-- A read-only view of a decoded JSON value (ctx.input).
local originals = setmetatable({}, { __mode = "k" }) -- read-only view -> the table it shows

function readonly(t)
  if type(t) ~= "table" then return t end
  local cache = {}
  local proxy = {}
  originals[proxy] = t
  sealed[proxy] = true
  return setmetatable(proxy, {
    __metatable = false,
    __index = function(_, k)
      local v = t[k]
      if type(v) == "table" then
        local p = cache[k]
        if not p then p = readonly(v); cache[k] = p end
        return p
      end
      return v
    end,
    __newindex = function(_, k) error("ctx.input is read-only (tried to set '" .. tostring(k) .. "'); keep state in ctx.data", 2) end,
    __len = function() return #t end,
    __pairs = function()
      return function(_, k)
        local nk = next(t, k)
        if nk == nil then return nil end
        local v = t[nk]
        if type(v) == "table" then v = readonly(v) end
        return nk, v
      end, nil, nil
    end,
  })
end

local yield = coroutine.yield
-- The metatable of every ctx, sealed: scripts cannot reach it to change ctx:call for other files.
local Ctx = {}
Ctx.__index = Ctx
Ctx.__metatable = false

-- A value with the read-only views of ctx.input in it replaced by what they show (JSON encoding
-- sees a view as an empty table). Tables are copied only where they hold a view.
function unwrap(v, depth)
  if type(v) ~= "table" then return v end
  local o = originals[v]
  if o then return o end
  if depth > 200 then return v end -- cjson refuses it with a clear message
  local copy
  for k, x in pairs(v) do
    if type(x) == "table" then
      local u = unwrap(x, depth + 1)
      if u ~= x then
        if not copy then copy = {}; for k2, x2 in pairs(v) do copy[k2] = x2 end end
        copy[k] = u
      end
    end
  end
  return copy or v
end

local function encode_payload(payload, what)
  if payload == nil then return "{}" end
  if type(payload) ~= "table" then error(what .. ": payload must be a table", 3) end
  local ok, s = pcall(json.encode, unwrap(payload, 0))
  if not ok then error(what .. ": payload cannot be encoded as JSON: " .. tostring(s), 3) end
  return s
end

-- Service, command, topic and event names become routing keys ("service.command"): letters, digits,
-- '_' and '-' only.
local is_name = core.is_name
local function check_name(v, what, level)
  if not is_name(v) then
    error(what .. " must be a name of letters, digits, '_' or '-' (got " .. tostring(v) .. ")", level + 1)
  end
end

-- Resumed by the host with (ok, result_json).
local on_step = core.on_step
local running = coroutine.running
-- The branch threads of a ctx:all while it runs (the runtime's own coroutines, never the script's):
-- their ctx:call yields to the fan-out scheduler (run_all), not to the host.
local branch_of = setmetatable({}, { __mode = "k" })
local FAN = {} -- what a branch's ctx:call yields to the scheduler, ahead of the call
local function await(op, ...)
  if branch_of[running()] then
    if op ~= "call" then
      error("ctx:" .. op .. " cannot be used inside a ctx:all branch: branches make calls (ctx:call) only", 3)
    end
    return yield(FAN, ...)
  end
  if not on_step() then
    error("ctx:" .. op .. " cannot be used inside a coroutine the script created: durable operations run on the step itself", 3)
  end
  local ok, res = yield(op, ...)
  return ok, res
end

function Ctx:call(service, command, payload, opts)
  check_name(service, "ctx:call: service", 2)
  check_name(command, "ctx:call: command", 2)
  local body = encode_payload(payload, "ctx:call")
  local timeout_ms = nil
  if opts ~= nil then
    if type(opts) ~= "table" then error("ctx:call: opts must be a table", 2) end
    for k, v in pairs(opts) do
      if k == "timeout" then timeout_ms = tostring(duration_ms(v, "ctx:call: opts.timeout"))
      else error("ctx:call: unknown option '" .. tostring(k) .. "' (known: timeout)", 2) end
    end
  end
  local ok, res = await("call", service, command, body, timeout_ms)
  local v = json.decode(res)
  if ok then return v end
  local msg = type(v) == "table" and (v.error or v.message) or tostring(v)
  error(setmetatable({
    message = service .. "." .. command .. ": " .. tostring(msg),
    retryable = not (type(v) == "table" and v.retryable == false),
    remote = true,
  }, Err), 0)
end

-- Fan-out: runs the branch functions fns[1..n], each in a coroutine of its own, concurrently. Every
-- time all the branches still running wait on a ctx:call, their calls go to the host as ONE operation
-- ("all", the JSON list of the calls in branch order); the host journals each under its own number,
-- sends them together and answers once all have their result; each branch gets its own and goes on.
-- The same results give the same rounds in the same order: a replay maps each call to its journal entry.
local function run_all(fns, n, settle)
  local threads, outcome, input = {}, {}, {}
  for i = 1, n do
    local fn = fns[i]
    local co = coroutine.create(function() return table.pack(xpcall(fn, normalize_error)) end)
    branch_of[co] = true
    threads[i] = co
  end
  local live = n
  while live > 0 do
    local calls, who = {}, {}
    for i = 1, n do
      local co = threads[i]
      if co then
        local args = input[i]
        input[i] = nil
        local rok, a, b, c, d, e
        if args then rok, a, b, c, d, e = core.resume(co, args[1], args[2])
        else rok, a, b, c, d, e = core.resume(co) end
        if core.doomed() then error(DOOMED, 0) end -- a limit stopped it: the host has the message
        if not rok or coroutine.status(co) == "dead" then
          threads[i] = nil
          branch_of[co] = nil
          live = live - 1
          if rok then outcome[i] = a
          else outcome[i] = { false, normalize_error(a) } end
        elseif a == FAN then
          calls[#calls + 1] = { s = b, c = c, p = d, t = tonumber(e) or 0 }
          who[#who + 1] = i
        else
          threads[i] = nil
          branch_of[co] = nil
          live = live - 1
          outcome[i] = { false, normalize_error("ctx:all: branch " .. i .. " yielded outside a ctx:call") }
        end
      end
    end
    if #calls > 0 then
      local _, res = yield("all", json.encode(calls))
      local results = json.decode(res)
      for k, i in ipairs(who) do input[i] = { results[k][1] == "ok", results[k][2] } end
    end
  end
  if settle then
    local out = {}
    for i = 1, n do
      local o = outcome[i]
      if o[1] then out[i] = { ok = true, value = o[2] }
      else out[i] = { ok = false, error = o[2].message, retryable = o[2].retryable ~= false } end
    end
    return table.unpack(out, 1, n)
  end
  local fails, retryable, fail = {}, true, nil
  for i = 1, n do
    local o = outcome[i]
    if not o[1] then
      fails[#fails + 1] = o[2].message
      if o[2].retryable == false then retryable = false end
      if o[2].fail then fail = true end
    end
  end
  if #fails > 0 then
    error(setmetatable({
      message = string.format("%d of %d calls failed: %s", #fails, n, table.concat(fails, "; ")),
      retryable = retryable, fail = fail,
    }, Err), 0)
  end
  local vals = {}
  for i = 1, n do vals[i] = outcome[i][2] end
  return table.unpack(vals, 1, n)
end

-- The list part (1..n) and the settle flag of a ctx:all / ctx:call_all table.
local function fan_spec(spec, what, check)
  if type(spec) ~= "table" then error(what .. ": expects a table (a list, and settle = true to get every outcome)", 3) end
  if branch_of[running()] then error(what .. " cannot be used inside a ctx:all branch", 3) end
  if not on_step() then
    error(what .. " cannot be used inside a coroutine the script created: durable operations run on the step itself", 3)
  end
  local n, settle = #spec, false
  for k, v in pairs(spec) do
    if k == "settle" then
      if type(v) ~= "boolean" then error(what .. ": settle must be a boolean", 3) end
      settle = v
    elseif math.type(k) ~= "integer" or k < 1 or k > n then
      error(what .. ": unknown key '" .. tostring(k) .. "' (a list, and settle)", 3)
    else
      check(k, v)
    end
  end
  return n, settle
end

-- ctx:all{ function() return ctx:call(...) end, ..., settle = false }: the branches run concurrently;
-- returns their results in order, or raises "k of n calls failed: ..." once all have ended; with
-- settle = true returns every outcome as { ok = true, value = v } or { ok = false, error = message }.
function Ctx:all(spec)
  local n, settle = fan_spec(spec, "ctx:all", function(k, v)
    if type(v) ~= "function" then error("ctx:all: branch " .. k .. " must be a function (got " .. type(v) .. ")", 4) end
  end)
  local fns = {}
  for i = 1, n do fns[i] = spec[i] end
  return run_all(fns, n, settle)
end

-- ctx:call_all{ {service, command, payload [, opts]}, ..., settle = false }: ctx:all of those ctx:call.
function Ctx:call_all(spec)
  local n, settle = fan_spec(spec, "ctx:call_all", function(k, v)
    if type(v) ~= "table" then error("ctx:call_all: call " .. k .. " must be a table {service, command, payload, opts}", 4) end
    check_name(v[1], "ctx:call_all: call " .. k .. ": service", 4)
    check_name(v[2], "ctx:call_all: call " .. k .. ": command", 4)
  end)
  local fns = {}
  for i = 1, n do
    local c = spec[i]
    local svc, cmd, payload, opts = c[1], c[2], c[3], c[4]
    fns[i] = function() return self:call(svc, cmd, payload, opts) end
  end
  return run_all(fns, n, settle)
end

-- A child saga: started durably (with the journal entry that waits for it) and waited for. Its ctx.data
-- when it completes; an error (retryable = false) when it ends compensated or compensation_failed.
local TYPE_PATTERN = "^[%a_][%w_%.%-]*$"
function Ctx:run(type_, input, opts)
  if type(type_) ~= "string" or not type_:match(TYPE_PATTERN) then
    error("ctx:run: saga type must be a name of letters, digits, '_', '.' or '-' (got " .. tostring(type_) .. ")", 2)
  end
  local body = encode_payload(input, "ctx:run")
  local key = nil
  if opts ~= nil then
    if type(opts) ~= "table" then error("ctx:run: opts must be a table", 2) end
    for k, v in pairs(opts) do
      if k == "id" then
        if math.type(v) == "integer" then v = string.format("%d", v) end
        if type(v) ~= "string" or v == "" or #v > 200 then error("ctx:run: opts.id must be a string of 1 to 200 bytes or an integer", 2) end
        key = v
      else
        error("ctx:run: unknown option '" .. tostring(k) .. "' (known: id)", 2)
      end
    end
  end
  local _, res = await("run", type_, body, key)
  local v = json.decode(res)
  if v.ok then return v.data end
  error(setmetatable({
    message = tostring(v.error), retryable = false,
    child = { id = v.id, type = v.type, status = v.status },
  }, Err), 0)
end

function Ctx:send(service, command, payload)
  check_name(service, "ctx:send: service", 2)
  check_name(command, "ctx:send: command", 2)
  await("send", service, command, encode_payload(payload, "ctx:send"))
end

function Ctx:publish(topic, event, payload)
  check_name(topic, "ctx:publish: topic", 2)
  check_name(event, "ctx:publish: event", 2)
  await("publish", topic, event, encode_payload(payload, "ctx:publish"))
end

function Ctx:sleep(d)
  local ms = duration_ms(d, "ctx:sleep")
  await("sleep", tostring(ms))
end

-- Waits for the signal `name` (docs/lua-api.md, Signals): its payload, or nil once opts.timeout passed.
function Ctx:wait(name, opts)
  if type(name) ~= "string" or #name > 100 or not is_name(name) then
    error("ctx:wait: name must be a signal name of 1 to 100 letters, digits, '_' or '-' (got " .. tostring(name) .. ")", 2)
  end
  local timeout_ms = nil
  if opts ~= nil then
    if type(opts) ~= "table" then error("ctx:wait: opts must be a table", 2) end
    for k, v in pairs(opts) do
      if k == "timeout" then timeout_ms = tostring(duration_ms(v, "ctx:wait: opts.timeout"))
      else error("ctx:wait: unknown option '" .. tostring(k) .. "' (known: timeout)", 2) end
    end
  end
  local ok, res = await("wait", name, timeout_ms)
  if not ok then return nil end
  return json.decode(res).payload -- {"signal": id, "name", "seq", "payload"}: the host gives it back if the attempt fails
end

-- Seconds since the epoch (with milliseconds), journaled: a re-run sees the same value.
function Ctx:now()
  local _, res = await("now")
  return tonumber(res) / 1000
end

function Ctx:uuid()
  local _, res = await("uuid")
  return json.decode(res)
end

function Ctx:log(...)
  local parts = table.pack(...)
  for i = 1, parts.n do parts[i] = tostring(parts[i]) end
  core.log("info", string.format("[%s %s %s#%d] %s", self.type, self.id, self.step, self.attempt,
    table.concat(parts, " ", 1, parts.n)))
end

function Ctx:fail(reason)
  error(setmetatable({ message = tostring(reason or "failed"), retryable = false, fail = true }, Err), 0)
end

-- partial_json: the step's compensation runs for an action attempt that failed after some of its
-- calls completed: ctx.partial = true and ctx.journal lists those calls ({seq, service, command, result}).
function M.new_ctx(id, type_, input_json, data_json, step, phase, attempt, partial_json)
  local ok, input = pcall(json.decode, input_json)
  if not ok then input = {} end
  local ok2, data = pcall(json.decode, data_json)
  if not ok2 or type(data) ~= "table" then data = {} end
  local partial, journal
  if partial_json then
    local ok3, p = pcall(json.decode, partial_json)
    partial, journal = true, ok3 and type(p) == "table" and type(p.journal) == "table" and p.journal or {}
  end
  return setmetatable({
    id = id, type = type_, input = readonly(input), data = data,
    step = step, phase = phase, attempt = attempt, partial = partial, journal = journal,
  }, Ctx)
end

-- The compensate function of a step that started child sagas (children_json: sagas.children, step
-- 0-based): the children of that step are compensated first, newest first, each a journaled
-- operation that waits until the child has compensated; then the step's own compensate (if any).
-- keep_keyed: a failed attempt's compensation before a retry: children started with {id = key} stay
-- (the retry gets the same child).
function M.compensation(fn, children_json, step, keep_keyed)
  local ok, list = pcall(json.decode, children_json)
  local ids, any = {}, false
  if ok and type(list) == "table" then
    for _, c in ipairs(list) do
      if c.step == step then
        any = true
        if not (keep_keyed and c.key) then ids[#ids + 1] = c end
      end
    end
  end
  if not any then return fn end
  return function(ctx)
    for i = #ids, 1, -1 do
      local _, res = await("child_compensate", ids[i].id)
      local v = json.decode(res)
      if not v.ok then error(setmetatable({ message = tostring(v.error), retryable = true }, Err), 0) end
    end
    if fn then return fn(ctx) end
  end
end

-- The body of every saga coroutine: runs one step function. Returns
-- ("done", data_json) | ("error", message, retryable, traceback) | ("fail", message, false, traceback).
function M.run_step(fn, ctx)
  local ok, err = xpcall(fn, normalize_error, ctx)
  if not ok and getmt(err) ~= Err then
    -- memory errors skip the message handler; the host names the limit and the line (script.c)
    err = { message = type(err) == "string" and err or "step failed", retryable = true, traceback = "" }
  end
  if ok then
    local eok, data = pcall(json.encode, unwrap(ctx.data, 0))
    if not eok then return "error", "ctx.data cannot be encoded as JSON: " .. tostring(data), false, "" end
    return "done", data
  end
  return err.fail and "fail" or "error", err.message, err.retryable, err.traceback
end

-- Answers one command for a participant. Returns status ("ok"|"error") and the JSON body.
function M.handle(service, command, payload_json, message_id, saga_id)
  local h = handlers[service .. "." .. command]
  if not h then
    return "error", json.encode({ error = "no handler for " .. service .. "." .. command .. " on this host", retryable = false })
  end
  local ok, payload = pcall(json.decode, payload_json)
  if not ok then
    return "error", json.encode({ error = "malformed JSON payload: " .. tostring(payload), retryable = false })
  end
  -- a body of `null` (a sender with nothing to say) is no payload: nil, as the handler would test
  -- for, not the cjson.null userdata that is truthy and fails on indexing. Nulls inside a table stay.
  if payload == json.null then payload = nil end
  local hok, res = xpcall(h.fn, normalize_error, payload, { message_id = message_id, saga_id = saga_id, service = service, command = command })
  if not hok and getmt(res) ~= Err then
    res = { message = type(res) == "string" and res or "handler failed", retryable = true }
  end
  if hok then
    local eok, body = pcall(json.encode, res == nil and {} or res)
    if eok then return "ok", body end
    return "error", json.encode({ error = h.where .. ": handler result cannot be encoded as JSON: " .. tostring(body), retryable = false })
  end
  return "error", json.encode({ error = res.message, retryable = res.retryable })
end

return M
