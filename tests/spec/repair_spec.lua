-- Repairing live sagas: upgrade (to the current version of the saga's type, with a dry run and clear
-- refusals) and terminate (stop without compensating, with a reason, role admin).
local H = require "helper"

-- v1's compensation of Reserve has a bug; v2 fixes it
local function repair_script(v, opts)
  opts = opts or {}
  return string.format([[
local saga = require "saga"
saga.define { name = "Fixable", steps = {
  { name = %q, action = function(ctx) ctx.data.reserved = true end, compensate_retry = { attempts = 1 },
    %s },
  { name = "Pay", retry = { attempts = 1 }, action = function(ctx) error("card declined") end,
    compensate = function(ctx) end },
} }
saga.define { name = "Napper", steps = {
  { name = "Nap", action = function(ctx) ctx:sleep(ctx.input.nap or "2s") ctx.data.after_nap = %q end,
    compensate = function(ctx) ctx.data.undone = true end },
  { name = "Done", action = function(ctx) ctx.data.done_by = %q end },
} }
]], opts.step or "Reserve",
    opts.no_compensate and "" or (v == "v1"
      and [[compensate = function(ctx) local x = nil; return x.missing end]]
      or [[compensate = function(ctx) ctx.data.released_by = "v2" end]]),
    v, v)
end

local function wait_version(host, v)
  local deadline = os.time() + 10 * H.slow
  while os.time() <= deadline do
    if H.count(host:log(), "replacing the previous version") >= v then return end
    H.sleep(0.1)
  end
  error("the host did not reload the script")
end

local function events(s, name)
  local out = {}
  for _, st in ipairs(s.steps) do
    if st.phase == "saga" and st.event == name then out[#out + 1] = st end
  end
  return out
end

describe("upgrade", function()
  local host
  before_each(function()
    host = H.host { name = "repair", scripts = { ["f.lua"] = repair_script("v1") } }
    host:start()
  end)
  after_each(function() host:cleanup() end)

  it("moves a compensation_failed saga to the fixed version, after a dry run that changes nothing", function()
    local id = host:start_saga("Fixable", {})
    local s = host:wait(id)
    assert.are.equal("compensation_failed", s.status)
    local v1 = s.definition_version
    host:script("f.lua", repair_script("v2"))
    wait_version(host, 1)
    -- pinned to its version, retry alone runs the buggy code again
    assert.are.equal(200, (host:post("/v1/sagas/" .. id .. "/retry", {})))
    H.sleep(0.5)
    s = host:wait(id)
    assert.are.equal("compensation_failed", s.status)
    assert.are.equal(v1, s.definition_version)
    -- the dry run says what would change and changes nothing
    local code, plan = host:post("/v1/sagas/" .. id .. "/upgrade", { dry_run = true })
    assert.are.equal(200, code)
    assert.is_true(plan.dry_run)
    assert.are.equal(v1, plan.from.version)
    assert.are_not.equal(v1, plan.to.version)
    assert.are.equal("Reserve", plan.step)
    assert.are.equal("Reserve", plan.to.steps[1].name)
    assert.are.equal(v1, host:saga(id).definition_version)
    -- the CLI's dry run too
    local rc, out = H.cli("upgrade " .. id .. " --dry-run", host.url)
    assert.are.equal(0, rc, out)
    assert.matches(plan.to.version, out, 1, true)
    -- upgrade, then retry: the fixed compensation runs
    code = host:post("/v1/sagas/" .. id .. "/upgrade", { by = "fixer" })
    assert.are.equal(200, code)
    s = host:saga(id)
    assert.are.equal(plan.to.version, s.definition_version)
    assert.are.equal("compensation_failed", s.status)
    local up = events(s, "operator_upgrade")
    assert.are.equal(1, #up)
    assert.matches("by fixer: from version " .. v1 .. " to " .. plan.to.version, up[1].error, 1, true)
    assert.are.equal(200, (host:post("/v1/sagas/" .. id .. "/retry", {})))
    s = host:wait(id, "compensated")
    assert.are.equal("v2", s.data.released_by)
    -- upgrading again: already current
    code, plan = host:post("/v1/sagas/" .. id .. "/upgrade", {})
    assert.are.equal(409, code)
  end)

  it("refuses what it cannot do, saying why", function()
    local id = host:start_saga("Fixable", {})
    assert.are.equal("compensation_failed", host:wait(id).status)
    -- already on the current version
    local code, body = host:post("/v1/sagas/" .. id .. "/upgrade", { dry_run = true })
    assert.are.equal(409, code)
    assert.matches("already runs on the current version", body.error)
    -- a renamed step
    host:script("f.lua", repair_script("v2", { step = "Hold" }))
    wait_version(host, 1)
    code, body = host:post("/v1/sagas/" .. id .. "/upgrade", { dry_run = true })
    assert.are.equal(409, code)
    assert.matches("step 1 is 'Reserve' in the saga's version .* but 'Hold' in the current version", body.error)
    code, body = host:post("/v1/sagas/" .. id .. "/upgrade", {})
    assert.are.equal(409, code)
    assert.matches("'Hold'", body.error)
    -- a removed compensation
    host:script("f.lua", repair_script("v2", { no_compensate = true }))
    wait_version(host, 2)
    code, body = host:post("/v1/sagas/" .. id .. "/upgrade", {})
    assert.are.equal(409, code)
    assert.matches("step 'Reserve' has a compensate function in the saga's version .* but none in the current", body.error)
    -- a finished saga, an unknown id, a bad body
    host:script("f.lua", repair_script("v3"))
    wait_version(host, 3)
    local done = host:start_saga("Napper", { nap = "0s" })
    assert.are.equal("completed", host:wait(done).status)
    code, body = host:post("/v1/sagas/" .. done .. "/upgrade", {})
    assert.are.equal(409, code)
    assert.matches("is completed", body.error)
    code = host:post("/v1/sagas/01a23123-0000-7000-8000-000000000000/upgrade", {})
    assert.are.equal(404, code)
    code, body = host:request("POST", "/v1/sagas/" .. id .. "/upgrade", "{not json")
    assert.are.equal(400, code)
    code, body = host:post("/v1/sagas/" .. id .. "/upgrade", { dry_run = "yes" })
    assert.are.equal(400, code)
    assert.matches("dry_run must be true or false", body.error)
    -- nothing of that changed the saga
    assert.are.equal(0, #events(host:saga(id), "operator_upgrade"))
  end)

  it("replays a saga waiting in a sleep on the new code, keeping its due time", function()
    local t0 = H.now()
    local id = host:start_saga("Napper", { nap = "3s" })
    H.sleep(0.5)
    host:script("f.lua", repair_script("v2"))
    wait_version(host, 1)
    assert.are.equal(200, (host:post("/v1/sagas/" .. id .. "/upgrade", {})))
    local s = host:wait(id, nil, 20)
    local took = H.now() - t0
    assert.are.equal("completed", s.status)
    assert.are.equal("v2", s.data.after_nap)
    assert.are.equal("v2", s.data.done_by)
    assert.is_true(took >= 2.9, "woke early: " .. took)
    assert.is_true(took < 5.5 * H.slow, "the sleep started over: " .. took)
  end)
end)

describe("terminate", function()
  local TOKENS = { operate = "operate-token-0123456789abcdef", admin = "admin-token-0123456789abcdef" }
  local host
  setup(function()
    host = H.host { name = "terminate", scripts = { ["f.lua"] = repair_script("v1") } }
    H.write(host.dir .. "/tokens", "olga operate " .. TOKENS.operate .. "\nada admin " .. TOKENS.admin .. "\n")
    host.opts.args = "--auth " .. host.dir .. "/tokens"
    host:start()
  end)
  teardown(function() host:cleanup() end)

  local function as(role) return { Authorization = "Bearer " .. TOKENS[role] } end
  local function get(id)
    local code, s = host:request("GET", "/v1/sagas/" .. id, nil, as("admin"))
    assert.are.equal(200, code)
    return s
  end
  local function start(input)
    local code, body = host:request("POST", "/v1/sagas/Napper", input, as("admin"))
    assert.are.equal(201, code)
    return body.id
  end

  it("stops a sleeping saga without compensating, recording who and why; it takes no verb after", function()
    local id = start({ nap = "30s" })
    H.sleep(0.3)
    -- operate is not enough
    local code, body = host:request("POST", "/v1/sagas/" .. id .. "/terminate", { reason = "x" }, as("operate"))
    assert.are.equal(403, code)
    assert.matches("terminate needs role admin", body.error)
    -- a reason is required
    code, body = host:request("POST", "/v1/sagas/" .. id .. "/terminate", {}, as("admin"))
    assert.are.equal(400, code)
    assert.matches("a reason is required", body.error)
    code = host:request("POST", "/v1/sagas/" .. id .. "/terminate", { reason = "duplicate order" }, as("admin"))
    assert.are.equal(200, code)
    local s = get(id)
    assert.are.equal("terminated", s.status)
    assert.is_nil(s.data.undone)
    for _, st in ipairs(s.steps) do assert.are_not.equal("compensate", st.phase) end
    local ev = events(s, "operator_terminate")
    assert.are.equal(1, #ev)
    assert.matches("by ada: duplicate order", ev[1].error, 1, true)
    assert.matches("terminated by ada: duplicate order", s.error, 1, true)
    code, body = host:request("POST", "/v1/sagas/" .. id .. "/compensate", { reason = "x" }, as("admin"))
    assert.are.equal(409, code)
    code = host:request("POST", "/v1/sagas/" .. id .. "/terminate", { reason = "again" }, as("admin"))
    assert.are.equal(409, code)
    -- the list filters by it
    code, body = host:request("GET", "/v1/sagas?status=terminated", nil, as("admin"))
    assert.are.equal(200, code)
    assert.are.equal(id, body.sagas[1].id)
  end)

  it("is a CLI verb", function()
    local id = start({ nap = "30s" })
    H.sleep(0.3)
    local rc, out = H.sh("SAGAHOST_TOKEN=" .. TOKENS.admin .. " " .. H.bin .. " terminate " .. id
      .. " --reason 'test order' --server " .. host.url)
    assert.are.equal(0, rc, out)
    assert.are.equal("terminated", get(id).status)
  end)
end)

describe("repair with several hosts", function()
  it("terminate and upgrade sent to a host that does not own the saga reach its owner", function()
    H.pg_only("several hosts share one PostgreSQL database")
    local uid = H.uid()
    local shared = H.db_for(H.tmpdir("repair-mh"), "shared.db")
    local function host(name, v)
      return H.host { name = "rmh-" .. name, host_id = "rmh-" .. name .. "-" .. uid, db = shared,
                      scripts = { ["f.lua"] = repair_script(v) } }
    end
    local B, C = host("b", "v1"), host("c", "v1")
    local ok, err = pcall(function()
      B:start()
      C:start()
      local id = C:start_saga("Napper", { nap = "60s" })
      local stop = C:start_saga("Napper", { nap = "60s" })
      H.sleep(0.5)
      -- both hosts load v2; the sagas stay with their owner C
      B:script("f.lua", repair_script("v2"))
      C:script("f.lua", repair_script("v2"))
      wait_version(B, 1)
      wait_version(C, 1)
      local code, plan = B:post("/v1/sagas/" .. id .. "/upgrade", { dry_run = true })
      assert.are.equal(200, code)
      assert.is_true(plan.dry_run)
      code = B:post("/v1/sagas/" .. id .. "/upgrade", { by = "mh" })
      assert.are.equal(200, code)
      assert.are.equal(plan.to.version, C:saga(id).definition_version)
      assert.truthy(C:log():find("upgrade from host " .. B.opts.host_id, 1, true), C:log())
      code = B:post("/v1/sagas/" .. stop .. "/terminate", { reason = "stop it", by = "mh" })
      assert.are.equal(200, code)
      local s = C:wait(stop, "terminated", 20)
      assert.are.equal("terminated", s.status)
      assert.is_nil(s.data.undone)
    end)
    B:cleanup()
    C:cleanup()
    assert(ok, err)
  end)
end)
