-- Retention: a finished saga leaves no journal rows; handled message ids are forgotten after
-- --inbox-retention.
local H = require "helper"

local sql = H.sql -- sqlite3 or psql, whichever store the host runs on

describe("retention", function()
  local host
  setup(function()
    host = H.host { name = "retention", args = "--inbox-retention 2s", scripts = { ["r.lua"] = [[
local saga = require "saga"
saga.define { name = "Journaled", steps = {
  { name = "S", action = function(ctx)
      ctx.data.t = ctx:now()
      ctx:sleep("300ms")            -- the attempt outlives a commit: its journal is written
      ctx:send("audit", "Note", { id = ctx.id })
    end },
} }
saga.handle("audit", "Note", function(p) print("noted " .. p.id) end)
]] } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("deletes a saga's journal when it finishes and forgets old message ids", function()
    local id = host:start_saga("Journaled", {})
    H.sleep(0.15)
    assert.is_true(tonumber(sql(host.db, "select count(*) from journal where saga_id = '" .. id .. "'")) > 0)
    assert.are.equal("completed", host:wait(id).status)
    H.sleep(0.3)
    assert.are.equal("0", sql(host.db, "select count(*) from journal where saga_id = '" .. id .. "'"))
    assert.are.equal(1, H.count(host:log(), "noted " .. id))
    assert.are.equal("1", sql(host.db, "select count(*) from inbox where message_id like '" .. id .. "%'"))
    H.sleep(3.5 * H.slow)
    assert.are.equal("0", sql(host.db, "select count(*) from inbox where message_id like '" .. id .. "%'"))
  end)
end)

describe("saga retention", function()
  local host
  setup(function()
    host = H.host { name = "retention2", args = "--retention 1s", scripts = { ["r.lua"] = [[
local saga = require "saga"
saga.define { name = "Quick", compensate_retry = { attempts = 1 }, steps = {
  { name = "A", action = function(ctx) end, compensate = function(ctx) if ctx.input.stuck then error("cannot undo") end end },
  { name = "B", action = function(ctx) if ctx.input.fail then ctx:fail("no") end end },
} }
]] } }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("removes finished sagas after --retention and keeps the ones operators must see", function()
    local done = host:start_saga("Quick", {})
    local stuck = host:start_saga("Quick", { fail = true, stuck = true })
    assert.are.equal("completed", host:wait(done).status)
    assert.are.equal("compensation_failed", host:wait(stuck).status)
    local deadline = os.time() + 10 * H.slow
    local code
    repeat
      H.sleep(0.25)
      code = host:get("/v1/sagas/" .. done)
    until code == 404 or os.time() > deadline
    assert.are.equal(404, code)
    assert.are.equal("0", sql(host.db, "select count(*) from history where saga_id = '" .. done .. "'"))
    assert.are.equal("compensation_failed", host:saga(stuck).status)
    assert.matches("saga retention: 1 finished saga", host:log())
  end)
end)
