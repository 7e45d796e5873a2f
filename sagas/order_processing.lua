-- OrderProcessing: reserve stock, charge the card, ship. If a later step gives up, the earlier
-- steps are undone in reverse order (the payment is refunded, the reservation released).
local saga = require "saga"

saga.define {
  name = "OrderProcessing",
  key = "order_id", -- find it by its order: GET /v1/sagas?key=o-1, sagahost list --key o-1
  timeout = "10m",
  retry = { attempts = 3, backoff = "exponential", initial = "200ms", max = "5s", jitter = true },
  steps = {
    {
      name = "ReserveInventory",
      action = function(ctx)
        local r = ctx:call("inventory", "Reserve", { order_id = ctx.input.order_id, sku = ctx.input.sku, qty = ctx.input.qty })
        ctx.data.reservation = r.reservation_id
      end,
      compensate = function(ctx)
        ctx:call("inventory", "Release", { reservation_id = ctx.data.reservation })
      end,
      timeout = "30s",
    },
    {
      name = "ProcessPayment",
      action = function(ctx)
        local r = ctx:call("payment", "Charge", { order_id = ctx.input.order_id, amount = ctx.input.amount, card = ctx.input.card })
        ctx.data.payment = r.payment_id
      end,
      compensate = function(ctx)
        ctx:call("payment", "Refund", { payment_id = ctx.data.payment, amount = ctx.input.amount })
      end,
    },
    {
      name = "CreateShipment",
      action = function(ctx)
        local r = ctx:call("shipping", "CreateShipment", { order_id = ctx.input.order_id, sku = ctx.input.sku, qty = ctx.input.qty })
        ctx.data.tracking = r.tracking
        ctx:log("order", ctx.input.order_id, "ships as", r.tracking)
      end,
    },
  },
}
