-- The WebOrder sample (sagas/web_order.lua): waits for the payment provider's webhook (a signal), then
-- ships through a Delivery child saga; an order not paid in time is undone.
local H = require "helper"

local function sample_host()
  local scripts = {}
  for _, f in ipairs { "inventory.lua", "payment.lua", "shipping.lua", "order_processing.lua", "web_order.lua" } do
    scripts[f] = assert(H.read("sagas/" .. f), "no sagas/" .. f)
  end
  return H.host { name = "web-order", scripts = scripts }
end

local function wait_step(host, id, name)
  local deadline = os.time() + 10 * H.slow
  while os.time() <= deadline do
    local s = host:saga(id)
    if s.status == "running" and s.current_step == name then return s end
    for _, st in ipairs(s.steps) do
      if st.name == name and st.status == "running" then return s end
    end
    H.sleep(0.05)
  end
  error("saga " .. id .. " did not reach step " .. name)
end

describe("the WebOrder sample", function()
  local host
  setup(function()
    host = sample_host()
    host:start()
  end)
  teardown(function() host:cleanup() end)

  it("waits for the payment webhook, then ships through one Delivery child", function()
    local id = host:start_saga("WebOrder", { order_id = "w-1", sku = "book", qty = 1 })
    wait_step(host, id, "AwaitPayment")
    H.sleep(0.3)
    assert.are.equal("running", host:saga(id).status)
    local code, body = host:post("/v1/sagas/" .. id .. "/signals/payment_confirmed", { payment_id = "pay-1" })
    assert.are.equal(202, code)
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.equal("pay-1", s.data.payment)
    assert.are.equal("t-w-1", s.data.tracking)
    assert.are.equal(1, #s.children)
    assert.are.equal("Delivery", s.children[1].type)
    local child = host:saga(s.children[1].id)
    assert.are.equal("completed", child.status)
    assert.are.equal(id, child.parent)
  end)

  it("takes a webhook that came before the saga waited for it", function()
    local id = host:start_saga("WebOrder", { order_id = "w-2", sku = "book", qty = 1 })
    local code = host:post("/v1/sagas/" .. id .. "/signals/payment_confirmed", { payment_id = "pay-2" })
    assert.are.equal(202, code)
    local s = host:wait(id)
    assert.are.equal("completed", s.status)
    assert.are.equal("pay-2", s.data.payment)
  end)

  it("releases the reservation of an order not paid in time", function()
    local id = host:start_saga("WebOrder", { order_id = "w-3", sku = "book", qty = 1, pay_within = "400ms" })
    local s = host:wait(id)
    assert.are.equal("compensated", s.status)
    assert.are.same({ "Reserve:action:completed", "AwaitPayment:action:failed", "Reserve:compensate:completed" },
                    H.history(s))
    assert.matches("no payment confirmed within 400ms", s.error)
    assert.are.equal(0, #(s.children or {}))
  end)
end)
