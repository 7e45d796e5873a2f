-- End-to-end: HTTP connection limits against slow clients (slowloris): a connection over the global
-- or per-IP cap is answered 503 with Retry-After (from a small overflow pool; beyond it, closed at
-- once), a request that trickles in is cut at --http-request-timeout although it keeps sending, and
-- ordinary requests keep being answered.
local H = require "helper"
local cjson = require "cjson"

-- Opens N connections from each of the addresses ADDRS (comma-separated; 127.0.0.2 and up reach
-- the host over lo like 127.0.0.1, but count as other clients) that each send a request line, then
-- one header line a second, never ending the headers; a closed one is reopened at the next tick (as
-- a real slowloris does) until `secs` have passed. Connecting and sending give up after 1 s (a full
-- backlog must not hang the spec). Every 0.5 s it counts the sockets the host holds from those
-- addresses (ss: the host's port, an inode, i.e. not yet closed by the host).
-- Writes {opened, refused (closed within 0.3 s of opening), first = [seconds each first-round
-- connection lived, or -1 if still open at the end], held_max, held_last} as JSON to out.
local SLOW_PY = [[
import json, os, re, resource, socket, subprocess, sys, time, selectors
port, addrs, n, secs, out = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
start = time.monotonic()
stats = {"opened": 0, "refused": 0, "first": [-1.0] * (n * len(addrs)), "held_max": 0, "held_last": 0}
closed = []
# open in the host (an inode: accepted, not yet closed) and not shut down by it (ESTAB, CLOSE-WAIT)
def held():
    text = subprocess.run(["ss", "-tnHe", "state", "all", "( sport = :%d )" % port],
                          capture_output=True, text=True).stdout
    k = 0
    for line in text.splitlines():
        f = line.split()
        ino = re.search(r"ino:(\d+)", line)
        if (len(f) > 4 and f[0] in ("ESTAB", "CLOSE-WAIT") and f[4].rsplit(":", 1)[0] in addrs
                and ino and ino.group(1) != "0"):
            k += 1
    return k
def open_one(slot, first):
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.bind((addrs[slot // n], 0))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        stats["refused"] += 1
        s.close()
        return
    stats["opened"] += 1
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, [slot, first, time.monotonic()])
for i in range(n * len(addrs)): open_one(i, True)
next_send = time.monotonic() + 1
next_count = time.monotonic() + 0.5
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
    if time.monotonic() >= next_count:
        next_count += 0.5
        stats["held_last"] = held()
        stats["held_max"] = max(stats["held_max"], stats["held_last"])
    if time.monotonic() >= next_send:
        next_send += 1
        while closed: open_one(closed.pop(), False)
        for key in list(sel.get_map().values()):
            try: key.fileobj.send(b"X-Slow: 1\r\n")
            except OSError: pass
for key in list(sel.get_map().values()): key.fileobj.close()
with open(out + ".part", "w") as f: json.dump(stats, f)
os.replace(out + ".part", out)  # the spec polls for the file: it must never see half of it
]]

-- connections over a cap the host still accepts, to answer them 503 (SG_HTTP_OVERFLOW in host/http.h)
local OVERFLOW = 32

local function slow_clients(dir, port, n, secs, addrs)
  local py = dir .. "/slow.py"
  H.write(py, SLOW_PY)
  local out = dir .. "/slow.json"
  os.remove(out)
  os.execute(string.format("/usr/bin/python3 %s %s %s %d %s %s >%s/slow.log 2>&1 &", py, port,
                           addrs or "127.0.0.1", n, secs, out, dir))
  return function()
    local deadline = os.time() + secs + 30
    while os.time() < deadline do
      local text = H.read(out)
      if text and #text > 0 then return cjson.decode(text) end
      H.sleep(0.2)
    end
    error("slow clients never reported: " .. (H.read(dir .. "/slow.log") or ""))
  end
end

-- one request with curl: status, seconds, response headers (text), body (text)
local function fetch(url, extra)
  local hdr, out = os.tmpname(), os.tmpname()
  local p = io.popen(string.format("curl -s -m 5 -D %s -o %s -w '%%{http_code} %%{time_total}' %s %s",
                                   hdr, out, extra or "", H.q(url)))
  local code, secs = p:read("a"):match("(%d+) ([%d%.]+)")
  p:close()
  local headers, body = H.read(hdr) or "", H.read(out) or ""
  os.remove(hdr)
  os.remove(out)
  return tonumber(code), tonumber(secs), headers, body
end

local function percentile(sorted, q) return sorted[math.max(1, math.ceil(#sorted * q))] end

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

  it("answers 503 with Retry-After over the per-IP cap and over the global cap, holding slowloris to cap + overflow", function()
    for _, case in ipairs {
      { args = "--http-max-per-ip 50 --http-max-connections 400", what = "per-IP",
        msg = "too many connections from 127.0.0.1 (--http-max-per-ip 50); retry later" },
      { args = "--http-max-per-ip 300 --http-max-connections 50", what = "global",
        msg = "server busy: 50 connections open (--http-max-connections); retry later" },
    } do
      local host = H.host { name = "limits-cap", args = "--log-level debug --http-request-timeout 30s " .. case.args }
      host:start()
      local port = host.url:match(":(%d+)$")
      local results = slow_clients(host.dir, port, 200, 4)
      H.sleep(1.5)
      -- from the same IP: over both caps while the slow clients hang on
      local codes, worst, headers, body = {}, 0, nil, nil
      for i = 1, 5 do
        local code, secs, hd, bd = fetch(host.url .. "/healthz")
        codes[#codes + 1] = tostring(code)
        if secs > worst then worst = secs end
        if code == 503 then headers, body = hd, bd end
        H.sleep(0.2)
      end
      local r = results()
      H.sleep(0.5)
      local after = host:get("/healthz") -- the slow clients are gone: served again
      print(string.format("\n  %s cap 50, 200 slow clients: host held at most %d of their sockets (cap 50 + overflow %d); " ..
                          "%d closed at once or displaced; ordinary requests during it: %s (slowest %.0f ms), after: %s",
                          case.what, r.held_max, OVERFLOW, r.refused, table.concat(codes, " "), worst * 1000,
                          tostring(after)))
      host:stop()
      assert.are.equal("503 503 503 503 503", table.concat(codes, " "))
      assert.is_true(worst < 1.0)
      assert.matches("\r\nRetry%-After: 1\r\n", headers)
      assert.matches("\r\nConnection: close\r\n", headers)
      assert.are.equal(case.msg, cjson.decode(body).error)
      assert.is_true(r.held_max <= 50 + OVERFLOW + 1, case.what .. ": host held " .. r.held_max .. " sockets")
      assert.are.equal(200, after)
      assert.is_true(r.refused >= 100, case.what .. ": refused only " .. r.refused)
      assert.matches(case.what == "per-IP" and "per%-IP limit" or "%(connection limit", host:log())
    end
  end)

  it("keeps answering ordinary requests while 1,500 slow connections trickle in from another address", function()
    -- default caps (64 per IP, 1000 in all): the slow address gets 64 + the overflow pool
    local host = H.host { name = "limits-1500", args = "--http-request-timeout 5s" }
    host:start()
    local port = host.url:match(":(%d+)$")
    local results = slow_clients(host.dir, port, 1500, 11, "127.0.0.2")
    H.sleep(2)
    local lat, ok, codes = {}, 0, {}
    local t_end = now() + 8
    while now() < t_end do
      local code, secs = fetch(host.url .. "/healthz")
      lat[#lat + 1] = secs or 99
      if code == 200 then ok = ok + 1 else codes[#codes + 1] = tostring(code) end
    end
    local r = results()
    table.sort(lat)
    print(string.format("\n  1,500 slow connections from 127.0.0.2 (%d opened in all, %d closed at once or displaced): " ..
                        "host held at most %d of them (64 per IP + overflow %d); ordinary requests from 127.0.0.1: " ..
                        "%d/%d answered 200, p50 %.1f ms, p99 %.1f ms",
                        r.opened, r.refused, r.held_max, OVERFLOW, ok, #lat, percentile(lat, 0.5) * 1000,
                        percentile(lat, 0.99) * 1000))
    host:stop()
    assert.are.equal(#lat, ok, "not 200: " .. table.concat(codes, " "))
    assert.is_true(percentile(lat, 0.99) < 1.0)
    assert.is_true(r.held_max <= 64 + OVERFLOW, "host held " .. r.held_max .. " slow sockets")
    assert.is_true(r.held_max >= 64) -- the slow clients did reach the cap
  end)

  it("answers 503 at once when slow clients from many addresses fill the global cap", function()
    local host = H.host { name = "limits-many", args = "--log-level debug --http-request-timeout 30s --http-max-connections 200" }
    host:start()
    local port = host.url:match(":(%d+)$")
    local addrs = {}
    for i = 2, 40 do addrs[#addrs + 1] = "127.0.0." .. i end
    local results = slow_clients(host.dir, port, 40, 8, table.concat(addrs, ","))
    H.sleep(2.5)
    local codes, lat, headers, body = {}, {}, nil, nil
    for i = 1, 20 do
      local code, secs, hd, bd = fetch(host.url .. "/healthz")
      codes[#codes + 1] = tostring(code)
      lat[#lat + 1] = secs or 99
      if code == 503 then headers, body = hd, bd end
      H.sleep(0.1)
    end
    local r = results()
    H.sleep(0.5)
    local after = {}
    for i = 1, 5 do after[#after + 1] = tostring((fetch(host.url .. "/healthz"))) end
    table.sort(lat)
    print(string.format("\n  40 slow connections from each of 127.0.0.2-40 (%d opened): host held at most %d of them " ..
                        "(cap 200 + overflow %d); ordinary requests during it: %s, p50 %.1f ms, slowest %.1f ms; after: %s",
                        r.opened, r.held_max, OVERFLOW, table.concat(codes, " "), percentile(lat, 0.5) * 1000,
                        lat[#lat] * 1000, table.concat(after, " ")))
    host:stop()
    -- what the host did with the ordinary client's connections other than answering them 503
    local why = {}
    for l in host:log():gmatch("[^\n]+") do
      if l:find("from 127%.0%.0%.1[ :]") and not l:find("answering a connection", 1, true) then why[#why + 1] = l end
    end
    for _, c in ipairs(codes) do assert.are.equal("503", c, table.concat(why, "\n")) end
    assert.is_true(lat[#lat] < 1.0)
    assert.matches("\r\nRetry%-After: 1\r\n", headers)
    assert.are.equal("server busy: 200 connections open (--http-max-connections); retry later", cjson.decode(body).error)
    assert.is_true(r.held_max <= 200 + OVERFLOW, "host held " .. r.held_max .. " slow sockets")
    assert.are.equal("200 200 200 200 200", table.concat(after, " "))
  end)
end)
