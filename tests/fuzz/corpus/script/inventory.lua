-- The inventory participant. Handlers are idempotent per message id: the host's inbox answers a
-- redelivered command with the reply it gave the first time.
local saga = require "saga"

saga.handle("inventory", "Reserve", function(p)
  if type(p.sku) ~= "string" or p.sku == "" then
    error { message = "sku is required", retryable = false }
  end
  if type(p.qty) ~= "number" or p.qty < 1 then
    error { message = "qty must be a positive number", retryable = false }
  end
  return { reservation_id = "r-" .. tostring(p.order_id) .. "-" .. p.sku, sku = p.sku, qty = p.qty }
end)

saga.handle("inventory", "Release", function(p)
  return { released = p.reservation_id }
end)
