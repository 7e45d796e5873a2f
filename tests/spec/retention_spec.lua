-- Retention: a finished saga leaves no journal rows; handled message ids are forgotten after
-- --inbox-retention.
local H = require "helper"

local function sql(db, q)
  local code, out = H.sh("sqlite3 " .. H.q(db) .. " " .. H.q(q))
  assert(code == 0, out)
  return (out:gsub("%s+$", ""))
end

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
