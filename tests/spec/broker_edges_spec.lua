-- Broker input at the edges (issue #7): a message is a command or a reply by the queue it came from,
-- not by the exchange it was published through; a body over --max-payload is refused at its content
-- header, never read into memory, and dead-lettered by the broker.
local H = require "helper"
local cjson = require "cjson"

describe("broker input", function()
  local uid = H.uid()
  local svc = "edge_" .. uid
  local replies = "spec-replies-" .. uid
  local part
  setup(function()
    assert(H.sh("bash tests/amqp-broker.sh") == 0, "RabbitMQ is not available (tests/amqp-broker.sh failed)")
    part = H.host { name = "edge-part", amqp = true, host_id = "edge-part-" .. uid, args = "--max-payload 65536",
      scripts = { ["p.lua"] = string.format([[
local saga = require "saga"
saga.handle("%s", "Echo", function(p, msg) return { got = p, id = msg.message_id } end)
saga.handle("%s", "Big", function() return { blob = string.rep("b", 100000) } end)
saga.define { name = "CallsBig", steps = { { name = "S", retry = { attempts = 3, initial = "10ms" },
  action = function(ctx) ctx:call("%s", "Big", {}) end } } }
]], svc, svc, svc) } }
    part:start_amqp()
    H.amqp_tool("declare", replies)
  end)
  teardown(function()
    if part then part:stop() end
    pcall(H.amqp_tool, "delete", "saga.svc." .. svc, "saga.svc." .. svc .. ".dlq", replies,
      "saga.reply.edge-part-" .. uid, "saga.reply.edge-part-" .. uid .. ".dlq")
  end)

  it("handles a command sent straight to its service queue through the default exchange", function()
    H.amqp_tool("publish", "saga.svc." .. svc, cjson.encode {
      body = '{"n":7}', message_id = "direct-1", correlation_id = "direct-1", reply_to = replies, type = "Echo",
      headers = { ["saga-status"] = "ok" }, -- does not make it a reply: it came from a service queue
    })
    local r = cjson.decode(H.amqp_tool("get", replies, tostring(10 * H.slow)))
    assert.is_table(r, "no reply")
    assert.are.equal("direct-1", r.correlation_id)
    assert.are.equal("ok", r.headers["saga-status"])
    assert.are.same({ got = { n = 7 }, id = "direct-1" }, cjson.decode(r.body))
    assert.are.equal("0", H.amqp_tool("count", "saga.svc." .. svc .. ".dlq"):match("%d+"))
  end)

  it("answers a handler result over --max-payload with an error the caller sees at once", function()
    local s = part:wait(part:start_saga("CallsBig", {}), nil, 30)
    assert.are.equal("compensated", s.status)
    assert.are.equal(1, #s.steps) -- not retried: it cannot get smaller
    assert.matches(svc .. "%.Big: result too large: %d+ bytes, over the limit of 65536 bytes %(%-%-max%-payload%)", s.steps[1].error)
  end)

  it("refuses bodies over --max-payload unread, dead-letters them, and goes on serving", function()
    local pid = part.pid
    for i = 1, 2 do
      H.amqp_tool("publish", "saga.svc." .. svc, cjson.encode {
        body_size = 60 * 1024 * 1024, message_id = "big-" .. i, reply_to = replies, type = "Echo" })
    end
    -- both end in the dead-letter queue (the broker's DLX: rejected without requeue)
    local deadline = os.time() + 30 * H.slow
    local n
    repeat
      n = tonumber(H.amqp_tool("count", "saga.svc." .. svc .. ".dlq"):match("%-?%d+"))
      if n ~= 2 then H.sleep(0.2) end
    until n == 2 or os.time() > deadline
    assert.are.equal(2, n)
    assert.matches("refused: its body is 62914560 bytes, over this host's limit of 65536 bytes", part:log())
    -- never allocated: the participant's peak memory stayed far below one such body
    local status = H.read("/proc/" .. pid .. "/status")
    local hwm = tonumber(status:match("VmHWM:%s+(%d+) kB"))
    assert.is_true(hwm < 50 * 1024, "peak RSS " .. hwm .. " kB")
    -- and the next command is answered
    H.amqp_tool("publish", "saga.svc." .. svc, cjson.encode {
      body = '{"n":8}', message_id = "direct-2", reply_to = replies, type = "Echo" })
    local r = cjson.decode(H.amqp_tool("get", replies, tostring(10 * H.slow)))
    assert.is_table(r, "no reply after the refused ones")
    assert.are.same({ got = { n = 8 }, id = "direct-2" }, cjson.decode(r.body))
  end)
end)
