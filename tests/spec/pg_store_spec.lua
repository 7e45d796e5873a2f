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
end)
