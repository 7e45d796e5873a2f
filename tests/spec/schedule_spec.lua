-- Schedules (#13): delayed starts (POST ?start_at= / ?delay=, sagahost start --delay) and cron schedules
-- (saga.schedule): fires with their input, each fire time exactly once (across kill -9, and across two
-- hosts on PostgreSQL), catch-up after downtime, GET /v1/schedules and the CLI, and bad crons rejected
-- with file:line. Cron minutes are shortened with SAGAHOST_CRON_MINUTE_MS.
local H = require "helper"
local cjson = require "cjson"

local MINUTE = math.tointeger(300 * H.slow) -- ms in one cron "minute" for these tests
local ENV = "SAGAHOST_CRON_MINUTE_MS=" .. MINUTE

local LATER = [[
local saga = require "saga"
saga.define {
  name = "Later",
  steps = { { name = "Run", action = function(ctx) print("RAN " .. ctx.id); ctx.data.ran_at = ctx:now() end } },
}
]]

-- a schedule firing every cron minute; its input says when the fire was and whether it was caught up
local function tick_script(catch_up, extra)
  return [[
local saga = require "saga"
saga.define {
  name = "Tick",
  steps = { { name = "Run", action = function(ctx) ctx.data.at = ctx.input.at end } },
}
saga.schedule {
  name = "every",
  cron = "*/1 * * * *",
  saga = "Tick",
  catch_up = "]] .. catch_up .. [[",
  input = function(fire) return { at = fire.time, missed = fire.missed, schedule = fire.schedule } end,
}
]] .. (extra or "")
end

-- ms since the epoch of an API time ("2026-12-01T10:10:46.001Z")
local function ms_of(t)
  local y, mo, d, h, mi, s, frac = t:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.?(%d*)Z$")
  local days = os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = 12 } // 86400
  local ms = (days * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s)) * 1000
  return ms + (frac ~= "" and tonumber((frac .. "00"):sub(1, 3)) or 0)
end

-- every saga of type (their full rows, with input), in creation order
local function sagas_of(host, type_)
  local code, body = host:get("/v1/sagas?type=" .. type_ .. "&order=asc&limit=1000")
  assert.are.equal(200, code, cjson.encode(body))
  local out = {}
  for _, s in ipairs(body.sagas) do out[#out + 1] = host:saga(s.id) end
  return out
end

-- the fire times of the sagas (input.at), sorted; fails on a fire time seen twice
local function fire_times(list)
  local seen, times = {}, {}
  for _, s in ipairs(list) do
    local at = s.input.at
    assert.is_nil(seen[at], "fire time " .. tostring(at) .. " started two sagas: " .. tostring(seen[at]) .. ", " .. s.id)
    seen[at] = s.id
    times[#times + 1] = at
  end
  table.sort(times)
  return times
end

local function assert_consecutive(times, from, to)
  for i = (from or 1) + 1, to or #times do
    assert.are.equal(MINUTE, times[i] - times[i - 1], "fires " .. times[i - 1] .. " and " .. times[i] .. " are not one minute apart")
  end
end

local function wait_until(what, fn, secs)
  local deadline = H.now() + (secs or 10) * H.slow
  while H.now() < deadline do
    local v = fn()
    if v then return v end
    H.sleep(0.05)
  end
  error("timed out waiting for " .. what)
end

describe("delayed start", function()
  local host
  before_each(function()
    host = H.host { name = "sched-delay", scripts = { ["later.lua"] = LATER } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("?delay= is accepted at once as scheduled with its due time, and its first step starts then, not before", function()
    local t0 = H.now() * 1000
    local code, body = host:post("/v1/sagas/Later?delay=2s", {})
    assert.are.equal(201, code, cjson.encode(body))
    local s = host:saga(body.id)
    assert.are.equal("scheduled", s.status)
    local due = ms_of(s.start_at)
    assert.is_true(due >= t0 + 1900 and due <= H.now() * 1000 + 2100, "start_at " .. s.start_at)
    assert.are.same({}, s.steps)
    H.sleep(1)
    assert.are.equal("scheduled", host:saga(body.id).status)
    assert.are.equal(0, H.count(host:log(), "RAN " .. body.id))
    s = host:wait(body.id, nil, 10)
    assert.are.equal("completed", s.status)
    assert.is_true(s.data.ran_at * 1000 >= due - 5, "ran at " .. s.data.ran_at .. ", due " .. due)
    assert.is_true(s.data.ran_at * 1000 < due + 2000, "ran at " .. s.data.ran_at .. ", due " .. due)
    assert.is_nil(s.start_at)
  end)

  it("?start_at= takes epoch ms or a UTC time; bad values and both at once are 400", function()
    local due = math.tointeger(math.floor(H.now() * 1000)) + 1500
    local code, body = host:post("/v1/sagas/Later?start_at=" .. due, {})
    assert.are.equal(201, code, cjson.encode(body))
    local s = host:saga(body.id)
    assert.are.equal("scheduled", s.status)
    assert.are.equal(due, ms_of(s.start_at))
    local iso = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(H.now()) + 2)
    local code2, body2 = host:post("/v1/sagas/Later?start_at=" .. iso, {})
    assert.are.equal(201, code2, cjson.encode(body2))
    assert.are.equal("scheduled", host:saga(body2.id).status)
    -- a time that has passed starts at once
    local code3, body3 = host:post("/v1/sagas/Later?start_at=1000", {})
    assert.are.equal(201, code3)
    assert.are.equal("completed", host:wait(body3.id).status)
    local c4, b4 = host:post("/v1/sagas/Later?start_at=tomorrow", {})
    assert.are.equal(400, c4)
    assert.matches("start_at must be", b4.error, 1, true)
    local c5, b5 = host:post("/v1/sagas/Later?delay=soon", {})
    assert.are.equal(400, c5)
    assert.matches("delay", b5.error, 1, true)
    local c6 = host:post("/v1/sagas/Later?delay=1s&start_at=" .. due, {})
    assert.are.equal(400, c6)
    local s1 = host:wait(body.id, nil, 10)
    assert.is_true(s1.data.ran_at * 1000 >= due - 5, "ran at " .. s1.data.ran_at .. ", due " .. due)
    assert.are.equal("completed", host:wait(body2.id, nil, 10).status)
  end)

  it("survives a kill -9 before it is due: it starts at its due time after the restart, once", function()
    local code, body = host:post("/v1/sagas/Later?delay=3s", {})
    assert.are.equal(201, code)
    local due = ms_of(host:saga(body.id).start_at)
    H.sleep(0.5)
    host:kill9()
    H.sleep(0.5)
    host:start()
    local s = host:saga(body.id)
    assert.are.equal("scheduled", s.status)
    assert.are.equal(due, ms_of(s.start_at))
    s = host:wait(body.id, nil, 10)
    assert.are.equal("completed", s.status)
    assert.is_true(s.data.ran_at * 1000 >= due - 5, "ran at " .. s.data.ran_at .. ", due " .. due)
    assert.are.same({ "Run:action:completed" }, H.history(s))
    assert.are.equal(1, H.count(host:log(), "RAN " .. body.id))
  end)

  it("a scheduled saga compensated before it is due never runs its step", function()
    local code, body = host:post("/v1/sagas/Later?delay=2s", {})
    assert.are.equal(201, code)
    local c2, after = host:post("/v1/sagas/" .. body.id .. "/compensate", { reason = "not wanted" })
    assert.are.equal(200, c2, cjson.encode(after))
    assert.are.equal("compensated", host:wait(body.id).status)
    H.sleep(2.5)
    assert.are.equal("compensated", host:saga(body.id).status)
    assert.are.equal(0, H.count(host:log(), "RAN " .. body.id))
  end)

  it("sagahost start --delay and --start-at", function()
    local code, out = H.cli("start Later --delay 2s", host.url)
    assert.are.equal(0, code, out)
    local id = out:match("(%S+)")
    assert.are.equal("scheduled", host:saga(id).status)
    local code2, _, err2 = H.cli("start Later --delay 1s --start-at 1000", host.url)
    assert.are.equal(2, code2)
    assert.matches("not both", err2, 1, true)
    local code3, _, err3 = H.cli("start Later --delay nope", host.url)
    assert.are_not.equal(0, code3)
    assert.matches("delay: invalid duration 'nope'", err3, 1, true)
    assert.are.equal("completed", host:wait(id, nil, 10).status)
  end)
end)

describe("cron schedules", function()
  it("fire every cron minute, each fire time once, with the input of the fire", function()
    local host = H.host { name = "sched-cron", env = ENV, scripts = { ["tick.lua"] = tick_script("all", [[
saga.define { name = "Static", steps = { { name = "S", action = function(ctx) end } } }
saga.schedule { name = "static-two", cron = "*/2 * * * *", saga = "Static", input = { kind = "static", n = 2 } }
]]) } }
    host:start()
    local ok, err = pcall(function()
      wait_until("8 fires", function() return #sagas_of(host, "Tick") >= 8 end, 15)
      local list = sagas_of(host, "Tick")
      local times = fire_times(list)
      assert_consecutive(times)
      for _, s in ipairs(list) do
        assert.are.equal(0, s.input.at % MINUTE)      -- on a cron minute
        assert.is_false(s.input.missed)
        assert.are.equal("every", s.input.schedule)
        assert.are.equal("schedule:every@" .. math.tointeger(s.input.at), s.idempotency_key)
        assert.are.equal("completed", host:wait(s.id).status)
      end
      local statics = sagas_of(host, "Static")
      assert.is_true(#statics >= 3, #statics .. " fires of */2")
      for _, s in ipairs(statics) do assert.are.same({ kind = "static", n = 2 }, s.input) end
      local created = {}
      for _, s in ipairs(statics) do created[#created + 1] = ms_of(s.created_at) end
      table.sort(created)
      for i = 2, #created do -- */2: two cron minutes apart
        assert.is_true(math.abs(created[i] - created[i - 1] - 2 * MINUTE) < MINUTE, "fires at " .. created[i - 1] .. ", " .. created[i])
      end
    end)
    host:stop()
    assert(ok, err)
  end)

  for _, policy in ipairs { "all", "one", "none" } do
    it("catch_up = \"" .. policy .. "\": the fires missed while the host was down", function()
      local host = H.host { name = "sched-catch-" .. policy, env = ENV, scripts = { ["tick.lua"] = tick_script(policy) } }
      host:start()
      local ok, err = pcall(function()
        wait_until("3 fires", function() return #sagas_of(host, "Tick") >= 3 end, 15)
        local last_before = 0
        for _, at in ipairs(fire_times(sagas_of(host, "Tick"))) do last_before = math.max(last_before, at) end
        -- killed right after a fire: the restart must not start that fire again
        local fired = H.count(host:log(), "schedule every: fire at")
        wait_until("the next fire", function() return H.count(host:log(), "schedule every: fire at") > fired end, 5)
        host:kill9()
        local down_at = H.now() * 1000
        H.sleep(6 * MINUTE / 1000) -- about 6 fires missed
        host:start()
        local up_at = H.now() * 1000
        wait_until("2 fires after the restart", function()
          local n = 0
          for _, s in ipairs(sagas_of(host, "Tick")) do if not s.input.missed and s.input.at > up_at then n = n + 1 end end
          return n >= 2
        end, 15)
        local list = sagas_of(host, "Tick")
        local times = fire_times(list) -- each fire time once, whatever the policy
        local missed = {}
        -- caught up at the restart (the downtime's fires); none may come from the first start
        for _, s in ipairs(list) do if s.input.missed then missed[#missed + 1] = s.input.at end end
        table.sort(missed)
        -- the gaps between fire times (a fire left out makes one)
        local gaps = {}
        for i = 2, #times do
          if times[i] - times[i - 1] ~= MINUTE then gaps[#gaps + 1] = { at = times[i], size = times[i] - times[i - 1] } end
        end
        if policy == "all" then
          -- every fire time from the first to the last, none left out, none twice
          assert.is_true(#missed >= 4, #missed .. " caught-up fires")
          assert.are.same({}, gaps)
        elseif policy == "one" then
          -- one saga for what was missed, at the newest missed fire, and the next fire follows it
          assert.are.equal(1, #missed)
          assert.are.equal(1, #gaps, cjson.encode(gaps))
          assert.are.equal(missed[1], gaps[1].at)
          assert.is_true(gaps[1].size >= 4 * MINUTE, "the caught-up fire stands for " .. gaps[1].size .. " ms")
          assert.is_true(missed[1] < up_at and missed[1] > down_at)
        else
          -- nothing for the missed fires: the first fire after the restart is the next one due
          assert.are.equal(0, #missed)
          assert.are.equal(1, #gaps, cjson.encode(gaps))
          assert.is_true(gaps[1].size >= 5 * MINUTE, "gap " .. gaps[1].size)
          assert.is_true(gaps[1].at > up_at - MINUTE, "the first fire after the restart is at " .. gaps[1].at .. ", restarted at " .. up_at)
        end
        assert.is_true(down_at > last_before)
      end)
      host:stop()
      assert(ok, err)
    end)
  end

  it("two hosts on one PostgreSQL database with the same schedule: each fire starts one saga", function()
    H.pg_only("several hosts share a database only on PostgreSQL")
    local a = H.host { name = "sched-two-a", env = ENV, host_id = "sched-a", scripts = { ["tick.lua"] = tick_script("all") } }
    local b = H.host { name = "sched-two-b", env = ENV, host_id = "sched-b", db = a.db, scripts = { ["tick.lua"] = tick_script("all") } }
    a:start()
    b:start()
    local ok, err = pcall(function()
      wait_until("12 fires", function() return #sagas_of(a, "Tick") >= 12 end, 20)
      b:kill9() -- one goes down right after a fire; the other goes on alone
      H.sleep(3 * MINUTE / 1000)
      b:start()
      H.sleep(3 * MINUTE / 1000)
      a:stop()
      b:stop()
      a:start()
      local times = fire_times(sagas_of(a, "Tick")) -- fails on a fire time started twice
      assert_consecutive(times)
      assert.is_true(#times >= 15, #times .. " fires")
      -- both hosts fired some
      local fa = H.count(a:log(), "schedule every: fire at")
      local fb = H.count(b:log(), "schedule every: fire at")
      assert.is_true(fa > 0 and fb > 0, "fires by a: " .. fa .. ", by b: " .. fb)
    end)
    a:stop()
    b:stop()
    assert(ok, err)
  end)
end)

describe("schedules in the API, the CLI and the script checks", function()
  local host
  before_each(function()
    host = H.host { name = "sched-api", env = ENV, scripts = { ["tick.lua"] = tick_script("none") } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("GET /v1/schedules and sagahost schedules show each schedule with its next and last fire", function()
    wait_until("a fire", function() return #sagas_of(host, "Tick") >= 1 end, 10)
    local code, body = host:get("/v1/schedules")
    assert.are.equal(200, code)
    assert.are.equal(1, #body.schedules)
    local c = body.schedules[1]
    assert.are.equal("every", c.name)
    assert.are.equal("*/1 * * * *", c.cron)
    assert.are.equal("Tick", c.saga)
    assert.are.equal("none", c.catch_up)
    assert.are.equal("UTC", c.timezone)
    assert.matches("tick.lua$", c.file)
    assert.are.equal(6, c.line)
    assert.is_true(ms_of(c.next_fire) > ms_of(c.last_fire))
    assert.are.equal(0, ms_of(c.next_fire) % MINUTE)
    assert.is_true(c.fires >= 1)
    local code2, out = H.cli("schedules", host.url)
    assert.are.equal(0, code2, out)
    assert.matches("NAME%s+CRON%s+SAGA", out)
    assert.matches("every%s+%*/1 %* %* %* %*%s+Tick%s+none", out)
    assert.matches("tick.lua:6", out, 1, true)
    local code3, out3 = H.cli("schedules --json", host.url)
    assert.are.equal(0, code3)
    assert.are.equal("every", cjson.decode(out3).schedules[1].name)
  end)

  it("hot reload replaces a schedule, a broken cron keeps the old one with a file:line error, removal stops it", function()
    host:script("tick.lua", tick_script("none"):gsub("%*/1 %* %* %* %*", "*/3 * * * *"))
    wait_until("the new cron", function()
      local _, body = host:get("/v1/schedules")
      return body.schedules[1] and body.schedules[1].cron == "*/3 * * * *"
    end, 10)
    host:script("tick.lua", tick_script("none"):gsub("%*/1 %* %* %* %*", "*/3 * * 13 *"))
    local err = wait_until("the load error", function()
      local _, defs = host:get("/v1/definitions")
      for _, f in ipairs(defs.files) do if f.error ~= cjson.null then return f.error end end
    end, 10)
    assert.matches("tick.lua:6: saga.schedule: every: month field '13'", err, 1, true)
    local _, body = host:get("/v1/schedules")
    assert.are.equal("*/3 * * * *", body.schedules[1].cron) -- the old version stays
    host:script("tick.lua", [[
local saga = require "saga"
saga.define { name = "Tick", steps = { { name = "Run", action = function(ctx) end } } }
]])
    wait_until("no schedule", function()
      local _, b = host:get("/v1/schedules")
      return #b.schedules == 0
    end, 10)
    local n = #sagas_of(host, "Tick")
    H.sleep(4 * MINUTE / 1000)
    assert.are.equal(n, #sagas_of(host, "Tick"))
  end)

  it("a fire whose input function fails starts nothing and says why in last_error", function()
    host:script("oops.lua", [[
local saga = require "saga"
saga.define { name = "Oops", steps = { { name = "S", action = function(ctx) end } } }
saga.schedule { name = "oops", cron = "* * * * *", saga = "Oops", input = function(fire) error("no input today") end }
]])
    local c = wait_until("the failed fire", function()
      local _, body = host:get("/v1/schedules")
      for _, x in ipairs(body.schedules) do
        if x.name == "oops" and x.last_error ~= cjson.null then return x end
      end
    end, 10)
    assert.matches("oops.lua:3: no input today", c.last_error, 1, true)
    assert.are.equal(0, c.fires)
    assert.are.equal(0, #sagas_of(host, "Oops"))
    assert.is_true(#sagas_of(host, "Tick") >= 1) -- the other schedule goes on
  end)

  it("GET /v1/schedules needs the read role when the host has --auth", function()
    host:stop()
    H.write(host.dir .. "/tokens", "rita read read-token-0123456789abcdef\n")
    host.opts.args = "--auth " .. host.dir .. "/tokens"
    host:start()
    local code = host:get("/v1/schedules")
    assert.are.equal(401, code)
    local code2, body = host:request("GET", "/v1/schedules", nil, { Authorization = "Bearer read-token-0123456789abcdef" })
    assert.are.equal(200, code2)
    assert.are.equal("every", body.schedules[1].name)
  end)

  it("sagahost check names the file:line of a bad cron, an unknown catch_up and a duplicate name", function()
    local dir = H.tmpdir("sched-check")
    H.write(dir .. "/sagas/a.lua", [[
local saga = require "saga"
saga.define { name = "A", steps = { { name = "S", action = function(ctx) end } } }

saga.schedule { name = "bad", cron = "*/5 * * *", saga = "A" }
]])
    H.write(dir .. "/sagas/b.lua", [[
local saga = require "saga"
saga.schedule { name = "b", cron = "0 2 * * *", saga = "A", catch_up = "twice" }
]])
    H.write(dir .. "/sagas/c.lua", [[
local saga = require "saga"
saga.schedule { name = "c", cron = "0 2 * * mon-fri", saga = "A" }
saga.schedule { name = "c", cron = "0 3 * * *", saga = "A" }
]])
    local code, out, errout = H.cli("check " .. dir .. "/sagas")
    out = out .. errout
    assert.are.equal(1, code)
    assert.matches("a.lua:4: saga.schedule: bad: cron expression '*/5 * * *' has 4 fields", out, 1, true)
    assert.matches("b.lua:2: saga.schedule: b: catch_up must be", out, 1, true)
    assert.matches("c.lua:3: saga.schedule: schedule 'c' is declared twice in this file", out, 1, true)
  end)
end)
