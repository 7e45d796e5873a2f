-- End-to-end: HTTP connection limits against slow clients (slowloris): the global and per-IP caps
-- refuse connections over them, and a request that trickles in is cut at --http-request-timeout
-- although it keeps sending, while ordinary requests keep being answered.
local H = require "helper"
local cjson = require "cjson"

-- Opens N connections that each send a request line, then one header line a second, never ending
-- the headers; a closed one is reopened at the next tick (as a real slowloris does) until `secs`
-- have passed. Connecting and sending give up after 1 s (a full backlog must not hang the spec).
-- Writes {opened, refused (closed within 0.3 s of opening), first = [seconds each first-round
-- connection lived, or -1 if still open at the end]} as JSON to out.
local SLOW_PY = [[
import json, socket, sys, time, selectors
port, n, secs, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sel = selectors.DefaultSelector()
start = time.monotonic()
stats = {"opened": 0, "refused": 0, "first": [-1.0] * n}
closed = []
def open_one(slot, first):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        stats["refused"] += 1
        s.close()
        return
    stats["opened"] += 1
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, [slot, first, time.monotonic()])
for i in range(n): open_one(i, True)
next_send = time.monotonic() + 1
while time.monotonic() - start < secs:
    for key, _ in sel.select(timeout=0.05):
        slot, first, t0 = key.data
        try: data = key.fileobj.recv(4096)
        except OSError: data = b""
        if data: continue
        sel.unregister(key.fileobj); key.fileobj.close()
        lived = time.monotonic() - t0
        if lived < 0.3: stats["refused"] += 1
        if first: stats["first"][slot] = lived
        closed.append(slot)
    if time.monotonic() >= next_send:
        next_send += 1
        while closed: open_one(closed.pop(), False)
        for key in list(sel.get_map().values()):
            try: key.fileobj.send(b"X-Slow: 1\r\n")
            except OSError: pass
json.dump(stats, open(out, "w"))
]]

local function slow_clients(dir, port, n, secs)
  local py = dir .. "/slow.py"
  H.write(py, SLOW_PY)
  local out = dir .. "/slow.json"
  os.execute(string.format("/usr/bin/python3 %s %s %d %s %s >%s/slow.log 2>&1 &", py, port, n, secs, out, dir))
  return function()
    local deadline = os.time() + secs + 10
    while os.time() < deadline do
      local text = H.read(out)
      if text and #text > 0 then return cjson.decode(text) end
      H.sleep(0.2)
    end
    error("slow clients never reported: " .. (H.read(dir .. "/slow.log") or ""))
  end
end

local function now() return tonumber(io.popen("date +%s.%N"):read("l")) end

describe("HTTP limits", function()
  it("cuts a trickling request at --http-request-timeout while other requests are answered", function()
    local host = H.host { name = "limits", args = "--log-level debug --http-request-timeout 2s " ..
                          "--http-max-per-ip 300 --http-max-connections 400" }
    host:start()
    local port = host.url:match(":(%d+)$")
    local results = slow_clients(host.dir, port, 200, 6)
    H.sleep(0.5)
    local lat, ok = {}, 0
    local t_end = now() + 4.5
    while now() < t_end do
      local t0 = now()
      local code = host:get("/healthz")
      lat[#lat + 1] = now() - t0
      if code == 200 then ok = ok + 1 end
    end
    local r = results()
    table.sort(lat)
    local p99 = lat[math.max(1, math.ceil(#lat * 0.99))]
    local closed, longest = 0, 0
    for _, lived in ipairs(r.first) do
      if lived >= 0 then closed = closed + 1 end
      if lived > longest then longest = lived end
    end
    print(string.format("\n  slow: %d opened, %d refused; first round: %d/200 closed by the deadline, " ..
                        "longest lived %.2fs (deadline 2s); ordinary: %d/%d answered 200, p50 %.1f ms, p99 %.1f ms",
                        r.opened, r.refused, closed, longest, ok, #lat, lat[math.ceil(#lat / 2)] * 1000, p99 * 1000))
    host:stop()
    assert.are.equal(#lat, ok)
    assert.is_true(p99 < 1.0)
    assert.are.equal(200, closed)    -- every trickling connection was cut although it kept sending
    assert.is_true(longest < 2 + 3)  -- within the deadline plus a few seconds (the idle timeout is 60 s)
    assert.matches("request not complete", host:log())
  end)

  it("refuses connections over the per-IP cap, and over the global cap", function()
    for _, case in ipairs {
      { args = "--http-max-per-ip 50 --http-max-connections 400", what = "per-IP" },
      { args = "--http-max-per-ip 300 --http-max-connections 50", what = "global" },
    } do
      local host = H.host { name = "limits-cap", args = "--log-level debug --http-request-timeout 30s " .. case.args }
      host:start()
      local port = host.url:match(":(%d+)$")
      local results = slow_clients(host.dir, port, 200, 3)
      H.sleep(1.5)
      -- what the host holds: its sockets, less the listening one and a few of its own
      local _, socks = H.sh("ls -l /proc/" .. host.pid .. "/fd | grep -c socket")
      local code = host:get("/healthz") -- from the same IP: over both caps while the 50 hang on
      local r = results()
      H.sleep(0.5)
      local after = host:get("/healthz") -- the slow clients are gone: served again
      print(string.format("\n  %s cap 50, 200 slow clients: host holds %d sockets; client saw %d refused " ..
                          "(closed at once); ordinary request during it: %s, after: %s",
                          case.what, tonumber(socks), r.refused, tostring(code), tostring(after)))
      host:stop()
      assert.is_true(tonumber(socks) <= 60, case.what .. ": host holds " .. socks .. " sockets")
      assert.are.equal(200, after)
      assert.is_true(r.refused >= 140, case.what .. ": refused only " .. r.refused)
      assert.matches(case.what == "per-IP" and "per%-IP limit" or "%(connection limit", host:log())
    end
  end)
end)
