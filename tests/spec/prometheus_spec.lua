-- End-to-end: a real Prometheus (Debian's /usr/bin/prometheus) scrapes a host's /metrics with a bearer
-- token (--auth, --auth-metrics) every second, and its query API must show what the host did: finished
-- sagas per type and status, and the step duration histograms. The spec starts its own Prometheus on a
-- free port of 127.0.0.1 with its own configuration and data directory, and stops only that one.
local H = require "helper"
local cjson = require "cjson"

local PROMETHEUS = os.getenv("SG_PROMETHEUS") or "/usr/bin/prometheus"
local READ_TOKEN = "prom-read-token-0123456789abcdef"
local ADMIN_TOKEN = "prom-admin-token-0123456789abcdef"

local SCRIPTS = {
  ["shop.lua"] = [[
local saga = require "saga"
saga.define {
  name = "PromOrder",
  steps = {
    { name = "nap", action = function(ctx) ctx:sleep("60ms") end, compensate = function(ctx) end },
    { name = "pay", action = function(ctx) if ctx.input.decline then ctx:fail("card declined") end end },
  },
}
saga.define { name = "PromPing", steps = { { name = "ping", action = function(ctx) end } } }
]],
}

-- a TCP port of 127.0.0.1 nobody listens on now
local function free_port()
  local code, out = H.sh(H.python .. [[ -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']])
  assert(code == 0, out)
  return tonumber(out:match("%d+"))
end

-- the process is gone (or a zombie nobody reaped yet)
local function gone(pid)
  local stat = H.read("/proc/" .. pid .. "/stat")
  return not stat or stat:match("^%d+ %b() (%a)") == "Z"
end

describe("a Prometheus server scraping /metrics", function()
  local host, dir, prom_pid, prom_url, prom_log

  -- GET on Prometheus's HTTP API: the decoded answer
  local function prom_get(path)
    local code, out = H.sh("curl -s -g " .. H.q(prom_url .. path))
    assert(code == 0, "curl " .. path .. ": " .. out)
    local ok, body = pcall(cjson.decode, out)
    assert(ok, "not JSON from " .. path .. ": " .. out)
    return body
  end

  -- the result vector of an instant query, as { {metric = {...}, value = number}, ... }
  local function query(q)
    local body = prom_get("/api/v1/query?query=" .. q:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
    assert(body.status == "success", "query " .. q .. ": " .. cjson.encode(body))
    local out = {}
    for _, r in ipairs(body.data.result) do out[#out + 1] = { metric = r.metric, value = tonumber(r.value[2]) } end
    return out
  end

  -- polls the query until check(result) holds; returns the last result
  local function eventually(q, check, what)
    local deadline = os.time() + 60 * H.slow
    local r
    repeat
      r = query(q)
      if check(r) then return r end
      H.sleep(0.5)
    until os.time() > deadline
    error("Prometheus never showed " .. what .. "; " .. q .. " = " .. cjson.encode(r) .. "\n" .. (H.read(prom_log) or ""))
  end

  setup(function()
    dir = H.tmpdir("prometheus")
    local tokens = dir .. "/tokens"
    H.write(tokens, "prometheus read " .. READ_TOKEN .. "\nspec admin " .. ADMIN_TOKEN .. "\n")
    host = H.host { name = "prom-host", scripts = SCRIPTS, args = "--auth " .. tokens .. " --auth-metrics",
                    curl_args = "-H " .. H.q("Authorization: Bearer " .. ADMIN_TOKEN) }
    host:start()
    local target = host.url:match("^https?://(.*)$")
    local port = free_port()
    prom_url = "http://127.0.0.1:" .. port
    -- two jobs on the same target: one with the read token, one without (refused: up = 0)
    H.write(dir .. "/prometheus.yml", table.concat({
      "global:",
      "  scrape_interval: 1s",
      "  scrape_timeout: 1s",
      "  evaluation_interval: 1s",
      "scrape_configs:",
      "  - job_name: sagahost",
      "    authorization:",
      "      type: Bearer",
      "      credentials: " .. READ_TOKEN,
      "    static_configs:",
      "      - targets: ['" .. target .. "']",
      "  - job_name: sagahost_noauth",
      "    static_configs:",
      "      - targets: ['" .. target .. "']",
      "",
    }, "\n"))
    prom_log = dir .. "/prometheus.log"
    local p = io.popen(string.format("exec %s --config.file=%s --storage.tsdb.path=%s --web.listen-address=127.0.0.1:%d" ..
      " > %s 2>&1 & echo $!", PROMETHEUS, H.q(dir .. "/prometheus.yml"), H.q(dir .. "/tsdb"), port, H.q(prom_log)))
    prom_pid = tonumber(p:read("l"))
    p:close()
    local deadline = os.time() + 30 * H.slow
    while true do
      local code, out = H.sh("curl -s -o /dev/null -w '%{http_code}' " .. prom_url .. "/-/ready")
      if code == 0 and out == "200" then break end
      assert(not gone(prom_pid), "prometheus exited at start:\n" .. (H.read(prom_log) or ""))
      assert(os.time() < deadline, "prometheus did not get ready in time:\n" .. (H.read(prom_log) or ""))
      H.sleep(0.2)
    end
  end)

  teardown(function()
    if prom_pid then -- only the Prometheus this spec started
      os.execute("kill " .. prom_pid .. " 2>/dev/null")
      local deadline = os.time() + 15
      while not gone(prom_pid) and os.time() < deadline do H.sleep(0.1) end
      if not gone(prom_pid) then os.execute("kill -9 " .. prom_pid .. " 2>/dev/null") end
    end
    if host then host:stop() end
    if dir then os.execute("rm -rf " .. H.q(dir)) end
  end)

  it("sees per-type counts equal to what the host did, and the step and commit histograms", function()
    local ids = {}
    for i = 1, 5 do ids[#ids + 1] = host:start_saga("PromOrder", { decline = i == 3 }) end
    for _ = 1, 3 do ids[#ids + 1] = host:start_saga("PromPing", {}) end
    local done = {}          -- type -> status -> sagas
    local attempts = {}      -- "type|step|phase|outcome" -> attempts in the histories
    for _, id in ipairs(ids) do
      local s = host:wait(id)
      done[s.type] = done[s.type] or {}
      done[s.type][s.status] = (done[s.type][s.status] or 0) + 1
      for _, st in ipairs(s.steps) do
        if st.phase ~= "saga" then
          local k = s.type .. "|" .. st.name .. "|" .. st.phase .. "|" .. st.status
          attempts[k] = (attempts[k] or 0) + 1
        end
      end
    end
    assert.are.same({ PromOrder = { completed = 4, compensated = 1 }, PromPing = { completed = 3 } }, done)

    -- what Prometheus stored from its scrapes: every type and status with a value, all equal to the host's
    local function finished_ok(r)
      local got = {}
      for _, x in ipairs(r) do
        if x.metric.job == "sagahost" and x.value > 0 then
          got[x.metric.type] = got[x.metric.type] or {}
          got[x.metric.type][x.metric.status] = x.value
        end
      end
      local ok = true
      for t, by in pairs(done) do
        for st, n in pairs(by) do ok = ok and got[t] ~= nil and got[t][st] == n end
      end
      for t, by in pairs(got) do
        for st, n in pairs(by) do ok = ok and done[t] ~= nil and done[t][st] == n end
      end
      return ok
    end
    eventually("sagahost_type_finished_total", finished_ok, "the finished sagas per type and status")

    -- the step histograms: _count per series as in the histories
    local r = eventually('sagahost_step_duration_seconds_count{job="sagahost"}', function(r)
      local n = 0
      for _, x in ipairs(r) do
        local m = x.metric
        if attempts[m.type .. "|" .. m.step .. "|" .. m.phase .. "|" .. m.outcome] ~= x.value then return false end
        n = n + 1
      end
      local want = 0
      for _ in pairs(attempts) do want = want + 1 end
      return n == want
    end, "one step duration series per attempt kind, counted as in the histories")
    assert.is_true(#r >= 4)

    -- the median of the nap steps (each slept 60 ms) from the buckets, as a dashboard would compute it
    local q = query('histogram_quantile(0.5, sum by (le) (sagahost_step_duration_seconds_bucket{job="sagahost",' ..
                    'type="PromOrder",step="nap",phase="action",outcome="completed"}))')
    assert.are.equal(1, #q)
    assert.is_true(q[1].value > 0.05 and q[1].value <= 1, "median nap " .. tostring(q[1].value))

    -- commits were timed, and the failing-files gauge and the transport are there
    eventually('sagahost_store_commit_duration_seconds_count{job="sagahost"}',
      function(r) return #r == 1 and r[1].value > 0 end, "timed commits")
    eventually('sagahost_transport_connected{job="sagahost",transport="local"}',
      function(r) return #r == 1 and r[1].value == 1 end, "the transport gauge")
    eventually('sagahost_script_files_failing{job="sagahost"}', function(r) return #r == 1 and r[1].value == 0 end,
      "no failing script")

    -- the scrape with the token works; the one without is refused (401)
    eventually('up{job="sagahost"}', function(r) return #r == 1 and r[1].value == 1 end, "the target up")
    eventually('up{job="sagahost_noauth"}', function(r) return #r == 1 and r[1].value == 0 end,
      "the scrape without a token refused")
    local targets = prom_get("/api/v1/targets")
    local noauth_error
    for _, t in ipairs(targets.data.activeTargets) do
      if t.labels.job == "sagahost_noauth" then noauth_error = t.lastError end
    end
    assert.matches("401", noauth_error)
  end)
end)
