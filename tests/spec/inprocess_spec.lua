-- In-process specs: the engine driven through the loadable module (build/sagahost.so), no HTTP.
local dir = os.getenv("SAGAHOST_MODULE_DIR") or "build"
package.cpath = dir .. "/?.so;" .. package.cpath
local sagahost = require "sagahost"
local cjson = require "cjson"
local H = require "helper"

sagahost.log_level("off")

describe("in-process engine", function()
  it("parses durations like the scripts do", function()
    assert.are.equal(250, sagahost.duration_ms("250ms"))
    assert.are.equal(30000, sagahost.duration_ms("30s"))
    assert.are.equal(300000, sagahost.duration_ms("5m"))
    assert.are.equal(3600000, sagahost.duration_ms("1h"))
    assert.are.equal(1500, sagahost.duration_ms(1.5))
    local ms, err = sagahost.duration_ms("5 parsecs")
    assert.is_nil(ms)
    assert.matches("invalid duration", err)
  end)

  it("runs sagas to their end and leaves no coroutine or registry reference behind", function()
    local d = H.tmpdir("inproc")
    os.execute("cp sagas/*.lua " .. d .. "/sagas/")
    local host = assert(sagahost.open { dir = d .. "/sagas", db = H.db_for(d, "db") })
    local ids = {}
    for i = 1, 20 do
      ids[i] = assert(host:start("OrderProcessing", cjson.encode {
        order_id = "i" .. i, sku = "mug", qty = 1, amount = 9, card = i % 2 == 0 and "declined" or "ok" }))
    end
    assert.are.equal(0, host:run(10))
    for i, id in ipairs(ids) do
      local s = host:saga(id)
      assert.are.equal(i % 2 == 0 and "compensated" or "completed", s.status)
      if i % 2 == 1 then assert.are.equal("t-i" .. i, cjson.decode(s.data).tracking) end
    end
    local st = host:stats()
    assert.are.equal(0, st.live)
    assert.are.equal(0, st.coroutines)
    assert.are.equal(0, st.refs)
    assert.are.equal(10, st.completed)
    assert.are.equal(10, st.compensated)
    assert.is_true(st.commits < 20 * 10, "group commit: " .. st.commits .. " commits for 20 sagas")
    assert.is_true(host:close(), "a watcher was left active on the host's loop")
    host:close() -- twice is harmless
  end)

  it("writes a saga answered by in-process handlers once: its start, its steps and its end in one commit", function()
    local d = H.tmpdir("inproc-once")
    os.execute("cp sagas/*.lua " .. d .. "/sagas/")
    local host = assert(sagahost.open { dir = d .. "/sagas", db = H.db_for(d, "db") })
    -- a first saga: on PostgreSQL the definitions of the loaded files go out with the first batch
    assert(host:start("OrderProcessing", cjson.encode { order_id = "once-first", sku = "mug", qty = 1, amount = 9, card = "ok" }))
    assert.are.equal(0, host:run(10))
    for _, card in ipairs { "ok", "declined" } do
      local before = host:stats().commits
      local id = assert(host:start("OrderProcessing", cjson.encode {
        order_id = "once-" .. card, sku = "mug", qty = 1, amount = 9, card = card }))
      assert.are.equal(0, host:run(10))
      local s = host:saga(id)
      assert.are.equal(card == "ok" and "completed" or "compensated", s.status)
      assert.are.equal(3, #s.steps, "steps of the " .. card .. " saga")
      -- the start, the three calls, their handlers' replies and the end: one transaction
      assert.are.equal(1, host:stats().commits - before, "commits for one saga whose card is " .. card)
    end
    host:close()
  end)

  it("a saga interrupted by a shutdown finishes after the host reopens the database", function()
    local d = H.tmpdir("inproc-reopen")
    H.write(d .. "/sagas/s.lua", [[
local saga = require "saga"
saga.define { name = "Nap", steps = {
  { name = "Sleep", action = function(ctx) ctx.data.t0 = ctx:now(); ctx:sleep("400ms") end },
  { name = "Done", action = function(ctx) ctx.data.done = true end },
} }
]])
    local host = assert(sagahost.open { dir = d .. "/sagas", db = H.db_for(d, "db") })
    local id = host:start("Nap", "{}")
    assert.are.equal(1, host:run(0.05))
    host:close()
    host = assert(sagahost.open { dir = d .. "/sagas", db = H.db_for(d, "db") })
    assert.are.equal("running", host:saga(id).status)
    assert.are.equal(0, host:run(5))
    local s = host:saga(id)
    assert.are.equal("completed", s.status)
    assert.is_true(cjson.decode(s.data).done)
    host:close()
  end)

  it("reports load errors of a directory", function()
    local d = H.tmpdir("inproc-check")
    H.write(d .. "/sagas/bad.lua", "local saga = require 'saga'\nsaga.define { name = 'X' }\n")
    local defs = cjson.decode(sagahost.check(d .. "/sagas"))
    assert.are.equal(false, defs.files[1].ok)
    assert.matches("bad.lua:2: saga.define", defs.files[1].error)
  end)
end)
