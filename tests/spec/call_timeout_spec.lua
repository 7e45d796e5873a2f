-- ctx:call with a timeout: a reply that never comes fails the attempt as retryable, the retries run,
-- then the saga compensates; the timeouts count against the service's circuit breaker.
local H = require "helper"

describe("ctx:call timeout over RabbitMQ", function()
  it("fails the attempt when no reply comes in time, retries, then compensates", function()
    local uid = H.uid()
    local svc = "nobody_" .. uid
    local host = H.host { name = "calltimeout", amqp = true, host_id = "calltimeout-" .. uid,
      args = "--breaker-min-calls 2 --breaker-open 1h", scripts = { ["t.lua"] = ([[
local saga = require "saga"
saga.define { name = "Waits", steps = {
  { name = "First", action = function(ctx) end, compensate = function(ctx) ctx.data.undone = true end },
  { name = "Ask", retry = { attempts = 2, initial = "50ms", backoff = "fixed" },
    action = function(ctx) ctx:call("SVC", "Answer", {}, { timeout = "300ms" }) end },
} }
]]):gsub("SVC", svc) } }
    host:start_amqp()
    local ok, err = pcall(function()
      local s = host:wait(host:start_saga("Waits", {}), nil, 20)
      assert.are.equal("compensated", s.status)
      assert.are.same({ "First:action:completed", "Ask:action:failed", "Ask:action:failed",
        "First:compensate:completed" }, H.history(s))
      assert.matches(svc .. ".Answer: timed out waiting for the reply", s.steps[2].error)
      assert.are.equal(2, s.steps[3].attempt)
      -- both timeouts counted as failures: the service's breaker is open
      local _, text = host:get("/metrics")
      assert.matches('sagahost_breaker_open{service="' .. svc .. '"} 1', text, 1, true)
    end)
    host:stop()
    H.delete_queues({ svc }, { "calltimeout-" .. uid })
    assert(ok, err)
  end)
end)
