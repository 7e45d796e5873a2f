-- End-to-end: the database on a real, tiny filesystem (a 4 MB tmpfs mounted for the spec) that fills
-- up while sagas run. The host must not crash; it stops taking new work (503 with Retry-After), keeps
-- answering reads, and carries on by itself when space returns; every saga it acknowledged completes,
-- exactly once. (The fault-injection sweep over every write and fsync is tests/c/test_diskfault.c.)
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
saga.handle("ledger", "Post", function(p) return { posted = p.n, pad = string.rep("x", 2000) } end)
saga.define { name = "Fill", steps = {
  { name = "post", action = function(ctx) ctx.data.r = ctx:call("ledger", "Post", { n = ctx.input.n }) end,
    compensate = function(ctx) end },
  { name = "nap", action = function(ctx) ctx:sleep("20ms") end },
  { name = "done", action = function(ctx) ctx.data.done = true end },
} }
]]

-- POST a start with a deadline; returns status, body, headers text
local function start(host, n, secs)
  local hdr, out = os.tmpname(), os.tmpname()
  local cmd = string.format("curl -s -m %d -D %s -o %s -w '%%{http_code}' -X POST -H 'Content-Type: application/json' " ..
    "--data %s %s/v1/sagas/Fill", secs or 5, hdr, out, H.q(cjson.encode({ n = n, pad = string.rep("y", 3000) })), host.url)
  local _, code = H.sh(cmd)
  local body, headers = H.read(out) or "", H.read(hdr) or ""
  os.remove(hdr); os.remove(out)
  local ok, dec = pcall(cjson.decode, body)
  return tonumber(code), ok and dec or body, headers
end

describe("a full disk", function()
  it("stops new work with 503, keeps answering reads, and carries on when space returns", function()
    H.sqlite_only("it fills a tmpfs under the host's SQLite file (a PostgreSQL server's disk is not the host's)")
    local host = H.host { name = "diskfull", scripts = { ["fill.lua"] = SCRIPT } }
    local mnt = host.dir .. "/fs"
    os.execute("mkdir -p " .. mnt)
    local rc, out = H.sh("mount -t tmpfs -o size=4m,mode=0755 tmpfs " .. H.q(mnt))
    assert(rc == 0, "this spec mounts a tmpfs (it needs root, as CI has): " .. out)
    local ok, err = xpcall(function()
      host.db = mnt .. "/host.db"
      host:start()
      -- room to spare: sagas run as usual
      local acked = {}
      for i = 1, 10 do
        local code, body = start(host, i)
        assert.are.equal(201, code)
        acked[#acked + 1] = body.id
      end
      -- fill the filesystem to the last block
      H.sh("dd if=/dev/zero of=" .. H.q(mnt .. "/filler") .. " bs=16k")
      H.sh("dd if=/dev/zero of=" .. H.q(mnt .. "/filler2") .. " bs=512")
      -- starts go on until a commit fails: the request whose commit failed waits (it is not
      -- acknowledged yet), the ones after it are refused at once
      local refused, waited, first503
      for i = 11, 3000 do
        local code, body, headers = start(host, i, 2)
        if code == 201 then acked[#acked + 1] = body.id
        elseif code == 0 or code == nil then waited = (waited or 0) + 1
        elseif code == 503 then refused = i; first503 = { body = body, headers = headers }; break
        else error("start " .. i .. ": unexpected " .. tostring(code) .. " " .. cjson.encode(body)) end
      end
      assert.is_not_nil(refused, "the disk never filled up")
      assert.is_true(host:alive(), "the host died on a full disk")
      assert.matches("store cannot write", first503.body.error)
      assert.matches("[Rr]etry%-[Aa]fter: 1", first503.headers)
      -- while full: more starts refused at once, reads answered, health says why
      local code = start(host, 9999, 3)
      assert.are.equal(503, code)
      local c1, saga = host:get("/v1/sagas/" .. acked[1])
      assert.are.equal(200, c1)
      assert.are.equal("completed", saga.status)
      local c2, list = host:get("/v1/sagas?limit=5")
      assert.are.equal(200, c2)
      assert.is_true(#list.sagas >= 1)
      local c3, health = host:get("/healthz")
      assert.are.equal(503, c3)
      assert.matches("store unavailable", health.error)
      local _, _, metrics = host:get("/metrics")
      assert.matches("sagahost_store_stalled 1", metrics)
      print(string.format("\n  %d sagas acknowledged before the disk filled (%d start(s) left waiting), start %d refused with 503",
                          #acked, waited or 0, refused))
      -- it stays full for a while: the retries back off, the host stays up and answers reads
      H.sleep(2)
      assert.is_true(host:alive())
      assert.are.equal(200, (host:get("/v1/sagas/" .. acked[2])))
      assert.are.equal(503, (start(host, 9998, 3)))
      -- space returns: the host goes on by itself (the retry backs off to at most 5 s)
      os.remove(mnt .. "/filler")
      os.remove(mnt .. "/filler2")
      local back
      for _ = 1, 40 * H.slow do
        H.sleep(0.25)
        local c = host:get("/healthz")
        if c == 200 then back = true break end
      end
      assert.is_true(back, "the host did not recover after space returned:\n" .. host:log())
      for i = 1, 5 do
        local c, body = start(host, 10000 + i)
        assert.are.equal(201, c)
        acked[#acked + 1] = body.id
      end
      -- everything acknowledged completes, once
      local all = host:wait_all(acked, 60)
      for _, id in ipairs(acked) do
        assert.are.equal("completed", all[id].status, id)
        local done, n = {}, 0
        for _, h in ipairs(host:saga(id).steps) do
          if h.status == "completed" and h.phase == "action" then
            assert.is_nil(done[h.step], "step " .. tostring(h.step) .. " of " .. id .. " completed twice")
            done[h.step] = true
            n = n + 1
          end
        end
        assert.are.equal(3, n, id .. ": completed steps")
      end
      local log = host:log()
      assert.matches("store: cannot commit", log)
      assert.matches("commit succeeded after", log)
      assert.is_nil(log:find("double free", 1, true))
      assert.is_nil(log:find("AddressSanitizer", 1, true))
      print(string.format("  recovered by itself after space returned: %d acknowledged sagas, all completed, each step once",
                          #acked))
    end, debug.traceback)
    host:stop()
    os.execute("umount " .. H.q(mnt) .. " 2>/dev/null || umount -l " .. H.q(mnt))
    assert(ok, err)
  end)
end)
