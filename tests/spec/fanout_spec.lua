-- Fan-out: ctx:all / ctx:call_all run several durable calls of one step concurrently, each journaled
-- on its own (its own operation number and message id), so a crash re-sends none that completed.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
local function trace(msg) print("HANDLED " .. msg.message_id .. " " .. msg.service .. "." .. msg.command) end
saga.handle("hotel", "Hold", function(p, msg) trace(msg); return { hold = "h-" .. p.city } end)
saga.handle("hotel", "Release", function(p, msg) trace(msg); return {} end)
saga.handle("hotel", "Book", function(p, msg) trace(msg); return { hotel = "hotel-" .. p.city } end)
saga.handle("car", "Rent", function(p, msg) trace(msg); return { car = "car-" .. p.city } end)
saga.handle("car", "Confirm", function(p, msg) trace(msg); return { confirmed = p.car } end)
saga.handle("flight", "Book", function(p, msg)
  trace(msg)
  if p.full then error({ message = "no seats left", retryable = false }) end
  return { flight = "fl-" .. p.city }
end)

local function trip(ctx, branches)
  ctx.data.hotel, ctx.data.car, ctx.data.flight = ctx:all(branches)
end

saga.define {
  name = "Trip",
  steps = {
    { name = "Hold", action = function(ctx) ctx.data.hold = ctx:call("hotel", "Hold", { city = ctx.input.city }).hold end,
      compensate = function(ctx) ctx:call("hotel", "Release", { hold = ctx.data.hold }); ctx.data.released = true end },
    { name = "Book", retry = { attempts = 1 }, action = function(ctx)
        local city = ctx.input.city
        trip(ctx, {
          function() return ctx:call("hotel", "Book", { city = city }).hotel end,
          function() -- two calls in a row: its second one goes out in a second round
            local c = ctx:call("car", "Rent", { city = city })
            return ctx:call("car", "Confirm", { car = c.car }).confirmed
          end,
          function() return ctx:call("flight", "Book", { city = city, full = ctx.input.full }).flight end,
        })
      end },
  },
}

saga.handle("undo", "Undo", function(p, msg) print("UNDO " .. p.what .. " " .. saga.json.encode(p.result)); return {} end)
saga.define {
  name = "TripPartial",
  steps = {
    { name = "Book", retry = { attempts = 1 },
      action = function(ctx)
        ctx:call_all {
          { "hotel", "Book", { city = "Kyiv" } },
          { "flight", "Book", { city = "Kyiv", full = true } },
          { "car", "Rent", { city = "Kyiv" } },
        }
      end,
      compensate = function(ctx)
        -- the failed fan-out: ctx.journal lists the calls of it that completed
        for _, j in ipairs(ctx.journal) do
          ctx:call("undo", "Undo", { what = j.service .. "." .. j.command, result = j.result })
        end
      end },
  },
}

saga.define {
  name = "TripShort",
  steps = {
    { name = "Book", action = function(ctx)
        local h, c, f = ctx:call_all {
          { "hotel", "Book", { city = ctx.input.city } },
          { "car", "Rent", { city = ctx.input.city } },
          { "flight", "Book", { city = ctx.input.city } },
        }
        ctx.data.got = { h.hotel, c.car, f.flight }
      end },
  },
}

saga.define {
  name = "TripSettled",
  steps = {
    { name = "Book", action = function(ctx)
        local out = { ctx:all {
          function() return ctx:call("hotel", "Book", { city = "Oslo" }).hotel end,
          function() return ctx:call("flight", "Book", { city = "Oslo", full = true }).flight end,
          function() return 42 end, -- a branch need not call at all
          settle = true,
        } }
        ctx.data.outcomes = out
      end },
  },
}

saga.define {
  name = "Misuse",
  steps = {
    { name = "S", retry = { attempts = 1 }, action = function(ctx)
        ctx:all { function() ctx:sleep("1ms") end }
      end },
  },
}
saga.define {
  name = "Nested",
  steps = {
    { name = "S", retry = { attempts = 1 }, action = function(ctx)
        ctx:all { function() return ctx:all { function() return 1 end } end }
      end },
  },
}
saga.define {
  name = "NotAFunction",
  steps = {
    { name = "S", retry = { attempts = 1 }, action = function(ctx)
        ctx:all { function() return 1 end, 42 }
      end },
  },
}
]]

-- the saga of docs/lua-api.md's Fan-out example (its Pay step filled in)
local DOC_SAGA = [==[
saga.define {
  name = "Trip",
  steps = {
    { name = "Book",
      action = function(ctx)
        local trip = ctx.input
        local hotel, car, flight = ctx:all {
          function() return ctx:call("hotel", "Book", { city = trip.city, nights = trip.nights }) end,
          function() return ctx:call("car", "Rent", { city = trip.city, days = trip.nights }) end,
          function()
            local f = ctx:call("flight", "Book", { to = trip.city }, { timeout = "20s" })
            return ctx:call("flight", "Seat", { booking = f.booking, seat = trip.seat })  -- a second round
          end,
        }
        ctx.data.hotel, ctx.data.car, ctx.data.flight = hotel.booking, car.booking, flight.booking
      end,
      compensate = function(ctx)
        local b = ctx.data              -- the step completed: every booking is in ctx.data
        if ctx.partial then             -- the fan-out failed: what its completed calls booked
          b = {}
          for _, c in ipairs(ctx.journal) do
            if c.command ~= "Seat" then b[c.service] = c.result.booking end
          end
        end
        local cancels = {}
        for _, svc in ipairs { "hotel", "car", "flight" } do
          if b[svc] then cancels[#cancels + 1] = { svc, "Cancel", { booking = b[svc] } } end
        end
        ctx:call_all(cancels)           -- the cancellations, concurrently too
      end },
    { name = "Pay", action = function(ctx) if ctx.input.fail_pay then ctx:fail("card declined") end end },
  },
}
]==]

-- "HANDLED <message id> <service>.<command>" lines of the host's logs: { {id, what}, ... }
local function handled(host)
  local out = {}
  for id, what in host:log():gmatch("HANDLED (%S+) (%S+)") do out[#out + 1] = { id = id, what = what } end
  return out
end

local function count(list, what)
  local n = 0
  for _, h in ipairs(list) do if h.what == what then n = n + 1 end end
  return n
end

local function id_of(list, what)
  for _, h in ipairs(list) do if h.what == what then return h.id end end
end

describe("fan-out (in-process participants)", function()
  local host
  before_each(function()
    host = H.host { name = "fanout", scripts = { ["trip.lua"] = SCRIPT } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("ctx:all: every call succeeds, results come back in branch order, each participant got its command once", function()
    local id = host:start_saga("Trip", { city = "Rome" })
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    local d = s.data
    assert.are.equal("hotel-Rome", d.hotel)
    assert.are.equal("car-Rome", d.car)
    assert.are.equal("fl-Rome", d.flight)
    local h = handled(host)
    for _, what in ipairs { "hotel.Hold", "hotel.Book", "car.Rent", "car.Confirm", "flight.Book" } do
      assert.are.equal(1, count(h, what), what .. " handled once")
    end
    -- each call has its own operation number, in branch order, the second round after the first
    assert.matches("%.1%.a%.1%.1$", id_of(h, "hotel.Book"))
    assert.matches("%.1%.a%.1%.2$", id_of(h, "car.Rent"))
    assert.matches("%.1%.a%.1%.3$", id_of(h, "flight.Book"))
    assert.matches("%.1%.a%.1%.4$", id_of(h, "car.Confirm"))
  end)

  it("ctx:call_all is the shorthand for a list of calls", function()
    local s = host:wait(host:start_saga("TripShort", { city = "Lima" }))
    assert.are.equal("completed", s.status)
    assert.are.same({ "hotel-Lima", "car-Lima", "fl-Lima" }, s.data.got)
  end)

  it("one branch fails: the step raises 'k of n calls failed' after the others ended, and the saga compensates", function()
    local id = host:start_saga("Trip", { city = "Bern", full = true })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.matches("^1 of 3 calls failed: flight%.Book: no seats left", s.steps[2].error)
    local h = handled(host)
    -- the other branches ran to their end, the car's second round included
    assert.are.equal(1, count(h, "hotel.Book"))
    assert.are.equal(1, count(h, "car.Rent"))
    assert.are.equal(1, count(h, "car.Confirm"))
    assert.are.equal(1, count(h, "flight.Book"))
    -- not retryable (the flight said so): one attempt, then the completed step is compensated
    assert.are.same({ "Hold:action:completed", "Book:action:failed", "Hold:compensate:completed" }, H.history(s))
    assert.are.equal(1, count(h, "hotel.Release"))
  end)

  it("a failed fan-out's partial compensation sees exactly the calls that completed", function()
    local s = host:wait(host:start_saga("TripPartial", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("^1 of 3 calls failed: flight%.Book: no seats left", s.steps[1].error)
    local undone = {}
    for line in host:log():gmatch("UNDO ([^\n]+)") do undone[#undone + 1] = line end
    table.sort(undone)
    assert.are.same({ 'car.Rent {"car":"car-Kyiv"}', 'hotel.Book {"hotel":"hotel-Kyiv"}' }, undone)
  end)

  it("settle = true returns every outcome and does not raise", function()
    local s = host:wait(host:start_saga("TripSettled", {}))
    assert.are.equal("completed", s.status)
    local o = s.data.outcomes
    assert.are.equal(3, #o)
    assert.are.same({ ok = true, value = "hotel-Oslo" }, o[1])
    assert.is_false(o[2].ok)
    assert.matches("^flight%.Book: no seats left", o[2].error)
    assert.is_false(o[2].retryable)
    assert.are.same({ ok = true, value = 42 }, o[3])
  end)

  it("a branch may only make calls: another durable operation fails the step with a clear message", function()
    local s = host:wait(host:start_saga("Misuse", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("1 of 1 calls failed: .*ctx:sleep cannot be used inside a ctx:all branch", s.steps[1].error)
    s = host:wait(host:start_saga("Nested", {}))
    assert.matches("1 of 1 calls failed: .*ctx:all cannot be used inside a ctx:all branch", s.steps[1].error)
    s = host:wait(host:start_saga("NotAFunction", {}))
    assert.matches("trip%.lua:%d+: ctx:all: branch 2 must be a function %(got number%)", s.steps[1].error)
  end)
end)

-- the example of docs/lua-api.md ("Fan-out"), with participants that print what they cancel
local DOC_EXAMPLE = [==[
local saga = require "saga"
saga.handle("hotel", "Book", function(p) return { booking = "H-" .. p.city } end)
saga.handle("car", "Rent", function(p) return { booking = "C-" .. p.city } end)
saga.handle("flight", "Book", function(p) return { booking = "F-" .. p.to } end)
saga.handle("flight", "Seat", function(p)
  if p.seat == "none" then error({ message = "no seat", retryable = false }) end
  return { booking = p.booking, seat = p.seat }
end)
for _, svc in ipairs { "hotel", "car", "flight" } do
  saga.handle(svc, "Cancel", function(p) print("CANCEL " .. svc .. " " .. p.booking); return {} end)
end
]==] .. DOC_SAGA

describe("fan-out: the example of docs/lua-api.md", function()
  local host
  before_each(function()
    host = H.host { name = "fanout-doc", scripts = { ["trip.lua"] = DOC_EXAMPLE } }
    host:start()
  end)
  after_each(function() host:stop() end)

  local function cancels()
    local out = {}
    for line in host:log():gmatch("CANCEL ([^\n]+)") do out[#out + 1] = line end
    table.sort(out)
    return out
  end

  it("a later step fails: the completed fan-out is cancelled whole", function()
    local s = host:wait(host:start_saga("Trip", { city = "Oslo", nights = 2, seat = "12A", fail_pay = true }))
    assert.are.equal("compensated", s.status)
    assert.are.same({ "car C-Oslo", "flight F-Oslo", "hotel H-Oslo" }, cancels())
  end)

  it("the fan-out fails in its second round: what its completed calls booked is cancelled", function()
    local s = host:wait(host:start_saga("Trip", { city = "Oslo", nights = 2, seat = "none" }))
    assert.are.equal("compensated", s.status)
    assert.matches("1 of 3 calls failed: flight%.Seat: no seat", s.steps[1].error)
    assert.are.same({ "car C-Oslo", "flight F-Oslo", "hotel H-Oslo" }, cancels())
  end)
end)

describe("fan-out: limits and breakers apply per call", function()
  local host
  after_each(function() host:stop() end)

  it("a call over --max-payload fails the step before any call of the round goes out", function()
    host = H.host { name = "fanout-limit", args = "--max-payload 2000", scripts = { ["t.lua"] = SCRIPT .. [=[
saga.define { name = "Big", steps = {
  { name = "S", action = function(ctx)
      ctx:call_all { { "hotel", "Book", { city = "Ulm" } }, { "car", "Rent", { city = string.rep("x", 3000) } } }
    end },
} }
]=] } }
    host:start()
    local s = host:wait(host:start_saga("Big", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("ctx:all: call 2 of 2 %(car%.Rent%): payload is %d+ bytes, over the limit of 2000 bytes", s.steps[1].error)
    assert.are.same({ "S:action:failed" }, H.history(s)) -- not retryable
    assert.are.equal(0, #handled(host))
  end)

  it("a round with a call whose breaker is open waits whole, and goes out with the probe", function()
    host = H.host { name = "fanout-breaker", scripts = { ["t.lua"] = SCRIPT .. [=[
saga.breaker("flaky", { failure_rate = 0.5, min_calls = 2, window = "30s", open_for = "1s" })
local n = 0
saga.handle("flaky", "Do", function(p, msg)
  trace(msg)
  n = n + 1
  if n <= 2 then error({ message = "down", retryable = true }) end
  return { n = n }
end)
saga.define { name = "Flaky", steps = {
  { name = "S", retry = { attempts = 1 }, action = function(ctx) ctx:call("flaky", "Do", {}) end },
} }
saga.define { name = "FanFlaky", steps = {
  { name = "S", action = function(ctx)
      local h, f = ctx:call_all { { "hotel", "Book", { city = "Graz" } }, { "flaky", "Do", {} } }
      ctx.data.got = { h.hotel, f.n }
    end },
} }
]=] } }
    host:start()
    for _ = 1, 2 do assert.are.equal("compensated", host:wait(host:start_saga("Flaky", {})).status) end
    local id = host:start_saga("FanFlaky", {})
    -- parked on the open breaker: nothing of the round was sent
    local deadline = os.time() + 10 * H.slow
    local parked
    repeat
      local code, b = host:get("/v1/breakers")
      assert.are.equal(200, code)
      for _, br in ipairs(b.breakers) do if br.service == "flaky" then parked = br.parked end end
      if parked ~= 1 then H.sleep(0.05) end
    until parked == 1 or os.time() > deadline
    assert.are.equal(1, parked)
    assert.are.equal(0, count(handled(host), "hotel.Book"))
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.same({ "hotel-Graz", 3 }, s.data.got)
    assert.are.equal(1, count(handled(host), "hotel.Book"))
    assert.are.equal(3, count(handled(host), "flaky.Do"))
  end)
end)

-- FAST: a pika participant; SLOW: a queue nobody consumes but the spec itself
local AMQP_SCRIPT = [[
local saga = require "saga"
saga.define { name = "Pair", steps = {
  { name = "Both", action = function(ctx)
      local f, s = ctx:all {
        function() return ctx:call("FAST", "Echo", { n = 1 }) end,
        function() return ctx:call("SLOW", "Echo", { n = 2 }) end,
      }
      ctx.data.fast = f.echo.n
      ctx.data.slow = s.slow
    end },
} }
saga.define { name = "Timeouts", steps = {
  { name = "Calls", action = function(ctx)
      ctx.data.outcomes = { ctx:call_all {
        { "FAST", "Echo", { n = 1 } },
        { "SLOW", "Echo", { n = 2 }, { timeout = "1200ms" } },
        { "SLOW", "Echo", { n = 3 }, { timeout = "300ms" } },
        settle = true,
      } }
    end },
} }
saga.define { name = "Deadline", timeout = "1s", steps = {
  { name = "Both", action = function(ctx)
      ctx:call_all { { "FAST", "Echo", { n = 1 } }, { "SLOW", "Echo", { n = 2 } } }
    end },
} }
saga.define { name = "StepTimeout", steps = {
  { name = "Both", timeout = "1s", retry = { attempts = 2, initial = "10ms" }, action = function(ctx)
      ctx:call_all { { "FAST", "Echo", { n = 1 } }, { "SLOW", "Echo", { n = 2 } } }
    end },
} }
]]

describe("fan-out over RabbitMQ", function()
  local host, fast, uid, hid, fast_svc, slow_svc

  setup(function() H.broker_up() end)

  before_each(function()
    uid = H.uid()
    hid = "fan" .. uid
    fast_svc, slow_svc = "fast" .. uid, "slow" .. uid
    host = H.host { name = "fanout-amqp", amqp = true, host_id = hid,
      scripts = { ["f.lua"] = (AMQP_SCRIPT:gsub("FAST", fast_svc):gsub("SLOW", slow_svc)) } }
    fast = H.proc { name = "fast", dir = host.dir,
      cmd = H.python .. " " .. H.participants .. "/pika_participant.py " .. fast_svc .. " " .. H.q(H.pika_url()) }
  end)

  after_each(function()
    host:stop()
    if fast then fast:stop() end
    H.delete_queues({ fast_svc, slow_svc }, { hid })
  end)

  -- starts a Pair saga and kills the host once the fast call's reply is journaled (the slow call still
  -- out); returns the saga id and the fast command's message id
  local function pair_until_fast_answered()
    fast:start()
    fast:wait_log("READY", 30)
    host:start_amqp()
    local id = host:start_saga("Pair", {})
    -- the fast participant answers; the slow one (this spec) has not taken its command yet
    local fast_mid = fast:wait_log("HANDLED (%S+) Echo", 30)
    assert.matches("%.1$", fast_mid)
    -- the fast reply is journaled (committed) while the slow call is still out
    local deadline = os.time() + 20 * H.slow
    local q = "SELECT count(*) FROM journal WHERE saga_id = '" .. id .. "' AND done = 1"
    while H.sql(host.db, q) ~= "1" do
      assert(os.time() < deadline, "the fast reply was never journaled")
      H.sleep(0.05)
    end
    assert.are.equal("running", host:saga(id).status)
    host:kill9()
    return id, fast_mid
  end

  -- the slow participant (this spec) answers the slow command; the saga completes
  local function answer_slow_and_finish(id)
    local cmd = cjson.decode(H.amqp_tool("get", "saga.svc." .. slow_svc, tostring(20 * H.slow)))
    assert.is_table(cmd, "the slow call never reached its queue")
    assert.matches("%.2$", cmd.message_id)
    H.amqp_tool("publish", "saga.reply." .. hid, cjson.encode {
      body = '{"slow":"yes"}', correlation_id = cmd.message_id, headers = { ["saga-status"] = "ok" } })
    local s = host:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    assert.are.equal(1, s.data.fast)
    assert.are.equal("yes", s.data.slow)
  end

  it("kill -9 while one call is out: after the restart the completed call is not sent again", function()
    local id = pair_until_fast_answered()
    host:start_amqp()
    -- the slow command was re-sent after the restart under the same id (or the first one is taken)
    answer_slow_and_finish(id)
    -- the fast participant saw its command exactly once: no re-send, no redelivery
    local log = H.read(fast.curlog)
    assert.are.equal(1, H.count(log, "HANDLED "))
    assert.are.equal(0, H.count(log, "DUPLICATE"))
  end)

  it("a command answered before its publish was confirmed is not published again after a crash", function()
    local id, fast_mid = pair_until_fast_answered()
    -- the host died before the broker's confirm of the fast command was committed: its outbox row is
    -- still there (put back here, as it would be)
    local cols = "id, message_id, correlation_id, exchange, routing_key, reply_to, type, saga_id, saga_type, step, " ..
      "attempt, body, created_at"
    local vals = string.format("987654321, '%s', '%s', 'saga.commands', '%s.Echo', 'saga.reply.%s', 'Echo', '%s', " ..
      "'Pair', 0, 1, '{\"n\":1}', 0", fast_mid, fast_mid, fast_svc, hid, id)
    if H.pg then
      H.sql(host.db, "INSERT INTO outbox (" .. cols .. ", owner) SELECT " .. vals .. ", owner FROM sagas WHERE id = '" .. id .. "'")
    else
      H.sql(host.db, "INSERT INTO outbox (" .. cols .. ") VALUES (" .. vals .. ")")
    end
    host:start_amqp()
    answer_slow_and_finish(id)
    local log = H.read(fast.curlog)
    assert.are.equal(1, H.count(log, "HANDLED "))
    assert.are.equal(0, H.count(log, "DUPLICATE"))
    -- and its row is gone
    local deadline = os.time() + 10 * H.slow
    while H.sql(host.db, "SELECT count(*) FROM outbox WHERE id = 987654321") ~= "0" do
      assert(os.time() < deadline, "the answered command's outbox row stayed")
      H.sleep(0.05)
    end
  end)

  it("each call has its own timeout; the ones that time out are error outcomes", function()
    fast:start()
    fast:wait_log("READY", 30)
    host:start_amqp()
    local t0 = H.now()
    local s = host:wait(host:start_saga("Timeouts", {}), nil, 30)
    local took = H.now() - t0
    assert.are.equal("completed", s.status)
    local o = s.data.outcomes
    assert.are.equal(1, o[1].value.echo.n)
    assert.is_false(o[2].ok)
    assert.matches("timed out waiting for the reply", o[2].error)
    assert.is_false(o[3].ok)
    assert.matches("timed out waiting for the reply", o[3].error)
    -- the step went on only once the later deadline (1.2 s) had passed too
    assert.is_true(took >= 1.15, "the fan-out ended after " .. took .. " s")
  end)

  it("the step timeout ends the attempt with its calls out; the retry sends the fan-out again under new ids", function()
    fast:start()
    fast:wait_log("READY", 30)
    host:start_amqp()
    local s = host:wait(host:start_saga("StepTimeout", {}), nil, 30)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Both:action:failed", "Both:action:failed" }, H.history(s))
    assert.matches("timeout", s.steps[1].error)
    local ids = {}
    for mid in H.read(fast.curlog):gmatch("HANDLED (%S+) Echo") do ids[#ids + 1] = mid end
    assert.are.equal(2, #ids)
    assert.matches("%.1%.1$", ids[1])
    assert.matches("%.2%.1$", ids[2])
    -- the slow call was sent once per attempt (and then nothing more)
    assert.are.equal("2", H.amqp_tool("count", "saga.svc." .. slow_svc):gsub("%s+", ""))
  end)

  it("the saga deadline ends the fan-out with a call out; its late reply changes nothing", function()
    fast:start()
    fast:wait_log("READY", 30)
    host:start_amqp()
    local id = host:start_saga("Deadline", {})
    local s = host:wait(id, nil, 30)
    assert.are.equal("compensated", s.status)
    assert.matches("saga timed out", s.error)
    local cmd = cjson.decode(H.amqp_tool("get", "saga.svc." .. slow_svc, tostring(10 * H.slow)))
    H.amqp_tool("publish", "saga.reply." .. hid, cjson.encode {
      body = '{"slow":"late"}', correlation_id = cmd.message_id, headers = { ["saga-status"] = "ok" } })
    -- the late reply is taken off the reply queue and ignored
    local deadline = os.time() + 10 * H.slow
    while H.amqp_tool("count", "saga.reply." .. hid):gsub("%s+", "") ~= "0" do
      assert(os.time() < deadline, "the late reply was never consumed")
      H.sleep(0.05)
    end
    local again = host:saga(id)
    assert.are.equal("compensated", again.status)
    assert.are.same(H.history(s), H.history(again))
    assert.are.equal(1, H.count(H.read(fast.curlog), "HANDLED "))
  end)

  it("a saga whose coroutine was dropped while it waited goes on from the journal", function()
    fast:start()
    fast:wait_log("READY", 30)
    host:start_amqp()
    local id = host:start_saga("Pair", {})
    fast:wait_log("HANDLED (%S+) Echo", 30)
    -- waiting sagas keep no coroutine for long: once it is gone, the step is replayed on the last reply
    local deadline = os.time() + 20 * H.slow
    while host:healthz().coroutines ~= 0 do
      assert(os.time() < deadline, "the waiting saga's coroutine was never dropped")
      H.sleep(0.1)
    end
    local cmd = cjson.decode(H.amqp_tool("get", "saga.svc." .. slow_svc, tostring(20 * H.slow)))
    H.amqp_tool("publish", "saga.reply." .. hid, cjson.encode {
      body = '{"slow":"late"}', correlation_id = cmd.message_id, headers = { ["saga-status"] = "ok" } })
    local s = host:wait(id, nil, 30)
    assert.are.equal("completed", s.status)
    assert.are.equal(1, s.data.fast)
    assert.are.equal("late", s.data.slow)
    assert.are.equal(1, H.count(H.read(fast.curlog), "HANDLED "))
  end)
end)
