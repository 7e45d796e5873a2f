-- Poison commands: a command whose handler keeps killing its host is dead-lettered after a bounded
-- number of deliveries, with the reason in its headers, and the queue moves on.
local H = require "helper"
local cjson = require "cjson"

describe("poison command over RabbitMQ", function()
  it("is dead-lettered after 5 deliveries that each died with their host", function()
    local uid = H.uid()
    local svc = "crashy_" .. uid
    local part = H.host { name = "poison-part", amqp = true, host_id = "poison-part-" .. uid, args = "--lua-budget 2000000000 --lua-step-cpu 60s",
      scripts = { ["p.lua"] = ([[
local saga = require "saga"
saga.handle("SVC", "Work", function(p, msg)
  if p.slow then
    print("START " .. msg.message_id) -- only the poison one: the healthy command must not match below
    local t = os.clock() while os.clock() - t < 30 do end
  end
  return { ok = true }
end)
]]):gsub("SVC", svc) } }
    local orch = H.host { name = "poison-orch", amqp = true, host_id = "poison-orch-" .. uid,
      scripts = { ["o.lua"] = ([[
local saga = require "saga"
saga.define { name = "Poison", timeout = "5m", steps = {
  { name = "Call", retry = { attempts = 1 }, action = function(ctx) ctx.data.r = ctx:call("SVC", "Work", { slow = ctx.input.slow }) end },
} }
]]):gsub("SVC", svc) } }
    part:start_amqp()
    orch:start_amqp()
    local ok, err = pcall(function()
      -- a healthy command goes through
      local good = orch:wait(orch:start_saga("Poison", { slow = false }), nil, 30)
      assert.are.equal("completed", good.status)
      -- the poison one: its handler never returns, and each time its host is killed
      local id = orch:start_saga("Poison", { slow = true })
      local mid
      for _ = 1, 5 do
        mid = part:wait_log("START (%S+)", 30)
        part:kill9()
        part:start_amqp()
      end
      -- the sixth delivery is refused before the handler runs: dead-lettered with the reason
      local dl = cjson.decode(H.amqp_tool("get", "saga.svc." .. svc .. ".dlq", tostring(20 * H.slow)))
      assert.is_table(dl, "nothing in the dead-letter queue")
      assert.are.equal(mid, dl.message_id)
      assert.matches("poison message: not handled in 5 deliveries", dl.headers["x-saga-error"])
      assert.are.equal(5, H.count(part:log(), "START " .. mid))
      -- the participant keeps serving
      local after = orch:wait(orch:start_saga("Poison", { slow = false }), nil, 30)
      assert.are.equal("completed", after.status)
      assert.are.equal("running", orch:saga(id).status) -- the saga waits for its timeout (5m)
    end)
    orch:stop()
    part:stop()
    H.delete_queues({ svc }, { "poison-orch-" .. uid, "poison-part-" .. uid })
    assert(ok, err)
  end)
end)
