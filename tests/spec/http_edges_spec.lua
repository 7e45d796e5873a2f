-- End-to-end: HTTP requests at the edges of the protocol, sent byte for byte over a raw socket:
-- conflicting framing headers (400), bodies without Content-Length (413 at the headers, also for
-- chunk sizes that never end), unknown methods (405 without echoing them), and the 503 of a client
-- over its per-IP connection cap. None of these reaches the API, and every one closes the connection.
local H = require "helper"
local cjson = require "cjson"

-- Sends the parts of a request over one connection (waiting `gap` seconds between parts), after
-- opening `idle` connections that send nothing; reads the answer until the host closes. Prints JSON:
-- status, headers (lowercase names), body, ready_ms (first answer byte after the first part was
-- sent, measured while the later parts are still unsent), total_ms, ended ("eof", or the error).
local RAW_PY = [==[
import json, select, socket, sys, time
port, spec = int(sys.argv[1]), json.load(open(sys.argv[2]))
idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(spec.get("idle", 0))]
time.sleep(0.2 if idle else 0)
s = socket.create_connection(("127.0.0.1", port))
parts = [p.encode("latin-1") for p in spec["parts"]]
t0 = time.monotonic()
s.sendall(parts[0])
ready = select.select([s], [], [], 3.0)[0]
ready_ms = (time.monotonic() - t0) * 1000 if ready else None
for p in parts[1:]:
    time.sleep(spec.get("gap", 0.05))
    try: s.sendall(p)
    except OSError: pass
data, ended = b"", "eof"
s.settimeout(5)
while True:
    try: d = s.recv(65536)
    except OSError as e:
        ended = repr(e); break
    if not d: break
    data += d
total_ms = (time.monotonic() - t0) * 1000
head, _, body = data.partition(b"\r\n\r\n")
lines = head.decode("latin-1").split("\r\n")
status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
headers = {}
for l in lines[1:]:
    k, _, v = l.partition(":")
    headers[k.strip().lower()] = v.strip()
print(json.dumps({"status": status, "headers": headers, "body": body.decode("latin-1"),
                  "ready_ms": ready_ms, "total_ms": total_ms, "ended": ended}))
for c in idle: c.close()
]==]

local function raw(host, spec)
  local py, js = host.dir .. "/raw.py", host.dir .. "/raw.json"
  H.write(py, RAW_PY)
  H.write(js, cjson.encode(spec))
  local port = host.url:match(":(%d+)$")
  local code, out, err = H.run(string.format("/usr/bin/python3 %s %s %s", py, port, js))
  assert(code == 0, "raw.py failed: " .. out .. err)
  local r = cjson.decode(out)
  local ok, decoded = pcall(cjson.decode, r.body)
  r.json = ok and decoded or nil
  return r
end

local START = "POST /v1/sagas/OrderProcessing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
local BODY = '{"order_id":"o-1","amount":10}'

local function sagas(host)
  local code, body = host:get("/v1/sagas")
  assert.are.equal(200, code)
  return body.sagas
end

describe("HTTP edges", function()
  local host
  before_each(function()
    host = H.host { name = "http-edges", copy = { "sagas/order_processing.lua", "sagas/inventory.lua",
                                                   "sagas/payment.lua", "sagas/shipping.lua" } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("refuses two different Content-Length headers with 400, and no saga is started", function()
    local r = raw(host, { parts = { START .. "Content-Length: " .. #BODY .. "\r\nContent-Length: 5\r\n\r\n" .. BODY } })
    assert.are.equal(400, r.status)
    assert.are.equal("conflicting framing: Content-Length headers with different values", r.json.error)
    assert.are.equal("close", r.headers.connection)
    assert.are.equal("eof", r.ended)
    -- the second one larger: the same (the host must not take the first and leave the rest as a request)
    r = raw(host, { parts = { START .. "Content-Length: 5\r\nContent-Length: " .. #BODY .. "\r\n\r\n" .. BODY } })
    assert.are.equal(400, r.status)
    -- a later Content-Length that is a list
    r = raw(host, { parts = { START .. "Content-Length: " .. #BODY .. "\r\nContent-Length: " .. #BODY .. ", 7\r\n\r\n" .. BODY } })
    assert.are.equal(400, r.status)
    assert.are.equal("malformed Content-Length header: it must be a single decimal number", r.json.error)
    -- a single malformed one is refused by libmicrohttpd itself (400, its own HTML body), also closed
    r = raw(host, { parts = { START .. "Content-Length: 5, 7\r\n\r\n" .. BODY } })
    assert.are.equal(400, r.status)
    assert.are.equal("eof", r.ended)
    assert.are.same({}, sagas(host))
    -- the same request with one Content-Length (twice the same value is allowed) starts a saga
    r = raw(host, { parts = { START .. "Content-Length: " .. #BODY .. "\r\nContent-Length: " .. #BODY .. "\r\n\r\n" .. BODY } })
    assert.are.equal(201, r.status)
    assert.are.equal(1, #sagas(host))
  end)

  it("refuses Content-Length together with Transfer-Encoding with 400", function()
    local r = raw(host, { parts = { START .. "Content-Length: " .. #BODY .. "\r\nTransfer-Encoding: chunked\r\n\r\n" ..
                                    string.format("%x\r\n%s\r\n0\r\n\r\n", #BODY, BODY) } })
    assert.are.equal(400, r.status)
    assert.are.equal("conflicting framing: the request has both Content-Length and Transfer-Encoding headers; " ..
                     "send the body with Content-Length only", r.json.error)
    assert.are.equal("close", r.headers.connection)
    assert.are.same({}, sagas(host))
  end)

  it("answers 413 at once to a chunk size that never ends (ffffffffffffffff)", function()
    local head = START .. "Transfer-Encoding: chunked\r\n\r\n"
    -- in one write
    local one = raw(host, { parts = { head .. "ffffffffffffffff\r\nabc" } })
    -- the headers, then the chunk line 200 ms later: the answer is there before it is sent
    local two = raw(host, { parts = { head, "ffffffffffffffff\r\nabc" }, gap = 0.2 })
    print(string.format("\n  chunk size ffffffffffffffff: 413 after %.1f ms (one write), %.1f ms (headers alone); " ..
                        "connection ended by %s / %s", one.ready_ms, two.ready_ms, one.ended, two.ended))
    for _, r in ipairs { one, two } do
      assert.are.equal(413, r.status)
      assert.is_true(r.ready_ms < 1000)
      assert.are.equal("close", r.headers.connection)
      assert.are.equal("eof", r.ended) -- not reset: the host reads what follows before it closes
    end
    assert.is_true(two.ready_ms < 200) -- before the chunk line was even sent
    assert.are.same({}, sagas(host))
  end)

  it("answers 413 to Transfer-Encoding: chunked even with a small valid body (bodies need Content-Length)", function()
    local r = raw(host, { parts = { START .. "Transfer-Encoding: chunked\r\n\r\n" ..
                                    string.format("%x\r\n%s\r\n0\r\n\r\n", #BODY, BODY) } })
    assert.are.equal(413, r.status)
    assert.are.equal("request bodies must declare their size with Content-Length (at most 1048576 bytes); " ..
                     "Transfer-Encoding: chunked is not accepted", r.json.error)
    assert.are.equal("close", r.headers.connection)
    assert.are.same({}, sagas(host))
  end)

  it("answers an unknown method 405 without echoing it", function()
    local r = raw(host, { parts = { "FOO /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" } })
    assert.are.equal(405, r.status)
    assert.are.equal("GET, HEAD", r.headers.allow)
    assert.is_nil(r.body:find("FOO", 1, true))
    assert.matches("method not allowed for /healthz", r.json.error)
    local odd = raw(host, { parts = { "X<script>Y /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" } })
    assert.is_nil(odd.body:find("script", 1, true))
  end)

  it("answers 503 with Retry-After to a client over its per-IP cap", function()
    host:stop()
    host = H.host { name = "http-edges-cap", args = "--http-max-per-ip 2 --log-level debug" }
    host:start()
    local r = raw(host, { idle = 2, parts = { "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" } })
    assert.are.equal(503, r.status)
    assert.are.equal("1", r.headers["retry-after"])
    assert.are.equal("close", r.headers.connection)
    assert.are.equal("application/json", r.headers["content-type"])
    assert.are.equal("too many connections from 127.0.0.1 (--http-max-per-ip 2); retry later", r.json.error)
    assert.is_true(r.ready_ms < 1000)
    -- a POST over the cap is drained and answered the same, never started
    r = raw(host, { idle = 2, parts = { START .. "Content-Length: " .. #BODY .. "\r\n\r\n" .. BODY } })
    assert.are.equal(503, r.status)
    assert.matches("per%-IP limit", host:log())
    -- the idle ones are gone: served again
    assert.are.equal(200, (host:get("/healthz")))
    assert.are.same({}, sagas(host))
  end)
end)
