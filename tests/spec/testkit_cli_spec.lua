-- The commands for saga authors against the real binary: `sagahost test` (busted with the testing kit
-- and sagahost.so on the path), `sagahost new saga NAME` and `sagahost types DIR`. No host, no broker.
local H = require "helper"
local cjson = require "cjson"

local function abs(p)
  local pipe = io.popen("realpath " .. H.q(p))
  local r = pipe:read("l")
  pipe:close()
  return r
end

local bin = abs(H.bin)
-- the kit is compiled into the binary from lua/saga/testing.lua once that file exists (branch i14-core)
local kit_file = io.open("lua/saga/testing.lua")
local has_kit = kit_file ~= nil
if kit_file then kit_file:close() end
local function needs_kit()
  if not has_kit then
    pending("needs the testing kit (lua/saga/testing.lua, from branch i14-core): not in this tree yet")
    return true
  end
end

-- runs the binary in dir with a clean Lua path (what the command sets up is all the specs get)
local function sagahost(dir, args, env)
  return H.run("cd " .. H.q(dir) .. " && env -u LUA_PATH -u LUA_PATH_5_4 -u LUA_CPATH -u LUA_CPATH_5_4 " ..
    (env or "") .. " " .. H.q(bin) .. " " .. args)
end

local SAGA = [[
local saga = require "saga"
saga.define { name = "Noop", steps = { { name = "A", action = function(ctx) end } } }
]]

local function project(name)
  local d = abs(H.tmpdir(name))
  H.write(d .. "/sagas/noop.lua", SAGA)
  os.execute("mkdir -p " .. H.q(d .. "/spec"))
  return d
end

describe("sagahost test", function()
  it("runs the project's specs with the kit, sagahost.so and the script directory set up; exit status = busted's", function()
    if needs_kit() then return end
    local d = project("kt-run")
    H.write(d .. "/spec/setup_spec.lua", [[
describe("the set-up", function()
  it("gives the kit, the module and the script directory", function()
    local testing = require "saga.testing"
    assert.is_function(testing.env)
    assert.is_not_nil(testing.NO_REPLY)
    assert.is_function(require("sagahost").open)
    assert.are.equal(]] .. string.format("%q", d .. "/sagas") .. [[, os.getenv("SAGAHOST_SCRIPTS"))
  end)
end)
]])
    H.write(d .. "/spec/broken_spec.lua", [[
describe("a broken saga", function()
  it("fails here", function() assert.are.equal("completed", "compensated") end)
end)
]])
    -- both specs: one passes, one fails; the defaults are ./sagas and ./spec; the module is found next to
    -- the binary (a sanitizer build has none: there $SAGAHOST_MODULE_DIR names the release build's)
    local next_to_bin = io.open(bin:match("^(.*)/[^/]*$") .. "/sagahost.so")
    if next_to_bin then next_to_bin:close() end
    local code, out, err = sagahost(d, "test", next_to_bin and "-u SAGAHOST_MODULE_DIR" or "")
    assert.are.equal(1, code, out .. err)
    assert.matches("1 success / 1 failure", out, 1, true)
    assert.matches("spec/broken_spec.lua", out, 1, true)
    assert.matches('Expected objects to be equal.', out, 1, true)
    -- only the passing one: a spec file as SPEC_DIR, explicit SCRIPT_DIR
    code, out, err = sagahost(d, "test sagas spec/setup_spec.lua")
    assert.are.equal(0, code, out .. err)
    assert.matches("1 success / 0 failures", out, 1, true)
    -- busted's own options after --
    code, out, err = sagahost(d, "test sagas spec -- --filter=set.up")
    assert.are.equal(0, code, out .. err)
    assert.matches("1 success / 0 failures", out, 1, true)
    -- the kit's temporary directory is gone after the run
    code, out = sagahost(d, "test sagas spec/setup_spec.lua -- -o TAP", "TMPDIR=" .. H.q(d))
    assert.are.equal(0, code, out)
    local _, left = H.sh("ls -d " .. H.q(d) .. "/sagahost-test-* 2>/dev/null | wc -l")
    assert.are.equal("0", left:match("%d+"))
  end)

  it("says what is missing: the spec or script directory, busted, sagahost.so", function()
    local d = project("kt-missing")
    os.execute("rmdir " .. H.q(d .. "/spec"))
    local code, _, err = sagahost(d, "test")
    assert.are.equal(2, code)
    assert.matches("no specs: spec", err, 1, true)
    code, _, err = sagahost(d, "test nowhere spec")
    assert.are.equal(2, code)
    assert.matches("script directory", err, 1, true)
    assert.matches("nowhere", err, 1, true)
    os.execute("mkdir -p " .. H.q(d .. "/spec"))
    code, _, err = sagahost(d, "test", "PATH=/nonexistent")
    assert.are.equal(2, code)
    assert.matches("busted is not installed", err, 1, true)
    code, _, err = sagahost(d, "test", "SAGAHOST_MODULE_DIR=/nonexistent")
    assert.are.equal(2, code)
    assert.matches("sagahost.so is not in $SAGAHOST_MODULE_DIR (/nonexistent)", err, 1, true)
    -- a binary with no sagahost.so next to it says where it looked
    os.execute("mkdir -p " .. H.q(d .. "/bin") .. " && cp " .. H.q(bin) .. " " .. H.q(d .. "/bin/"))
    code, _, err = H.run("cd " .. H.q(d) .. " && env -u SAGAHOST_MODULE_DIR ./bin/sagahost test")
    assert.are.equal(2, code)
    assert.matches("sagahost.so is missing: looked for " .. d .. "/bin/sagahost.so", err, 1, true)
    code, _, err = sagahost(d, "test --verbose")
    assert.are.equal(2, code)
    assert.matches("busted's options go after --", err, 1, true)
  end)
end)

describe("sagahost new saga", function()
  it("writes the saga and its spec, which check and pass; never overwrites", function()
    local d = abs(H.tmpdir("kt-new"))
    os.execute("rmdir " .. H.q(d .. "/sagas"))
    local code, out, err = sagahost(d, "new saga BookTrip")
    assert.are.equal(0, code, err)
    assert.matches("wrote sagas/book_trip.lua", out, 1, true)
    assert.matches("wrote spec/book_trip_spec.lua", out, 1, true)
    local saga = H.read(d .. "/sagas/book_trip.lua")
    local spec = H.read(d .. "/spec/book_trip_spec.lua")
    assert.matches('name = "BookTrip"', saga, 1, true)
    assert.matches('env:start("BookTrip"', spec, 1, true)
    assert.is_nil(saga:find("{{", 1, true))
    assert.is_nil(spec:find("{{", 1, true))
    code, out = H.run(H.q(bin) .. " check " .. H.q(d .. "/sagas"))
    assert.are.equal(0, code)
    assert.matches("1 saga type(s) OK", out, 1, true)
    assert.is_nil(out:find("warning", 1, true))
    assert.are.equal(0, (H.sh("luac5.4 -p " .. H.q(d .. "/spec/book_trip_spec.lua"))))

    -- a second time: refused, nothing changed (also when only the spec exists)
    H.write(d .. "/sagas/book_trip.lua", "-- mine\n")
    code, out, err = sagahost(d, "new saga book_trip")
    assert.are.equal(1, code)
    assert.matches("sagas/book_trip.lua exists: not overwriting", err, 1, true)
    assert.are.equal("-- mine\n", H.read(d .. "/sagas/book_trip.lua"))
    os.remove(d .. "/sagas/book_trip.lua")
    code, _, err = sagahost(d, "new saga book-trip")
    assert.are.equal(1, code)
    assert.matches("spec/book_trip_spec.lua exists", err, 1, true)
    assert.is_nil(io.open(d .. "/sagas/book_trip.lua"))

    -- other directories; a name that is not one
    code, out = sagahost(d, "new saga refundOrder --script-dir s2 --spec-dir t2/unit")
    assert.are.equal(0, code)
    assert.matches('name = "RefundOrder"', H.read(d .. "/s2/refund_order.lua"), 1, true)
    assert.matches("sagahost test s2 t2/unit", H.read(d .. "/t2/unit/refund_order_spec.lua"), 1, true)
    code, _, err = sagahost(d, "new saga 'no way'")
    assert.are.equal(2, code)
    assert.matches("is not a name", err, 1, true)
    code = sagahost(d, "new flow X")
    assert.are.equal(2, code)
  end)

  it("the generated spec passes under sagahost test (happy path, compensation, a step timeout)", function()
    if needs_kit() then return end
    local d = abs(H.tmpdir("kt-gen"))
    local code, _, err = sagahost(d, "new saga BookTrip")
    assert.are.equal(0, code, err)
    local t0 = H.now()
    local out
    code, out, err = sagahost(d, "test")
    assert.are.equal(0, code, out .. err)
    assert.matches("3 successes / 0 failures / 0 errors", out, 1, true)
    -- 2 x 30 s step timeouts on the virtual clock: seconds of real time at most
    assert.is_true(H.now() - t0 < 20, "took " .. (H.now() - t0) .. " s")
  end)
end)

describe("sagahost types", function()
  it("writes annotation files that load, covering the documented saga and ctx API", function()
    local d = abs(H.tmpdir("kt-types"))
    local code, out, err = sagahost(d, "types editor/types")
    assert.are.equal(0, code, err)
    assert.matches('"workspace.library": ["editor/types"]', out, 1, true)
    local files = { "saga.lua", "json.lua", "saga/testing.lua" }
    local text = {}
    for _, f in ipairs(files) do
      local p = d .. "/editor/types/" .. f
      assert.are.equal(0, (H.sh("luac5.4 -p " .. H.q(p))), p)
      local c, o = H.sh("lua5.4 " .. H.q(p))
      assert.are.equal(0, c, o)
      text[f] = H.read(p)
      assert.matches("^%-%-%-@meta", text[f])
    end
    -- every ctx method and field of docs/lua-api.md's table, every saga.* function
    local doc = H.read("docs/lua-api.md")
    local n = 0
    for m in doc:gmatch("\n| `ctx:([%w_]+)[%({]") do
      n = n + 1
      assert.matches("function Ctx:" .. m .. "(", text["saga.lua"], 1, true)
    end
    for f in doc:gmatch("\n| `ctx%.([%w_]+)`") do
      n = n + 1
      assert.matches("---@field " .. f .. "%??%s", text["saga.lua"])
    end
    assert.is_true(n >= 20, "found only " .. n .. " ctx entries in docs/lua-api.md")
    for _, fn in ipairs { "define", "handle", "breaker", "schedule", "duration" } do
      assert.matches("function saga." .. fn .. "(", text["saga.lua"], 1, true)
    end
    for _, m in ipairs { "mock", "start", "calls", "signal", "advance", "run_until_idle", "now", "faults", "seed", "close" } do
      assert.matches("function Env:" .. m .. "(", text["saga/testing.lua"], 1, true)
    end
    for _, m in ipairs { "status", "data", "history", "trace", "calls" } do
      assert.matches("function Handle:" .. m .. "(", text["saga/testing.lua"], 1, true)
    end
    -- a second run overwrites (they are generated files); a file where the directory should be fails
    code = sagahost(d, "types editor/types")
    assert.are.equal(0, code)
    H.write(d .. "/afile", "x")
    code, _, err = sagahost(d, "types afile")
    assert.are.equal(1, code)
    assert.matches("afile", err, 1, true)
  end)

  it("sagas/.luarc.json points lua-language-server at the annotations in the tree", function()
    local rc = cjson.decode(H.read("sagas/.luarc.json"))
    assert.are.equal("Lua 5.4", rc["runtime.version"])
    for _, lib in ipairs(rc["workspace.library"]) do
      assert.is_not_nil(io.open("sagas/" .. lib .. "/saga.lua"), lib)
    end
  end)
end)
