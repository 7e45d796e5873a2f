-- The shipping participant.
local saga = require "saga"

saga.handle("shipping", "CreateShipment", function(p)
  return { tracking = "t-" .. tostring(p.order_id) }
end)
