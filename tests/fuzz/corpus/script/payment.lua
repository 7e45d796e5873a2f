-- The payment participant: a "declined" card fails for good (no retry), so the saga compensates.
local saga = require "saga"

saga.handle("payment", "Charge", function(p)
  if p.card == "declined" then
    error { message = "card declined", retryable = false }
  end
  if type(p.amount) ~= "number" or p.amount <= 0 then
    error { message = "amount must be a positive number", retryable = false }
  end
  return { payment_id = "p-" .. tostring(p.order_id), amount = p.amount }
end)

saga.handle("payment", "Refund", function(p)
  return { refunded = p.payment_id, amount = p.amount }
end)
