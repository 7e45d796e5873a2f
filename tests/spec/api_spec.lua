-- End-to-end: the HTTP API's answers and error cases.
local H = require "helper"

describe("HTTP API", function()
  local host
  setup(function()
    host = H.host { name = "api", copy = { "sagas/*.lua" }, args = "--max-payload 4096" }
    host:start()
  end)
  teardown(function() host:stop() end)

  local order = { order_id = "o-1", sku = "book", qty = 1, amount = 42, card = "ok" }

  it("starts a saga: 201 with its id, then GET shows it", function()
    local code, body = host:post("/v1/sagas/OrderProcessing", order)
    assert.are.equal(201, code)
    assert.matches("^%x+%-", body.id)
    local s = host:wait(body.id)
    assert.are.equal("OrderProcessing", s.type)
    assert.are.same(order, s.input)
    assert.is_string(s.definition_version)
  end)

  it("the same Idempotency-Key returns the same saga", function()
    local c1, b1 = host:post("/v1/sagas/OrderProcessing", order, { ["Idempotency-Key"] = "k-1" })
    local c2, b2 = host:post("/v1/sagas/OrderProcessing", order, { ["Idempotency-Key"] = "k-1" })
    local c3, b3 = host:post("/v1/sagas/OrderProcessing", order, { ["Idempotency-Key"] = "k-2" })
    assert.are.equal(201, c1)
    assert.are.equal(200, c2)
    assert.are.equal(b1.id, b2.id)
    assert.are.equal(201, c3)
    assert.are_not.equal(b1.id, b3.id)
  end)

  it("refuses malformed JSON with 400 and says where", function()
    local code, body = host:post("/v1/sagas/OrderProcessing", '{"order_id": ')
    assert.are.equal(400, code)
    assert.matches("malformed JSON", body.error)
    assert.matches("line 1", body.error)
  end)

  it("refuses an input that is not an object", function()
    local code, body = host:post("/v1/sagas/OrderProcessing", "[1,2]")
    assert.are.equal(400, code)
    assert.matches("object", body.error)
  end)

  it("404 for an unknown saga type and an unknown id", function()
    local code, body = host:post("/v1/sagas/NoSuchSaga", {})
    assert.are.equal(404, code)
    assert.matches("unknown saga type 'NoSuchSaga'", body.error)
    code, body = host:get("/v1/sagas/00000000-0000-4000-8000-000000000000")
    assert.are.equal(404, code)
    assert.matches("no saga", body.error)
  end)

  it("refuses a body over the limit with 413 and loses nothing already accepted", function()
    local big = { pad = string.rep("x", 8192) }
    local code, body = host:post("/v1/sagas/OrderProcessing", big)
    assert.are.equal(413, code)
    assert.is_string(body.error)
    local c2, b2 = host:get("/v1/sagas?limit=1000")
    assert.are.equal(200, c2)
    assert.is_true(#b2.sagas >= 1)
  end)

  it("404 for unknown routes, 405 for wrong methods", function()
    local code = host:get("/v2/nothing")
    assert.are.equal(404, code)
    code = host:request("DELETE", "/v1/sagas/x")
    assert.are.equal(405, code)
  end)

  it("lists sagas with filters and pages", function()
    for i = 1, 5 do host:start_saga("OrderProcessing", { order_id = "p" .. i, sku = "pen", qty = 1, amount = 1, card = i == 1 and "declined" or "ok" }) end
    H.sleep(0.5)
    local code, body = host:get("/v1/sagas?status=compensated")
    assert.are.equal(200, code)
    assert.is_true(#body.sagas >= 1)
    for _, s in ipairs(body.sagas) do assert.are.equal("compensated", s.status) end
    code, body = host:get("/v1/sagas?status=nope")
    assert.are.equal(400, code)
    -- paging: pages of 2 cover every saga exactly once
    local seen, after, pages = {}, nil, 0
    repeat
      local c, b = host:get("/v1/sagas?limit=2&type=OrderProcessing" .. (after and ("&after=" .. after) or ""))
      assert.are.equal(200, c)
      for _, s in ipairs(b.sagas) do
        assert.is_nil(seen[s.id])
        seen[s.id] = true
      end
      after = type(b.next) == "string" and b.next or nil
      pages = pages + 1
    until not after or pages > 50
    local _, all = host:get("/v1/sagas?limit=1000&type=OrderProcessing")
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.are.equal(#all.sagas, n)
    assert.is_true(pages >= 3)
  end)

  it("exposes its counters for Prometheus", function()
    local _, h = host:get("/healthz")
    local code, _, text = host:get("/metrics")
    assert.are.equal(200, code)
    assert.matches("# TYPE sagahost_sagas_started_total counter", text, 1, true)
    assert.are.equal(h.started, tonumber(text:match("\nsagahost_sagas_started_total (%d+)")))
    assert.are.equal(h.completed, tonumber(text:match('sagahost_sagas_finished_total{status="completed"} (%d+)')))
    assert.are.equal(h.compensated, tonumber(text:match('sagahost_sagas_finished_total{status="compensated"} (%d+)')))
    assert.is_true(tonumber(text:match("\nsagahost_store_commits_total (%d+)")) > 0)
  end)

  it("counts per saga type in /metrics, from what was committed", function()
    local ids = {}
    for i = 1, 4 do
      ids[i] = host:start_saga("OrderProcessing", { order_id = "m" .. i, sku = "pen", qty = 1, amount = 1,
                                                    card = i == 1 and "declined" or "ok" })
    end
    for _, id in ipairs(ids) do host:wait(id) end
    -- every saga of the type in the store was started by this host (its database is its own)
    local function count(status)
      local _, body = host:get("/v1/sagas?limit=1000&type=OrderProcessing" .. (status and ("&status=" .. status) or ""))
      return #body.sagas
    end
    local _, _, text = host:get("/metrics")
    assert.matches("# TYPE sagahost_type_started_total counter", text, 1, true)
    assert.are.equal(count(), tonumber(text:match('sagahost_type_started_total{type="OrderProcessing"} (%d+)')))
    for _, st in ipairs({ "completed", "compensated", "compensation_failed" }) do
      assert.are.equal(count(st), tonumber(text:match('sagahost_type_finished_total{type="OrderProcessing",status="' ..
                                                      st .. '"} (%d+)')), st)
    end
    assert.is_true(count("compensated") >= 1)
    -- a declined card is a failed attempt of ProcessPayment
    assert.is_true(tonumber(text:match('sagahost_type_attempts_failed_total{type="OrderProcessing"} (%d+)')) >= 1)
    -- nothing of the type is in flight any more
    local live = text:match('sagahost_type_in_flight{type="OrderProcessing"} (%d+)')
    assert.is_true(live == nil or live == "0", "in flight: " .. tostring(live))
  end)

  it("shows definitions and health", function()
    local code, body = host:get("/v1/definitions")
    assert.are.equal(200, code)
    assert.are.equal("OrderProcessing", body.definitions[1].type)
    assert.are.same({ "ReserveInventory", "ProcessPayment", "CreateShipment" }, body.definitions[1].steps)
    assert.are.same({ "inventory", "payment", "shipping" }, body.services)
    code, body = host:get("/healthz")
    assert.are.equal(200, code)
    assert.are.equal("ok", body.status)
  end)
end)
