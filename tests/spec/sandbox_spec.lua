-- The sandbox, tried as a hostile script author would (issue #6): every attack fails only its own
-- attempt, with an error that names the script line and the limit, while ordinary sagas finish;
-- nothing one file does changes another file's sagas or handlers.
local H = require "helper"

-- Each entry becomes a one-step saga in hostile.lua. expect: a pattern the step's error must match
-- (the saga then ends compensated), or status = "completed" with a check of its data.
local CATALOGUE = {
  -- the issue's table
  { name = "PcallLoop", body = [[while true do pcall(function() while true do end end) end]],
    expect = "hostile%.lua:%d+: CPU limit exceeded: this step attempt used %d+ ms of CPU .*%-%-lua%-step%-cpu" },
  { name = "XpcallHandlerLoop", body = [[xpcall(error, function() while true do end end)]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  { name = "GcLoop", body = [[setmetatable({}, { __gc = function() while true do end end })]],
    expect = "hostile%.lua:%d+: setmetatable: __gc metamethods are not available to saga scripts" },
  { name = "PatternExplosion", body = [[string.find(string.rep("a", 3000), string.rep("a*", 12) .. "b")]],
    expect = "hostile%.lua:%d+: string%.find: pattern too complex" },
  { name = "RawsetInput", body = [[rawset(ctx.input, "y", 2)]],
    expect = "hostile%.lua:%d+: rawset: this table is read%-only" },
  { name = "HugePrint", body = [[print(string.rep("x", 5e6)); ctx.data.printed = true]],
    status = "completed", data = { printed = true } },
  -- variants
  { name = "PatternMethod", body = [[local s = ("a"):rep(3000); s:match(("a*"):rep(12) .. "b")]],
    expect = "hostile%.lua:%d+: string%.match: pattern too complex" },
  { name = "GsubPattern", body = [[local s = ("a"):rep(3000); s:gsub(("a-"):rep(12) .. "c", "")]],
    expect = "hostile%.lua:%d+: .*pattern too complex" },
  { name = "PlainFindWorstCase", body = [[
      local s = ("a"):rep(2000000)
      ctx.data.found = s:find(("a"):rep(1000000) .. "b", 1, true) or false]],
    status = "completed", data = { found = false } },
  { name = "NestedInput", body = [[ctx.input.items[1] = "z"]],
    expect = "hostile%.lua:%d+: ctx%.input is read%-only" },
  { name = "InputMetatable", body = [[setmetatable(ctx.input, nil)]],
    expect = "hostile%.lua:%d+: cannot change a protected metatable" },
  { name = "InputMetatableRead", body = [[getmetatable(ctx.input).__newindex = nil]],
    expect = "hostile%.lua:%d+: attempt to index a boolean value" },
  { name = "StringMetatable", body = [[getmetatable("").__index.upper = nil]],
    expect = "hostile%.lua:%d+: attempt to index a nil value" },
  { name = "YieldInMetamethod", body = [[
      local t = setmetatable({}, { __index = function(_, k) ctx:sleep("10ms"); return k .. "!" end })
      ctx.data.v = t.x]],
    status = "completed", data = { v = "x!" } },
  { name = "LoopInMetamethod", body = [[local t = setmetatable({}, { __index = function() while true do end end }); return t.x]],
    expect = "hostile%.lua:%d+: CPU limit exceeded" },
  { name = "DurableThroughPcall", body = [[ctx.data.ok = pcall(ctx.sleep, ctx, "10ms")]],
    status = "completed", data = { ok = true } },
  { name = "CaughtAndRetried", body = [[
      for i = 1, 1e9 do
        local ok, e = pcall(function() while true do end end)
        if not ok then ctx.data.caught = (ctx.data.caught or 0) + 1 end
      end]],
    expect = "hostile%.lua:%d+: CPU limit exceeded" },
  { name = "ErrorTostringLoop", body = [[
      local ok, e = pcall(error, setmetatable({}, { __tostring = function() while true do end end }))
      return tostring(e)]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  { name = "ErrorIndexLoop", body = [[error(setmetatable({}, { __index = function() while true do end end }))]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  { name = "CloseLoop", body = [[do local x <close> = setmetatable({}, { __close = function() while true do end end }) end]],
    expect = "hostile%.lua:%d+: CPU limit exceeded" },
  { name = "CloseLoopOnError", body = [[
      local x <close> = setmetatable({}, { __close = function() while true do end end })
      error("boom")]], -- its __close runs while the error unwinds (preemptible in 5.4.4, or not)
    expect = { "hostile%.lua:%d+: CPU limit exceeded", "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" } },
  { name = "IndexChain", body = [[local t = {}; setmetatable(t, { __index = t }); return t.x]],
    expect = "hostile%.lua:%d+: '__index' chain too long" },
  { name = "SortComparatorLoop", body = [[table.sort({ 3, 2, 1 }, function() while true do end end)]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  { name = "GsubCallbackLoop", body = [[("abc"):gsub(".", function() while true do end end)]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  { name = "RepEmpty", body = [[ctx.data.len = #string.rep("", 1e15, "") + #(""):rep(1e15)]],
    status = "completed", data = { len = 0 } },
  { name = "RepSeparatorHuge", body = [[local s = string.rep("x", 1e9, ",")]],
    expect = "hostile%.lua:%d+: memory limit exceeded: this step attempt allocated more than 16 MB %(%-%-lua%-step%-memory" },
  { name = "ConcatHuge", body = [[
      local t = {}
      for i = 1, 1e7 do t[i] = "xxxxxxxxxx" end
      return table.concat(t)]],
    expect = "hostile%.lua:%d+: memory limit exceeded" },
  { name = "MemoryHog", body = [[local t = {}; for i = 1, 1e9 do t[i] = string.rep("x", 100000) .. i end]],
    expect = "hostile%.lua:%d+: memory limit exceeded: this step attempt allocated more than 16 MB" },
  { name = "MemoryCaught", body = [[
      for i = 1, 1e9 do pcall(function() local t = {}; for j = 1, 1e9 do t[j] = j end end) end]],
    expect = "hostile%.lua:%d+: memory limit exceeded" },
  { name = "MoveHuge", body = [[table.move({}, 1, 1e12, 2)]],
    expect = "hostile%.lua:%d+: CPU limit exceeded" },
  { name = "Utf8Codepoint", body = [[utf8.codepoint("\xff")]],
    expect = "hostile%.lua:%d+: .*invalid UTF%-8 code" },
  { name = "Utf8Codes", body = [[for _ in utf8.codes("ab\xff") do end]],
    expect = "hostile%.lua:%d+: .*invalid UTF%-8 code" },
  { name = "Utf8Len", body = [[ctx.data.len, ctx.data.at = utf8.len("ab\xffc")]],
    status = "completed", data = { at = 3 } },
  { name = "OsDateLong", body = [[os.date(string.rep("%c", 1000))]],
    expect = "hostile%.lua:%d+: os%.date: format longer than 256 characters" },
  -- coroutines the script creates: the library's semantics, the same limits, no way to reach the host's
  { name = "CoroutineGenerator", body = [[
      local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
      local co = coroutine.create(function(a) local b = coroutine.yield(a + 1); return b * 2 end)
      local _, x = coroutine.resume(co, 1)
      local _, y = coroutine.resume(co, 5)
      ctx.data.sum = gen() + gen() + gen()
      ctx.data.xy = { x, y, coroutine.status(co) }
      ctx.data.main = select(2, coroutine.running())]],
    status = "completed", data = { sum = 6, xy = { 2, 10, "dead" }, main = true } },
  { name = "CoroutineLongGenerator", body = [[ -- 220 ms inside a coroutine, 4 ms between yields: not one stretch
      local gen = coroutine.wrap(function()
        for i = 1, 55 do local t = os.clock(); while os.clock() - t < 0.004 do end; coroutine.yield(i) end
      end)
      local sum = 0
      for _ = 1, 55 do sum = sum + gen() end
      ctx.data.sum = sum]],
    status = "completed", data = { sum = 1540 } },
  { name = "CoroutineSpin", body = [[coroutine.resume(coroutine.create(function() while true do end end))]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back %(inside a coroutine the script created" },
  { name = "CoroutineCaughtSpin", body = [[
      for i = 1, 1e9 do
        local ok = coroutine.resume(coroutine.create(function() while true do pcall(function() while true do end end) end end))
      end]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  -- a ctx:all branch runs on a thread of the runtime's own: the limits follow the run into it
  { name = "BranchSpin", body = [[ctx:all({ function() while true do end end, function() return 1 end })]],
    expect = "hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
  { name = "CoroutineForgedOp", body = [[coroutine.yield("call", "evil", "Spin", "{}")]],
    expect = "hostile%.lua:%d+: coroutine%.yield: a step or handler cannot yield itself" },
  { name = "CoroutineCtxCall", body = [[coroutine.wrap(function() ctx:sleep("1ms") end)()]],
    expect = "hostile%.lua:%d+: ctx:sleep cannot be used inside a coroutine the script created" },
  { name = "CoroutineNotOurs", body = [[coroutine.close(select(1, coroutine.running()) or "x")]],
    expect = "hostile%.lua:%d+: bad argument #1 to 'close' %(coroutine expected" },
  { name = "GcLate", body = [[
      local mt = {}
      local t = setmetatable({}, mt)
      mt.__gc = function() while true do end end -- added after setmetatable: never a finalizer
      ctx.data.ok = true]],
    status = "completed", data = { ok = true } },
  { name = "HandlerSpin", body = [[ctx:call("evil", "Spin", {})]],
    expect = "evil%.Spin: .*hostile%.lua:%d+: CPU limit exceeded: this handler call used" },
  { name = "HandlerXpcall", body = [[ctx:call("evil", "Trap", {})]],
    expect = "evil%.Trap: .*hostile%.lua:%d+: ran for over 200 ms where it cannot give the loop back" },
}

local function hostile_script()
  local out = { 'local saga = require "saga"' }
  for _, c in ipairs(CATALOGUE) do
    out[#out + 1] = string.format(
      'saga.define { name = %q, steps = { { name = "S", retry = { attempts = 1 }, action = function(ctx)\n%s\nend } } }',
      c.name, c.body)
  end
  out[#out + 1] = [[
saga.handle("evil", "Spin", function() while true do pcall(function() while true do end end) end end)
saga.handle("evil", "Trap", function() xpcall(error, function() while true do end end) end)]]
  return table.concat(out, "\n")
end

-- loaded first: tampers with everything it can reach, after defining its own sagas
local TAMPER = [[
local saga = require "saga"
local json = require "json"
saga.define { name = "Hijack", steps = { { name = "S", retry = { attempts = 1 }, action = function(ctx)
  local m = getmetatable(ctx)
  local o = m.call
  m.call = function(s, a, b, p, x) p.hijacked = true; return o(s, a, b, p, x) end
end } } }
saga.define { name = "ErrMeta", steps = { { name = "S", retry = { attempts = 1 }, action = function(ctx)
  local _, e = pcall(ctx.fail, ctx, "x")
  getmetatable(e).__index = function() return false end
end } } }
saga.define = function() error("x") end
saga.handle = function() error("x") end
saga.json.encode = function() return "hijacked" end
json.decode = function() return { hijacked = true } end
string.upper = function() return "hijacked" end
table.concat = function() return "hijacked" end
math.randomseed(42)
]]

-- loaded after it: must see none of that
local VICTIM = [[
local saga = require "saga"
saga.define { name = "Victim", steps = { { name = "S", action = function(ctx)
  ctx.data.echo = ctx:call("echo", "Echo", { x = 1 })
  ctx.data.json = saga.json.encode({ a = 1 })
  ctx.data.decoded = saga.json.decode('{"b":2}').b
  ctx.data.upper = string.upper("x") .. ("y"):upper()
  ctx.data.concat = table.concat({ "a", "b" })
  math.randomseed(42) -- does nothing: the same seed in every file would make every file's numbers the same
  local a = math.random(1 << 40)
  math.randomseed(42)
  ctx.data.random_differs = math.random(1 << 40) ~= a
end } } }
saga.define { name = "Flaky", steps = { { name = "S", retry = { attempts = 2, initial = "10ms" }, action = function(ctx)
  if ctx.attempt == 1 then error("transient") end
  ctx.data.attempt = ctx.attempt
end } } }
saga.handle("echo", "Echo", function(p) return p end)
]]

local GOOD = [[
local saga = require "saga"
saga.define { name = "Good", steps = {
  { name = "A", action = function(ctx) ctx.data.a = ctx:call("work", "Do", { n = ctx.input.n }).n end },
  { name = "B", action = function(ctx) ctx:sleep("20ms"); ctx.data.b = true end },
} }
saga.handle("work", "Do", function(p) return { n = p.n } end)
]]

describe("the sandbox", function()
  local host
  setup(function()
    host = H.host { name = "sandbox", scripts = {
      ["a_tamper.lua"] = TAMPER, ["b_victim.lua"] = VICTIM, ["good.lua"] = GOOD, ["hostile.lua"] = hostile_script(),
      ["c_badload.lua"] = 'error({ code = 1 })',
      ["d_loadloop.lua"] = 'local saga = require "saga"\nwhile true do end',
      ["e_loadpcall.lua"] = 'while true do pcall(function() while true do end end) end',
    }, args = "--lua-step-cpu " .. 300 * H.slow .. "ms --lua-budget 2000000000 --lua-step-memory 16" }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("fails each attack alone with a clear error while ordinary sagas finish", function()
    local ids = {}
    for _, c in ipairs(CATALOGUE) do ids[c.name] = host:start_saga(c.name, { items = { "a", "b" } }) end
    local good = {}
    for i = 1, 40 do good[i] = host:start_saga("Good", { n = i }) end
    for i, id in ipairs(good) do
      local s = host:wait(id, nil, 60)
      assert.are.equal("completed", s.status, "Good #" .. i)
      assert.are.equal(i, s.data.a)
    end
    assert.are.equal(200, (host:get("/healthz")))
    for _, c in ipairs(CATALOGUE) do
      local s = host:wait(ids[c.name], nil, 60)
      if c.status == "completed" then
        assert.are.equal("completed", s.status, c.name .. ": " .. tostring(s.error))
        for k, v in pairs(c.data or {}) do assert.are.same(v, s.data[k], c.name .. " data." .. k) end
      else
        assert.are.equal("compensated", s.status, c.name)
        assert.is_string(s.steps[1].error, c.name)
        local expect = type(c.expect) == "table" and c.expect or { c.expect }
        local any = false
        for _, e in ipairs(expect) do any = any or s.steps[1].error:match(e) ~= nil end
        assert.is_true(any, c.name .. ": " .. s.steps[1].error .. "\ndoes not match " .. table.concat(expect, " or "))
      end
    end
  end)

  it("cuts a huge log line with a marker", function()
    local log = host:log()
    assert.matches("%[log line cut at 2048 of 50000%d%d bytes%]", log)
    for line in log:gmatch("[^\n]+") do assert.is_true(#line < 5000, "a log line of " .. #line .. " bytes") end
  end)

  it("keeps one file's tampering away from another file's sagas", function()
    -- ctx's metatable and error objects are sealed
    local s = host:wait(host:start_saga("Hijack", {}))
    assert.are.equal("compensated", s.status)
    assert.matches("a_tamper%.lua:%d+: attempt to index a boolean value", s.steps[1].error)
    s = host:wait(host:start_saga("ErrMeta", {}))
    assert.matches("a_tamper%.lua:%d+: attempt to index a boolean value", s.steps[1].error)
    -- ... so another file's calls carry their own payload, and its errors still retry
    s = host:wait(host:start_saga("Victim", {}))
    assert.are.equal("completed", s.status, tostring(s.error))
    assert.are.same({ x = 1 }, s.data.echo)
    assert.are.equal('{"a":1}', s.data.json)
    assert.are.equal(2, s.data.decoded)
    assert.are.equal("XY", s.data.upper)
    assert.are.equal("ab", s.data.concat)
    assert.is_true(s.data.random_differs)
    s = host:wait(host:start_saga("Flaky", {}))
    assert.are.equal("completed", s.status)
    assert.are.equal(2, s.data.attempt)
  end)

  it("names the file in every load error and keeps serving after a file that loops at load", function()
    local code, defs = host:get("/v1/definitions")
    assert.are.equal(200, code)
    local errs = {}
    for _, f in ipairs(defs.files) do errs[f.file:match("[^/]+$")] = type(f.error) == "string" and f.error or false end
    assert.is_false(errs["a_tamper.lua"])
    assert.is_false(errs["b_victim.lua"]) -- a_tamper's saga.define = ... did not reach it
    assert.is_false(errs["hostile.lua"])
    assert.matches("c_badload%.lua: error object is a table", errs["c_badload.lua"])
    assert.matches("d_loadloop%.lua:2: the file's top%-level code ran for over 200 ms", errs["d_loadloop.lua"])
    assert.matches("e_loadpcall%.lua:1: the file's top%-level code ran for over 200 ms", errs["e_loadpcall.lua"])
    assert.are.equal("completed", host:wait(host:start_saga("Good", { n = 1 })).status)
  end)
end)
