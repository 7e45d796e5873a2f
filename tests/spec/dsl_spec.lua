-- `sagahost check` and the load-time validation of saga.define / saga.handle.
local H = require "helper"

local function check(files)
  local dir = H.tmpdir("check")
  for name, src in pairs(files) do H.write(dir .. "/sagas/" .. name, src) end
  local code, out, err = H.cli("check " .. dir .. "/sagas")
  return code, out, err, dir
end

local HEAD = 'local saga = require "saga"\n'

describe("sagahost check", function()
  it("accepts the samples", function()
    local code, out = H.cli("check sagas")
    assert.are.equal(0, code)
    assert.matches("3 saga type%(s%) OK", out) -- OrderProcessing, WebOrder, Delivery
  end)

  local cases = {
    { "a step without an action", HEAD .. 'saga.define { name = "X",\n steps = { { name = "A" } } }\n',
      "x.lua:2: saga.define: saga 'X': step 1 %('A'%): 'action' must be a function" },
    { "an unknown saga key", HEAD .. 'saga.define { name = "X", stepz = {} }\n',
      "x.lua:2: saga.define: unknown key 'stepz'" },
    { "an unknown step key", HEAD .. 'saga.define { name = "X", steps = { { name = "A", action = function() end, retries = 3 } } }\n',
      "x.lua:2: .*unknown key 'retries'" },
    { "an invalid duration", HEAD .. 'saga.define { name = "X", timeout = "5 parsecs", steps = { { name = "A", action = function() end } } }\n',
      "x.lua:2: .*invalid duration '5 parsecs'" },
    { "a bad retry policy", HEAD .. 'saga.define { name = "X", retry = { attempts = 0 }, steps = { { name = "A", action = function() end } } }\n',
      "x.lua:2: .*retry.attempts must be an integer >= 1" },
    { "duplicate step names", HEAD .. 'local f = function() end\nsaga.define { name = "X", steps = { { name = "A", action = f }, { name = "A", action = f } } }\n',
      "x.lua:3: .*duplicate step name" },
    { "a saga defined twice", HEAD .. 'local f = function() end\nsaga.define { name = "X", steps = { { name = "A", action = f } } }\nsaga.define { name = "X", steps = { { name = "A", action = f } } }\n',
      "x.lua:4: .*defined twice" },
    { "no steps", HEAD .. 'saga.define { name = "X", steps = {} }\n', "x.lua:2: .*non%-empty list" },
    { "a key that is neither a field name nor a function", HEAD .. 'saga.define { name = "X", key = 42, steps = { { name = "A", action = function() end } } }\n',
      "x.lua:2: saga.define: saga 'X': 'key' must be the name of an input field or a function%(input%) returning the key %(got number%)" },
    { "a syntax error", HEAD .. 'saga.define { name = "X"\n', "x.lua:3: .*expected" },
    { "a runtime error at load", HEAD .. 'local t = nil\nprint(t.x)\n', "x.lua:3: attempt to index" },
    { "a forbidden library", HEAD .. 'io.open("/etc/passwd")\n', "x.lua:2: attempt to index a nil value %(global 'io'%)" },
    { "an unknown breaker setting", HEAD .. 'saga.breaker("svc", { failure_rate = 0.5, opens = "5s" })\n',
      "x.lua:2: saga.breaker: unknown key 'opens'" },
    { "a breaker rate out of range", HEAD .. 'saga.breaker("svc", { failure_rate = 2 })\n',
      "x.lua:2: saga.breaker: failure_rate must be a number from 0" },
    { "a handler that is not a function", HEAD .. 'saga.handle("svc", "Cmd", 42)\n', "x.lua:2: saga.handle: handler for svc.Cmd must be a function" },
  }
  for _, c in ipairs(cases) do
    it("reports " .. c[1] .. " with file:line and exits 1", function()
      local code, _, err = check { ["x.lua"] = c[2] }
      assert.are.equal(1, code)
      assert.matches(c[3], err)
    end)
  end

  it("reports a saga defined in two files", function()
    local def = HEAD .. 'saga.define { name = "Dup", steps = { { name = "A", action = function() end } } }\n'
    local code, _, err = check { ["a.lua"] = def, ["b.lua"] = def }
    assert.are.equal(1, code)
    assert.matches("b.lua:2: .*'Dup' is already defined in .*a.lua:2", err)
  end)

  it("reports every broken file, not just the first", function()
    local code, _, err = check { ["a.lua"] = "this is not lua", ["b.lua"] = "neither is this" }
    assert.are.equal(1, code)
    assert.matches("a.lua:1:", err)
    assert.matches("b.lua:1:", err)
  end)

  it("refuses bytecode", function()
    local dir = H.tmpdir("bytecode")
    H.sh("echo 'return 1' | luac5.4 -o " .. dir .. "/sagas/b.lua - 2>/dev/null || printf '\\033Lua' > " .. dir .. "/sagas/b.lua")
    local code, _, err = H.cli("check " .. dir .. "/sagas")
    assert.are.equal(1, code)
    assert.matches("b.lua", err)
  end)

  it("exits 2 with usage on a missing argument", function()
    local code, _, err = H.cli("check")
    assert.are.equal(2, code)
    assert.matches("usage", err)
  end)
end)
