-- End-to-end: who may do what on the HTTP API (--auth), the loopback-only default (--insecure), the
-- CLI's SAGAHOST_TOKEN, and HTTPS (--tls-cert/--tls-key).
local H = require "helper"

local TOKENS = {
  read = "read-token-0123456789abcdef",
  start = "start-token-0123456789abcdef",
  operate = "operate-token-0123456789abcdef",
  admin = "admin-token-0123456789abcdef",
}
local NAMES = { read = "rita", start = "sam", operate = "olga", admin = "ada" }

local function auth_file(dir)
  local lines = { "# name role token", "" }
  for _, role in ipairs { "read", "start", "operate", "admin" } do
    lines[#lines + 1] = string.format("%s %s %s   # %s", NAMES[role], role, TOKENS[role], role)
  end
  local path = dir .. "/tokens"
  H.write(path, table.concat(lines, "\n") .. "\n")
  return path
end

local function bearer(token) return token and { Authorization = "Bearer " .. token } or nil end

-- Host:wait reads without a token: this one reads as admin
local terminal = { completed = true, compensated = true, compensation_failed = true }
local function wait(host, id, status)
  local deadline = os.time() + 20 * H.slow
  local s
  repeat
    local code
    code, s = host:request("GET", "/v1/sagas/" .. id, nil, bearer(TOKENS.admin))
    assert(code == 200, "GET saga " .. id .. ": " .. tostring(code))
    if (status and s.status == status) or (not status and terminal[s.status]) then return s end
    H.sleep(0.05)
  until os.time() > deadline
  error("saga " .. id .. " is still " .. tostring(s.status))
end

-- a saga that stays running (for compensate) and one that completes at once
local SCRIPTS = {
  ["slow.lua"] = [[
local saga = require "saga"
saga.define { name = "Slow", steps = {
  { name = "A", action = function(ctx) end, compensate = function(ctx) end },
  { name = "B", action = function(ctx) ctx:sleep("1h") end },
} }
]],
  ["quick.lua"] = [[
local saga = require "saga"
saga.define { name = "Quick", steps = { { name = "A", action = function(ctx) end } } }
]],
}

describe("auth", function()
  local host, done_id
  setup(function()
    host = H.host { name = "auth", scripts = SCRIPTS }
    host.opts.args = "--auth " .. auth_file(host.dir)
    host:start()
    local code, body = host:post("/v1/sagas/Quick", {}, bearer(TOKENS.admin))
    assert.are.equal(201, code)
    done_id = body.id
    wait(host, done_id, "completed")
  end)
  teardown(function() host:stop() end)

  -- expected status per route and caller: an allowed operator verb on a completed saga is 409
  local function matrix()
    local A, F = 401, 403
    return {
      { "GET", "/v1/sagas", nil, { none = A, bad = A, read = 200, start = 200, operate = 200, admin = 200 } },
      { "GET", "/v1/sagas/" .. done_id, nil, { none = A, bad = A, read = 200, start = 200, operate = 200, admin = 200 } },
      { "POST", "/v1/sagas/Quick", {}, { none = A, bad = A, read = F, start = 201, operate = 201, admin = 201 } },
      { "POST", "/v1/sagas/" .. done_id .. "/compensate", { reason = "x" },
        { none = A, bad = A, read = F, start = F, operate = 409, admin = 409 } },
      { "POST", "/v1/sagas/" .. done_id .. "/retry", {}, { none = A, bad = A, read = F, start = F, operate = 409, admin = 409 } },
      { "POST", "/v1/sagas/" .. done_id .. "/resolve", { note = "x" },
        { none = A, bad = A, read = F, start = F, operate = 409, admin = 409 } },
      { "GET", "/v1/definitions", nil, { none = A, bad = A, read = 200, start = 200, operate = 200, admin = 200 } },
      { "GET", "/v1/breakers", nil, { none = A, bad = A, read = 200, start = 200, operate = 200, admin = 200 } },
      { "GET", "/healthz", nil, { none = 200, bad = 200, read = 200, start = 200, operate = 200, admin = 200 } },
      { "GET", "/metrics", nil, { none = 200, bad = 200, read = 200, start = 200, operate = 200, admin = 200 } },
    }
  end

  it("answers each role on each route as the roles table says", function()
    local callers = { none = false, bad = "not-a-token-of-this-host-0000", read = TOKENS.read, start = TOKENS.start,
                      operate = TOKENS.operate, admin = TOKENS.admin }
    local wrong = {}
    for _, row in ipairs(matrix()) do
      local method, path, body, want = row[1], row[2], row[3], row[4]
      for _, who in ipairs { "none", "bad", "read", "start", "operate", "admin" } do
        local code, res = host:request(method, path, body, bearer(callers[who] or nil))
        if code ~= want[who] then
          wrong[#wrong + 1] = string.format("%s %s as %s: %s, want %s (%s)", method, path, who, tostring(code),
            want[who], type(res) == "table" and tostring(res.error) or tostring(res))
        end
      end
    end
    assert.are.same({}, wrong)
  end)

  it("401 says how to authenticate, with WWW-Authenticate: Bearer; 403 names the role needed", function()
    local code, out = H.sh("curl -s -i " .. H.q(host.url .. "/v1/sagas"))
    assert.are.equal(0, code)
    assert.matches("HTTP/1.1 401", out)
    assert.matches("\nWWW%-Authenticate: Bearer", out)
    assert.matches('"error":"authentication required', out)
    local c2, body = host:request("GET", "/v1/sagas", nil, { Authorization = "Basic dXNlcjpwYXNz" })
    assert.are.equal(401, c2)
    assert.is_string(body.error)
    local c3, b3 = host:post("/v1/sagas/Quick", {}, bearer(TOKENS.read))
    assert.are.equal(403, c3)
    assert.matches("needs role start", b3.error)
    assert.matches("rita has role read", b3.error)
    local c4, b4 = host:post("/v1/sagas/" .. done_id .. "/retry", {}, bearer(TOKENS.start))
    assert.are.equal(403, c4)
    assert.matches("needs role operate", b4.error)
    -- unknown paths and wrong methods are only answered to someone known
    assert.are.equal(401, (host:get("/v2/nothing")))
    assert.are.equal(404, (host:request("GET", "/v2/nothing", nil, bearer(TOKENS.read))))
    assert.are.equal(405, (host:request("DELETE", "/v1/sagas/x", nil, bearer(TOKENS.read))))
  end)

  it("records the token's name as the operator, whatever the body's by or X-Operator say", function()
    local code, body = host:post("/v1/sagas/Slow", {}, bearer(TOKENS.start))
    assert.are.equal(201, code)
    local id = body.id
    local hdrs = bearer(TOKENS.operate)
    hdrs["X-Operator"] = "eve"
    local s = wait(host, id, "running")
    H.sleep(0.2)
    local c2, after = host:post("/v1/sagas/" .. id .. "/compensate", { reason = "stop", by = "mallory" }, hdrs)
    assert.are.equal(200, c2)
    s = wait(host, id)
    assert.are.equal("compensated", s.status)
    local found
    for _, st in ipairs(s.steps) do
      if st.phase == "saga" and st.event == "operator_compensate" then found = st.error end
    end
    assert.are.equal("by olga: stop", found)
    assert.matches("by olga", after.error)
    assert.is_nil(after.error:find("mallory", 1, true) or after.error:find("eve", 1, true))
  end)

  it("the CLI sends SAGAHOST_TOKEN; without it the 401 says what to set", function()
    local env = "SAGAHOST_TOKEN=" .. TOKENS.start .. " "
    local code, out, err = H.run(env .. H.bin .. " start Quick --wait --server " .. host.url)
    assert.are.equal(0, code, err)
    assert.matches('"status": "completed"', out)
    code, out, err = H.run("env -u SAGAHOST_TOKEN " .. H.bin .. " list --server " .. host.url)
    assert.are.equal(1, code)
    assert.matches("HTTP 401", err)
    assert.matches("set SAGAHOST_TOKEN", err)
    code, _, err = H.run("SAGAHOST_TOKEN=wrong-token-0000000000000 " .. H.bin .. " list --server " .. host.url)
    assert.are.equal(1, code)
    assert.matches("does not know the token", err)
    -- a start token may not compensate: the CLI shows the 403
    code, _, err = H.run(env .. H.bin .. " compensate " .. done_id .. " --reason x --server " .. host.url)
    assert.are.equal(1, code)
    assert.matches("needs role operate", err)
    assert.matches("HTTP 403", err)
  end)

  it("--auth-metrics puts /metrics behind role read; /healthz stays open", function()
    local h2 = H.host { name = "auth-metrics", scripts = SCRIPTS }
    h2.opts.args = "--auth " .. auth_file(h2.dir) .. " --auth-metrics"
    h2:start()
    local ok, err = pcall(function()
      assert.are.equal(401, (h2:get("/metrics")))
      assert.are.equal(200, (h2:request("GET", "/metrics", nil, bearer(TOKENS.read))))
      assert.are.equal(200, (h2:get("/healthz")))
    end)
    h2:stop()
    assert(ok, err)
  end)

  it("SIGHUP re-reads the file; a broken file keeps the previous tokens", function()
    local h2 = H.host { name = "auth-hup", scripts = SCRIPTS }
    local f = auth_file(h2.dir)
    h2.opts.args = "--auth " .. f
    h2:start()
    local ok, err = pcall(function()
      local new = "new-reader-token-0000000000"
      H.write(f, "nina read " .. new .. "\n")
      os.execute("kill -HUP " .. h2.pid)
      h2:wait_log("SIGHUP: re%-read")
      assert.are.equal(200, (h2:request("GET", "/v1/sagas", nil, bearer(new))))
      assert.are.equal(401, (h2:request("GET", "/v1/sagas", nil, bearer(TOKENS.read))))
      H.write(f, "nina reader " .. new .. "\n")
      os.execute("kill -HUP " .. h2.pid)
      h2:wait_log("keeping the previous tokens: .-:1: unknown role")
      assert.are.equal(200, (h2:request("GET", "/v1/sagas", nil, bearer(new))))
    end)
    h2:stop()
    assert(ok, err)
  end)

  it("a malformed auth file stops the start with file:line and exit 2", function()
    local d = H.tmpdir("auth-bad")
    local cases = {
      { "# ok\nalice read " .. TOKENS.read .. "\nbob writer " .. TOKENS.start .. "\n", ":3: unknown role 'writer'" },
      { "alice read\n", ":1: expected `name role token`" },
      { "\n\nalice read short\n", ":3: the token of alice must be 16" },
      { "a read " .. TOKENS.read .. "\nb admin " .. TOKENS.read .. "\n", ":2: the token of b is already given to a" },
      { "# nothing\n", "no tokens" },
    }
    for i, c in ipairs(cases) do
      local f = d .. "/tokens" .. i
      H.write(f, c[1])
      local code, _, err = H.run(H.bin .. " run --db " .. d .. "/h.db --listen 127.0.0.1:0 --auth " .. f .. " " .. d .. "/sagas")
      assert.are.equal(2, code, err)
      assert.truthy(err:find(f .. (c[2]:sub(1, 1) == ":" and c[2] or ": " .. c[2]), 1, true), err)
    end
    local code, _, err = H.run(H.bin .. " run --db " .. d .. "/h.db --auth " .. d .. "/missing " .. d .. "/sagas")
    assert.are.equal(2, code)
    assert.matches("auth file", err)
  end)
end)

describe("listen address", function()
  it("refuses a non-loopback address without --auth (exit 2), starts with --insecure or --auth", function()
    local d = H.tmpdir("insecure")
    local code, _, err = H.run(H.bin .. " run --db " .. d .. "/h.db --listen 0.0.0.0:0 " .. d .. "/sagas")
    assert.are.equal(2, code)
    assert.matches("refusing to listen on 0%.0%.0%.0:0 without %-%-auth", err)
    assert.matches("%-%-insecure", err)
    -- the database was not even created
    assert.is_nil(H.read(d .. "/h.db"))

    local h = H.host { name = "insecure", scripts = SCRIPTS, args = "--listen 0.0.0.0:0 --insecure" }
    h:start()
    local ok, e = pcall(function()
      assert.are.equal(200, (h:get("/v1/sagas")))
      assert.matches("has no authentication", h:log())
    end)
    h:stop()
    assert(ok, e)

    local h2 = H.host { name = "public-auth", scripts = SCRIPTS }
    h2.opts.args = "--listen 0.0.0.0:0 --auth " .. auth_file(h2.dir)
    h2:start()
    ok, e = pcall(function()
      assert.are.equal(401, (h2:get("/v1/sagas")))
      assert.are.equal(200, (h2:request("GET", "/v1/sagas", nil, bearer(TOKENS.read))))
    end)
    h2:stop()
    assert(ok, e)
  end)

  it("loopback addresses need nothing: 127.x and localhost", function()
    local h = H.host { name = "loop", scripts = SCRIPTS, args = "--listen 127.0.0.2:0" }
    h:start()
    h:stop()
    -- localhost: Host:start expects an address in the log, so this one is run for a moment by hand
    local d = H.tmpdir("loop-localhost")
    local code, _, err = H.run("timeout 2 " .. H.bin .. " run --db " .. d .. "/h.db --listen localhost:0 " .. d .. "/sagas")
    assert.are.equal(124, code, err) -- still running when timeout stopped it
    assert.matches("listening on http://localhost:%d+", err)
  end)
end)

describe("HTTPS", function()
  local host, cert
  setup(function()
    host = H.host { name = "tls", scripts = SCRIPTS }
    cert = host.dir .. "/cert.pem"
    local key = host.dir .. "/key.pem"
    local code, out = H.sh("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 " ..
      "-addext subjectAltName=DNS:localhost -keyout " .. key .. " -out " .. cert)
    assert(code == 0, "openssl: " .. out)
    host.opts.args = "--auth " .. auth_file(host.dir) .. " --tls-cert " .. cert .. " --tls-key " .. key
    host.opts.curl_args = "--cacert " .. cert
    host:start()
  end)
  teardown(function() host:stop() end)

  it("serves the API over TLS to curl with the certificate as CA", function()
    assert.matches("^https://localhost:", host.url)
    assert.are.equal(200, (host:get("/healthz")))
    assert.are.equal(401, (host:get("/v1/sagas")))
    local code, body = host:post("/v1/sagas/Quick", {}, bearer(TOKENS.start))
    assert.are.equal(201, code)
    assert.are.equal("completed", wait(host, body.id).status)
    -- plain HTTP on the TLS port gets no answer, and curl without the CA refuses the certificate
    local c2 = H.sh("curl -s -o /dev/null " .. H.q(host.url:gsub("^https", "http") .. "/healthz"))
    assert.are_not.equal(0, c2)
    local c3 = H.sh("curl -s -o /dev/null " .. H.q(host.url .. "/healthz"))
    assert.are.equal(60, c3) -- CURLE_PEER_FAILED_VERIFICATION
  end)

  it("the CLI talks HTTPS with --cacert or SAGAHOST_CACERT", function()
    local env = "SAGAHOST_TOKEN=" .. TOKENS.start .. " "
    local code, out, err = H.run(env .. H.bin .. " start Quick --wait --cacert " .. cert .. " --server " .. host.url)
    assert.are.equal(0, code, err)
    assert.matches('"status": "completed"', out)
    code, out, err = H.run(env .. "SAGAHOST_CACERT=" .. cert .. " " .. H.bin .. " list --server " .. host.url)
    assert.are.equal(0, code, err)
    assert.matches("Quick", out)
    code, _, err = H.run(env .. "env -u SAGAHOST_CACERT " .. H.bin .. " list --server " .. host.url)
    assert.are.equal(1, code)
    assert.matches("certificate", err)
  end)

  it("refuses a missing key file or a cert without a key (exit 2)", function()
    local d = host.dir
    local code, _, err = H.run(H.bin .. " run --db " .. d .. "/x.db --listen 127.0.0.1:0 --tls-cert " .. cert .. " " .. d .. "/sagas")
    assert.are.equal(2, code)
    assert.matches("go together", err)
    code, _, err = H.run(H.bin .. " run --db " .. d .. "/x.db --listen 127.0.0.1:0 --tls-cert " .. cert ..
      " --tls-key " .. d .. "/nokey.pem " .. d .. "/sagas")
    assert.are.equal(2, code)
    assert.matches("nokey.pem", err)
  end)
end)
