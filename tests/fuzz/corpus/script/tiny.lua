local saga = require "saga"
saga.define { name = "Tiny", timeout = "1m", steps = { { name = "A", action = function(ctx) ctx.data.x = 1 end } } }
saga.handle("svc", "Do", function(p) return { ok = true } end)
saga.breaker("svc", { failure_rate = 0.5, min_calls = 5, window = "30s", open_for = "10s" })
