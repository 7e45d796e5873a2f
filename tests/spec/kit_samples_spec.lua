-- The testing kit (saga.testing, docs/testing.md) on the sample sagas in sagas/, the way a saga author
-- uses it: an in-process engine on a temporary store with a virtual clock, mocked participants, no
-- broker, no running host. Every case states the virtual time it covered and the real time it took.
local dir = os.getenv("SAGAHOST_MODULE_DIR") or "build"
package.cpath = dir .. "/?.so;" .. package.cpath
package.path = "lua/?.lua;" .. package.path
local testing = require "saga.testing"
local H = require "helper"

-- real seconds since t0
local function took(t0) return H.now() - t0 end

local ORDER = { order_id = "o-1", sku = "mug", qty = 2, amount = 12, card = "ok" }

local function with(t, over)
  local r = {}
  for k, v in pairs(t) do r[k] = v end
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

describe("the kit on OrderProcessing", function()
  local env
  before_each(function() env = testing.env { scripts = "sagas" } end)
  after_each(function() env:close() end)

  it("runs the happy path through the scripts' own participants", function()
    local h = env:start("OrderProcessing", ORDER)
    assert.equals("completed", h:status())
    assert.same({ "ReserveInventory:action", "ProcessPayment:action", "CreateShipment:action" }, h:trace())
    local data = h:data()
    assert.equals("r-o-1-mug", data.reservation)
    assert.equals("p-o-1", data.payment)
    assert.equals("t-o-1", data.tracking)
  end)

  it("runs the happy path against mocked participants and records what each got", function()
    env:mock("inventory", "Reserve", function(p) return { reservation_id = "R-" .. p.order_id } end)
    env:mock("payment", "Charge", function(p) return { payment_id = "P-" .. p.order_id } end)
    env:mock("shipping", "CreateShipment", { tracking = "T-1" })
    local h = env:start("OrderProcessing", ORDER)
    assert.equals("completed", h:status())
    assert.same({ reservation = "R-o-1", payment = "P-o-1", tracking = "T-1" }, h:data())
    local charges = h:calls("payment", "Charge")
    assert.equals(1, #charges)
    assert.same({ order_id = "o-1", amount = 12, card = "ok" }, charges[1].payload)
    assert.equals(h.id, charges[1].msg.saga_id)
    assert.equals(0, #h:calls("payment", "Refund"))
    assert.equals(1, #env:calls("shipping"))
  end)

  it("compensates a declined card: the payment fails for good, the reservation is released", function()
    local released = {}
    env:mock("inventory", "Release", function(p) released[#released + 1] = p.reservation_id end)
    local h = env:start("OrderProcessing", with(ORDER, { card = "declined" }))
    assert.equals("compensated", h:status())
    assert.same({ "ReserveInventory:action", "ProcessPayment:action", "ReserveInventory:compensate" }, h:trace())
    assert.same({ "r-o-1-mug" }, released)
    local pay
    for _, r in ipairs(h:history()) do
      if r.name == "ProcessPayment" and r.phase == "action" then pay = r end
    end
    assert.truthy(pay, "no ProcessPayment row in " .. require("cjson").encode(h:history()))
    assert.matches("card declined", pay.error)
    assert.equals(1, #h:calls("payment", "Charge"), "a permanent error is not retried")
  end)

  it("times a step out on the virtual clock: 30 s of a silent participant in no real time", function()
    local t0 = H.now()
    env:mock("inventory", "Reserve", testing.NO_REPLY)
    local h = env:start("OrderProcessing", ORDER)
    assert.equals("running", h:status())
    env:advance("29s")
    assert.equals("running", h:status(), "the step timeout (30s) fired before its time")
    assert.equals(1, #h:calls("inventory", "Reserve"))
    env:advance("1s")
    -- the first attempt timed out; the retry policy (3 attempts, backoff from 200ms) tries again
    env:advance("1s")
    assert.equals(2, #h:calls("inventory", "Reserve"))
    env:advance("2m")
    assert.equals("compensated", h:status())
    assert.equals(3, #h:calls("inventory", "Reserve"))
    local timed_out = 0
    for _, r in ipairs(h:history()) do
      if r.name == "ReserveInventory" and r.phase == "action" and (r.error or ""):find("tim") then timed_out = timed_out + 1 end
    end
    assert.equals(3, timed_out, require("cjson").encode(h:history()))
    local real = took(t0)
    print(string.format("# step timeout: 2m32s of virtual time in %.3f s of real time", real))
    assert.is_true(real < 10, "the kit slept in real time: " .. real .. " s")
  end)
end)

describe("the kit on WebOrder", function()
  local env
  before_each(function() env = testing.env { scripts = "sagas" } end)
  after_each(function() env:close() end)

  it("waits for the payment signal, then ships through its Delivery child", function()
    local h = env:start("WebOrder", { order_id = "w-1", sku = "mug", qty = 1 })
    assert.equals("running", h:status())
    env:advance("10m")
    assert.equals("running", h:status())
    env:signal(h, "payment_confirmed", { payment_id = "pay-1" })
    assert.equals("completed", h:status())
    assert.same({ "Reserve:action", "AwaitPayment:action", "Ship:action" }, h:trace())
    assert.equals("pay-1", h:data().payment)
    assert.equals("t-w-1", h:data().tracking)
  end)

  it("undoes an order not paid in time when the saga deadline (2h) passes on the virtual clock", function()
    local t0 = H.now()
    local release = env:mock("inventory", "Release", { released = true })
    -- the wait allows 3h, the saga's own deadline is 2h: the deadline ends it
    local h = env:start("WebOrder", { order_id = "w-2", sku = "mug", qty = 1, pay_within = "3h" })
    env:advance("119m")
    assert.equals("running", h:status())
    env:advance("2m")
    assert.equals("compensated", h:status())
    local trace = h:trace()
    assert.equals("Reserve:compensate", trace[#trace], table.concat(trace, ", "))
    assert.equals(1, #release:calls())
    assert.same({ reservation_id = "r-w-2-mug" }, release:calls()[1].payload)
    local real = took(t0)
    print(string.format("# saga deadline: 2h01m of virtual time in %.3f s of real time", real))
    assert.is_true(real < 10, "the kit slept in real time: " .. real .. " s")
  end)
end)
