-- Hot reload and definition versions: new, changed, broken and removed files.
local H = require "helper"

local function versioned(v, sleep)
  return string.format([[
local saga = require "saga"
saga.define {
  name = "Ver",
  steps = {
    { name = "Wait", action = function(ctx) ctx:sleep(ctx.input.sleep or %q) end },
    { name = "Mark", action = function(ctx) ctx.data.version = %q end },
  },
}
]], sleep or "0s", v)
end

local function defs(host)
  local code, body = host:get("/v1/definitions")
  assert.are.equal(200, code)
  return body
end

local function wait_for(fn, what)
  local deadline = os.time() + 5 * H.slow
  while os.time() <= deadline do
    local r = fn()
    if r then return r end
    H.sleep(0.1)
  end
  error("timed out waiting for " .. what)
end

local function file_entry(host, name)
  for _, f in ipairs(defs(host).files) do
    if f.file:match(name .. "$") then return f end
  end
end

describe("hot reload", function()
  local host
  before_each(function()
    host = H.host { name = "reload", scripts = { ["ver.lua"] = versioned("v1") } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("loads a new file within about a second", function()
    local t0 = os.clock()
    host:script("fresh.lua", 'local saga = require "saga"\nsaga.define { name = "Fresh", steps = { { name = "S", action = function(ctx) ctx.data.ok = true end } } }\n')
    wait_for(function()
      local code = host:post("/v1/sagas/Fresh", {})
      return code == 201
    end, "Fresh to be startable")
    local _, list = host:get("/v1/sagas?type=Fresh")
    local s = host:wait(list.sagas[1].id)
    assert.are.equal("completed", s.status)
    assert.is_true(s.data.ok)
  end)

  it("a changed file: the running instance keeps its version, new ones use the new one", function()
    local old = host:start_saga("Ver", { sleep = "1500ms" })
    local v1 = file_entry(host, "ver.lua").version
    H.sleep(0.1)
    host:script("ver.lua", versioned("v2"))
    wait_for(function() return file_entry(host, "ver.lua").version ~= v1 end, "the new version")
    local new = host:start_saga("Ver", {})
    local s_new = host:wait(new)
    local s_old = host:wait(old)
    assert.are.equal("v2", s_new.data.version)
    assert.are.equal("v1", s_old.data.version)
    assert.are.equal(v1, s_old.definition_version)
    assert.are_not.equal(s_old.definition_version, s_new.definition_version)
  end)

  it("an instance finishes on its version after a restart even when the file changed meanwhile", function()
    local old = host:start_saga("Ver", { sleep = "1s" })
    host:kill9()
    host:script("ver.lua", versioned("v3"))
    host:start()
    local s = host:wait(old)
    assert.are.equal("completed", s.status)
    assert.are.equal("v1", s.data.version)
    local new = host:wait(host:start_saga("Ver", {}))
    assert.are.equal("v3", new.data.version)
  end)

  it("a broken file keeps the last good version and reports the error", function()
    local v1 = file_entry(host, "ver.lua").version
    host:script("ver.lua", 'local saga = require "saga"\nsaga.define { name = "Ver", steps = {\n')
    local f = wait_for(function()
      local e = file_entry(host, "ver.lua")
      return e.ok == false and e
    end, "the load error")
    assert.matches("ver.lua:%d+:", f.error)
    assert.are.equal(v1, f.version)
    local s = host:wait(host:start_saga("Ver", {}))
    assert.are.equal("completed", s.status)
    assert.are.equal("v1", s.data.version)
    assert.matches("ver.lua:%d+:", host:log())
    local code, _, err = H.cli("check " .. host.scripts)
    assert.are.equal(1, code)
    assert.matches("ver.lua:%d+:", err)
    -- fixing the file loads it again
    host:script("ver.lua", versioned("v4"))
    wait_for(function() return file_entry(host, "ver.lua").ok == true end, "the fixed file")
    assert.are.equal("v4", host:wait(host:start_saga("Ver", {})).data.version)
  end)

  it("a removed file stops new starts while running instances finish", function()
    local running = host:start_saga("Ver", { sleep = "1s" })
    os.remove(host.scripts .. "/ver.lua")
    wait_for(function() return file_entry(host, "ver.lua") == nil end, "the file to be dropped")
    local code, body = host:post("/v1/sagas/Ver", {})
    assert.are.equal(404, code)
    assert.matches("unknown saga type", body.error)
    local s = host:wait(running)
    assert.are.equal("completed", s.status)
    assert.are.equal("v1", s.data.version)
  end)
end)
