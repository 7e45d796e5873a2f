-- End-to-end: an orchestrator over RabbitMQ whose database fills up while its participant is still
-- answering. The replies that arrive while the store cannot write wait unacked and are applied, in
-- order, once space returns; nothing is lost, no command is handled twice, no step completes twice.
local H = require "helper"
local cjson = require "cjson"

describe("a full disk over RabbitMQ", function()
  it("holds the replies that arrive meanwhile unacked and applies them when space returns", function()
    if H.sqlite_only then
      H.sqlite_only("it fills a tmpfs under the host's SQLite file (a PostgreSQL server's disk is not the host's)")
    end
    local uid = H.uid()
    local svc = "dfsvc_" .. uid
    local part = H.host { name = "df-part", amqp = true, host_id = "df-part-" .. uid,
      scripts = { ["p.lua"] = ([[
local saga = require "saga"
saga.handle("SVC", "Post", function(p, msg)
  print("HANDLED " .. msg.message_id)
  local t = os.clock() while os.clock() - t < 0.15 do end -- replies keep arriving after the disk fills
  return { posted = p.n, pad = string.rep("x", 1500) }
end)
]]):gsub("SVC", svc) } }
    local orch = H.host { name = "df-orch", amqp = true, host_id = "df-orch-" .. uid,
      scripts = { ["o.lua"] = ([[
local saga = require "saga"
saga.define { name = "DfAmqp", steps = {
  { name = "post", action = function(ctx) ctx.data.r = ctx:call("SVC", "Post", { n = ctx.input.n }) end,
    compensate = function(ctx) end },
  { name = "again", action = function(ctx) ctx.data.r2 = ctx:call("SVC", "Post", { n = -ctx.input.n }) end },
} }
]]):gsub("SVC", svc) } }
    local mnt = orch.dir .. "/fs"
    os.execute("mkdir -p " .. mnt)
    local rc, out = H.sh("mount -t tmpfs -o size=4m,mode=0755 tmpfs " .. H.q(mnt))
    assert(rc == 0, "this spec mounts a tmpfs (it needs root, as CI has): " .. out)
    orch.db = mnt .. "/host.db"
    local ok, err = xpcall(function()
      part:start_amqp()
      orch:start_amqp()
      local acked = {}
      for i = 1, 30 do acked[#acked + 1] = orch:start_saga("DfAmqp", { n = i, pad = string.rep("y", 3000) }) end
      H.sleep(0.3) -- commands in flight, the participant busy with them
      H.sh("dd if=/dev/zero of=" .. H.q(mnt .. "/filler") .. " bs=16k")
      H.sh("dd if=/dev/zero of=" .. H.q(mnt .. "/filler2") .. " bs=512")
      -- keep the orchestrator writing until it stalls (its own sagas' progress fills the last pages).
      -- A start whose commit is the one that fails is held with the batch: it is answered only once
      -- space returns, so its request gives up here, and its key is asked again after (below).
      local stalled, held = nil, {}
      for i = 1, 400 do
        local code = orch:get("/healthz")
        if code == 503 then stalled = true break end
        local key = "df-fill-" .. i
        local c, body = orch:post("/v1/sagas/DfAmqp", { n = 1000 + i, pad = string.rep("z", 3000) },
                                  { ["Idempotency-Key"] = key }, 5)
        if c == 201 then acked[#acked + 1] = body.id
        elseif c == nil or c == 0 then held[#held + 1] = { key = key, n = 1000 + i }
        elseif c == 503 then stalled = true break
        else error("start " .. i .. ": unexpected " .. tostring(c) .. " " .. cjson.encode(body)) end
      end
      assert.is_true(stalled, "the orchestrator's disk never filled up")
      H.sleep(2) -- replies arrive meanwhile
      assert.is_true(orch:alive(), "the orchestrator died on a full disk")
      local queues = H.rabbitmqctl("list_queues name messages_unacknowledged messages_ready")
      local unacked = tonumber(queues:match("saga%.reply%.df%-orch%-" .. uid .. "%s+(%d+)") or "0")
      print(string.format("\n  %d sagas acknowledged, %d start(s) held with the failed batch; while full, %d replies"
                          .. " wait unacked on the orchestrator's queue", #acked, #held, unacked))
      os.remove(mnt .. "/filler")
      os.remove(mnt .. "/filler2")
      local back
      for _ = 1, 60 * H.slow do
        H.sleep(0.25)
        if orch:get("/healthz") == 200 then back = true break end
      end
      assert.is_true(back, "the orchestrator did not recover after space returned")
      -- the held starts went through with their batch: asking again with the key finds the saga
      for _, h in ipairs(held) do
        local c, body = orch:post("/v1/sagas/DfAmqp", { n = h.n, pad = string.rep("z", 3000) },
                                  { ["Idempotency-Key"] = h.key })
        assert.are.equal(200, c, "the start held with the batch (" .. h.key .. ") was not committed: " .. tostring(c))
        assert.is_true(body.existing)
        acked[#acked + 1] = body.id
      end
      local all = orch:wait_all(acked, 90)
      local handled = {}
      for id in part:log():gmatch("HANDLED (%S+)") do
        assert.is_nil(handled[id], "command " .. id .. " handled twice")
        handled[id] = true
      end
      local nhandled = 0
      for _ in pairs(handled) do nhandled = nhandled + 1 end
      assert.are.equal(2 * #acked, nhandled)
      for _, id in ipairs(acked) do
        assert.are.equal("completed", all[id].status, id)
        local n = 0
        for _, h in ipairs(orch:saga(id).steps) do
          if h.status == "completed" and h.phase == "action" then n = n + 1 end
        end
        assert.are.equal(2, n, id .. ": completed steps")
      end
      local log = orch:log()
      assert.matches("store: cannot commit", log)
      assert.matches("commit succeeded after", log)
      assert.is_nil(log:find("AddressSanitizer", 1, true))
      print(string.format("  after space returned: %d sagas completed, each step once; %d commands handled once each",
                          #acked, 2 * #acked))
    end, debug.traceback)
    orch:stop()
    part:stop()
    os.execute("umount " .. H.q(mnt) .. " 2>/dev/null || umount -l " .. H.q(mnt))
    H.delete_queues({ svc }, { "df-orch-" .. uid, "df-part-" .. uid })
    assert(ok, err)
  end)
end)
