-- WebOrder: reserve stock, wait for the payment provider's "payment_confirmed" webhook (a signal),
-- then ship through a child saga (Delivery). An order that is not paid in time is undone: its
-- reservation is released. Send the webhook with
--   curl -X POST localhost:7070/v1/sagas/<id>/signals/payment_confirmed -d '{"payment_id": "pay-1"}'
-- or `sagahost signal <id> payment_confirmed '{"payment_id": "pay-1"}'`.
local saga = require "saga"

saga.handle("shipping", "CancelShipment", function(p)
  return { cancelled = p.tracking }
end)

-- The child: one shipment, undone if its parent order is compensated after it shipped.
saga.define {
  name = "Delivery",
  key = "order_id",
  steps = {
    {
      name = "CreateLabel",
      action = function(ctx)
        local r = ctx:call("shipping", "CreateShipment", { order_id = ctx.input.order_id, sku = ctx.input.sku, qty = ctx.input.qty })
        ctx.data.tracking = r.tracking
      end,
      compensate = function(ctx)
        local tracking = ctx.data.tracking
        if ctx.partial then tracking = ctx.journal[1].result.tracking end
        ctx:call("shipping", "CancelShipment", { tracking = tracking })
      end,
    },
  },
}

saga.define {
  name = "WebOrder",
  key = "order_id",
  timeout = "2h",
  steps = {
    {
      name = "Reserve",
      action = function(ctx)
        local r = ctx:call("inventory", "Reserve", { order_id = ctx.input.order_id, sku = ctx.input.sku, qty = ctx.input.qty })
        ctx.data.reservation = r.reservation_id
      end,
      compensate = function(ctx)
        local reservation = ctx.data.reservation
        if ctx.partial then reservation = ctx.journal[1].result.reservation_id end
        ctx:call("inventory", "Release", { reservation_id = reservation })
      end,
    },
    {
      name = "AwaitPayment",
      action = function(ctx)
        -- durable: survives restarts; a webhook that came early is kept for this wait
        local paid = ctx:wait("payment_confirmed", { timeout = ctx.input.pay_within or "30m" })
        if not paid then ctx:fail("no payment confirmed within " .. tostring(ctx.input.pay_within or "30m")) end
        ctx.data.payment = paid.payment_id
      end,
    },
    {
      name = "Ship",
      action = function(ctx)
        -- a child saga, started once (its id comes from this order), its data returned here
        local d = ctx:run("Delivery", { order_id = ctx.input.order_id, sku = ctx.input.sku, qty = ctx.input.qty },
                          { id = "delivery-" .. ctx.input.order_id })
        ctx.data.tracking = d.tracking
      end,
    },
  },
}
