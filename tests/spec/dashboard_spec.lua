-- End-to-end: the web dashboard (GET /, web/ embedded in the binary) in a real browser: Debian's headless
-- chromium driven by playwright-core (tests/web/dashboard.mjs, installed by `.ci/deps.sh --test`).
-- Sagas started through the API while the page is open appear live; a search by business key finds one;
-- its page shows its steps; compensate shows the plan, takes a reason and the page turns compensated by
-- itself; resolve takes a note. With --auth the page asks for a token, refuses a wrong one, keeps the
-- right one for the tab. Screenshots go to screenshots/<store>/ next to $SAGAHOST (the build tree), and
-- their paths are in the log.
local H = require "helper"
local cjson = require "cjson"

local SCRIPTS = {
  -- stays running in its last step until `wait` is over (60 s by default): time to compensate it
  ["order.lua"] = [[
local saga = require "saga"
saga.define { name = "order", key = "order_id", steps = {
  { name = "ReserveStock",
    action = function(ctx) ctx.data.reservation = "r-" .. ctx.input.order_id end,
    compensate = function(ctx) ctx.data.released = true end },
  { name = "ChargeCard",
    action = function(ctx)
      if ctx.input.card == "declined" then ctx:fail("card declined") end
      ctx.data.charge = "ch-" .. ctx.input.amount
    end,
    compensate = function(ctx) ctx.data.refunded = true end },
  { name = "AwaitShipment", action = function(ctx) ctx:sleep(ctx.input.wait or "60s") end },
} }
]],
  -- ends compensation_failed: for retry and resolve
  ["refund.lua"] = [[
local saga = require "saga"
saga.define { name = "refund", key = "order_id", compensate_retry = { attempts = 1 }, steps = {
  { name = "Reverse", action = function(ctx) end,
    compensate = function(ctx) error("the payment service refused the reversal") end },
  { name = "Notify", action = function(ctx) ctx:fail("customer unreachable") end },
} }
]],
  -- a file that does not load: the definitions page shows its error
  ["broken.lua"] = "local saga = require 'saga'\nsaga.define { name = 'broken', steps = {} \n",
}

local TOKENS = { olga = "operate-token-0123456789abcdef" }

local function abspath(p)
  local f = io.popen("realpath -m " .. H.q(p))
  local out = f:read("l")
  f:close()
  return out
end

-- screenshots in the build tree: next to the binary under test
local SHOTS = abspath((H.bin:match("^(.*)/[^/]*$") or ".") .. "/screenshots/" .. H.store)

-- runs tests/web/dashboard.mjs against host; its log goes to ours; returns exit code, RESULT and output
local function browse(host, env)
  local pw = io.open("tests/web/node_modules/playwright-core/package.json")
  assert(pw, "playwright-core is not installed in tests/web: run `bash .ci/deps.sh --test` (npm ci --prefix tests/web)")
  pw:close()
  local vars = { SG_URL = host.url, SG_SHOTS = SHOTS, SG_SLOW = tostring(H.slow),
                 SG_PREFIX = "o" .. os.time() .. "-" .. H.store }
  for k, v in pairs(env or {}) do vars[k] = v end
  local args = {}
  for k, v in pairs(vars) do args[#args + 1] = k .. "=" .. H.q(v) end
  local code, out = H.sh("cd tests/web && env " .. table.concat(args, " ") .. " node dashboard.mjs")
  io.write(out)
  io.flush()
  local json = out:match("\nRESULT ([^\n]*)") or out:match("^RESULT ([^\n]*)")
  return code, json and cjson.decode(json) or {}, out
end

-- the operator entry of a saga's history (phase "saga") for a verb
local function operator_entry(s, event)
  for _, st in ipairs(s.steps) do
    if st.phase == "saga" and st.event == event then return st end
  end
end

-- status line and headers of a response (curl -sI, or -si for a GET)
local function head(host, path, extra)
  local _, out = H.sh("curl -s -D - -o /dev/null " .. (extra or "") .. " " .. H.q(host.url .. path))
  local status = tonumber(out:match("^HTTP/%S+ (%d+)"))
  local hdrs = {}
  for k, v in out:gmatch("\n([%w-]+): ([^\r\n]*)") do hdrs[k:lower()] = v end
  return status, hdrs
end

describe("web dashboard", function()
  local host
  setup(function()
    host = H.host { name = "dashboard", scripts = SCRIPTS }
    host:start()
  end)
  teardown(function() host:stop() end)

  it("is served from the binary: index.html at /, assets under /ui/, with ETag (304), CSP, HEAD", function()
    local status, h = head(host, "/")
    assert.are.equal(200, status)
    assert.matches("^text/html", h["content-type"])
    assert.matches("default%-src 'self'", h["content-security-policy"])
    assert.are.equal("nosniff", h["x-content-type-options"])
    local code, body, text = host:get("/")
    assert.are.equal(200, code)
    assert.matches('<script type="module" src="ui/app.js">', text, 1, true)
    assert.is_nil(text:find("https?://"), "the page loads nothing from elsewhere")
    for _, f in ipairs { "app.js", "api.js", "events.js", "sagas.js", "saga.js", "info.js", "dom.js", "dialog.js" } do
      status, h = head(host, "/ui/" .. f)
      assert.are.equal(200, status, f)
      assert.matches("^text/javascript", h["content-type"], f)
      assert.matches('^"%x+"$', h["etag"], f)
      assert.are.equal(304, (head(host, "/ui/" .. f, "-H " .. H.q("If-None-Match: " .. h["etag"]))), f)
    end
    status, h = head(host, "/ui/style.css", "-I")
    assert.are.equal(200, status)
    assert.matches("^text/css", h["content-type"])
    assert.is_truthy(tonumber(h["content-length"]) > 1000)
    assert.are.equal("image/svg+xml", select(2, head(host, "/ui/favicon.svg"))["content-type"])
    code, body = host:get("/ui/nothing.js")
    assert.are.equal(404, code)
    assert.matches("no dashboard file", body.error)
    code = host:post("/", {})
    assert.are.equal(405, code)
  end)

  it("in Chromium: sagas appear live, search by key, steps, compensate with the plan and a reason", function()
    local code, r = browse(host, { SG_MODE = "open" })
    assert.are.equal(0, code, "the browser test failed (its log is above)")
    assert.are.equal(4, #r.sagas.listed)
    assert.is_true(#r.screenshots >= 8)
    for _, f in ipairs(r.screenshots) do assert.is_truthy(H.read(f), f) end
    -- what the page did is what the host has
    local s = host:saga(r.sagas.compensated)
    assert.are.equal("compensated", s.status)
    local op = operator_entry(s, "operator_compensate")
    assert.is_truthy(op, cjson.encode(s.steps))
    assert.are.equal("by webtester: " .. r.reason, op.error)
    assert.are.same({ "ReserveStock:action:completed", "ChargeCard:action:completed", "AwaitShipment:action:failed",
                      "ChargeCard:compensate:completed", "ReserveStock:compensate:completed" }, H.history(s))
    s = host:saga(r.sagas.resolved)
    assert.are.equal("resolved", s.status)
    assert.are.equal("by webtester: " .. r.note, operator_entry(s, "operator_resolve").error)
    assert.are.equal("running", host:saga(r.sagas.listed[1]).status)
  end)

  describe("with --auth", function()
    local ah
    setup(function()
      ah = H.host { name = "dashboard-auth", scripts = SCRIPTS }
      H.write(ah.dir .. "/tokens", "olga operate " .. TOKENS.olga .. "\n")
      ah.opts.args = "--auth " .. ah.dir .. "/tokens"
      ah:start()
    end)
    teardown(function() ah:stop() end)

    it("serves the page without a token, and the API only with one", function()
      assert.are.equal(200, (head(ah, "/")))
      assert.are.equal(200, (head(ah, "/ui/app.js")))
      assert.are.equal(401, (head(ah, "/v1/sagas")))
      assert.are.equal(401, (head(ah, "/ui/../v1/sagas", "--path-as-is")))
    end)

    it("in Chromium: prompts for a token, refuses a wrong one, works with the right one", function()
      local code, r = browse(ah, { SG_MODE = "auth", SG_TOKEN = TOKENS.olga })
      assert.are.equal(0, code, "the browser test failed (its log is above)")
      local _, s = ah:request("GET", "/v1/sagas/" .. r.sagas.auth_compensated, nil,
                              { Authorization = "Bearer " .. TOKENS.olga })
      assert.are.equal("compensated", s.status)
      -- the operator is the token's name, whatever the page sends
      assert.are.equal("by olga: auth run", operator_entry(s, "operator_compensate").error)
    end)
  end)
end)
