-- The CLI against the real HTTP API of a running host.
local H = require "helper"
local cjson = require "cjson"

describe("CLI", function()
  local host
  setup(function()
    host = H.host { name = "cli", copy = { "sagas/*.lua" }, scripts = { ["op.lua"] = [[
local saga = require "saga"
saga.define { name = "Parked", steps = {
  { name = "A", action = function(ctx) end, compensate = function(ctx) end },
  { name = "B", action = function(ctx) ctx:sleep("30s") end },
} }
]] } }
    host:start()
  end)
  teardown(function() host:stop() end)

  local good = '{"order_id":"c-1","sku":"book","qty":1,"amount":42,"card":"ok"}'
  local bad = '{"order_id":"c-2","sku":"book","qty":1,"amount":42,"card":"declined"}'

  it("start prints the id; --wait prints the saga and exits 0 when completed", function()
    local code, out = H.cli("start OrderProcessing --input " .. H.q(good), host.url)
    assert.are.equal(0, code)
    local id = out:match("^(%x+%-[%x%-]+)%s*$")
    assert.is_string(id)
    assert.are.equal("completed", host:wait(id).status)
    code, out = H.cli("start OrderProcessing --wait --input " .. H.q(good), host.url)
    assert.are.equal(0, code)
    local s = cjson.decode(out)
    assert.are.equal("completed", s.status)
    assert.are.equal("t-c-1", s.data.tracking)
  end)

  it("start --wait exits 1 when the saga compensates", function()
    local code, out = H.cli("start OrderProcessing --wait --input " .. H.q(bad), host.url)
    assert.are.equal(1, code)
    assert.are.equal("compensated", cjson.decode(out).status)
  end)

  it("start --id is idempotent", function()
    local _, a = H.cli("start OrderProcessing --id cli-key --input " .. H.q(good), host.url)
    local _, b = H.cli("start OrderProcessing --id cli-key --input " .. H.q(good), host.url)
    assert.are.equal(a, b)
  end)

  it("show and list", function()
    local _, out = H.cli("start OrderProcessing --wait --input " .. H.q(bad), host.url)
    local id = cjson.decode(out).id
    local code, shown = H.cli("show " .. id, host.url)
    assert.are.equal(0, code)
    assert.are.equal(id, cjson.decode(shown).id)
    local c2, listed = H.cli("list --status compensated", host.url)
    assert.are.equal(0, c2)
    assert.matches(id, listed, 1, true)
    assert.matches("compensated", listed)
    local c3, js = H.cli("list --status compensated --json", host.url)
    assert.are.equal(0, c3)
    for _, s in ipairs(cjson.decode(js).sagas) do assert.are.equal("compensated", s.status) end
    local c4, _, err = H.cli("show 00000000-0000-4000-8000-000000000000", host.url)
    assert.are.equal(1, c4)
    assert.matches("no saga", err)
  end)

  it("operator verbs: plan and compensate", function()
    local _, id = H.cli("start Parked", host.url)
    id = id:match("%S+")
    host:wait(id, "running")
    H.sleep(0.2)
    local code, plan = H.cli("plan " .. id, host.url)
    assert.are.equal(0, code)
    assert.are.same({ { step = 1, name = "A" } }, cjson.decode(plan).compensations)
    code = H.cli("compensate " .. id, host.url)
    assert.are.equal(2, code) -- --reason is required
    code = H.cli("compensate " .. id .. " --reason " .. H.q("test run"), host.url)
    assert.are.equal(0, code)
    assert.are.equal("compensated", host:wait(id).status)
    code, _, err = H.cli("retry " .. id, host.url)
    assert.are.equal(1, code)
    assert.matches("409", err)
  end)

  it("errors: unknown type, bad JSON, unreachable host, usage", function()
    local code, _, err = H.cli("start NoSuch --input '{}'", host.url)
    assert.are.equal(1, code)
    assert.matches("unknown saga type", err)
    code, _, err = H.cli("start OrderProcessing --input '{oops'", host.url)
    assert.are.equal(2, code)
    assert.matches("JSON", err)
    code, _, err = H.cli("list", "http://127.0.0.1:1")
    assert.are.equal(1, code)
    assert.matches("cannot reach", err)
    code, _, err = H.cli("start", host.url)
    assert.are.equal(2, code)
    code, _, err = H.cli("frobnicate")
    assert.are.equal(2, code)
    assert.matches("unknown command", err)
  end)

  it("--help and --version", function()
    local code, out = H.cli("--help")
    assert.are.equal(0, code)
    assert.matches("run %[%-%-db PATH|URL%]", out)
    assert.matches("start", out)
    code, out = H.cli("--version")
    assert.are.equal(0, code)
    assert.matches("^sagahost %d+%.%d+%.%d+", out)
  end)
end)
