-- `sagahost bench` (issue #5): runs to completion and reports its figures as a JSON last line.
-- Not a speed test: it checks the counts and that the figures are there.
local H = require "helper"
local cjson = require "cjson"

-- the last non-empty line of a text
local function last_line(text)
  local last
  for line in text:gmatch("[^\n]+") do last = line end
  return last
end

describe("sagahost bench", function()
  it("runs sagas in-process, compensates every K-th one and ends with a JSON summary", function()
    local code, out, err = H.run(H.bin .. " bench --sagas 200 --concurrency 16 --fail-every 10")
    assert.are.equal(0, code, err)
    local ok, r = pcall(cjson.decode, last_line(out) or "")
    assert.is_true(ok, "the last line is not JSON:\n" .. out)
    assert.are.equal("inprocess", r.mode)
    assert.are.equal(200, r.sagas)
    assert.are.equal(16, r.concurrency)
    assert.are.equal(180, r.completed)
    assert.are.equal(20, r.compensated)
    assert.are.equal(0, r.compensation_failed)
    assert.is_true(r.sagas_per_s > 0)
    assert.is_true(r.secs > 0)
    assert.is_true(r.p50_ms >= 0 and r.p99_ms >= r.p50_ms)
    assert.is_true(r.peak_rss_mb > 0)
    assert.is_true(r.commits > 0)
  end)

  it("keeps a --db it was given, with every saga in it", function()
    local dir = H.tmpdir("bench")
    local db = dir .. "/bench.db"
    local code, out, err = H.run(H.bin .. " bench --sagas 20 --concurrency 4 --fail-every 5 --db " .. db)
    assert.are.equal(0, code, err)
    local _, rows = H.sh("sqlite3 " .. db .. " \"SELECT status, count(*) FROM sagas GROUP BY status ORDER BY status\"")
    assert.are.equal("compensated|4\ncompleted|16\n", rows)
  end)

  it("writes the bench script for --server, and it passes check", function()
    local dir = H.tmpdir("bench") .. "/scripts"
    local code, out, err = H.run(H.bin .. " bench --write-script " .. dir)
    assert.are.equal(0, code, err)
    assert.truthy(out:find("bench --server", 1, true))
    local ccode, cout, cerr = H.run(H.bin .. " check " .. dir)
    assert.are.equal(0, ccode, cerr)
    assert.truthy(cout:find("1 saga type(s) OK", 1, true))
  end)

  it("drives a running host with --server", function()
    local host = H.host({ name = "bench-server" })
    H.run(H.bin .. " bench --write-script " .. host.scripts)
    host:start()
    local ok, e = pcall(function()
      -- one POST ?wait= a saga (the default), or a POST then GET ?wait=
      for _, shape in ipairs({ "", " --wait-on get" }) do
        local code, out, err = H.run(H.bin .. " bench --sagas 50 --concurrency 8 --fail-every 10 --server " .. host.url .. shape)
        assert.are.equal(0, code, err)
        local r = cjson.decode(last_line(out))
        assert.are.equal("server", r.mode)
        assert.are.equal(50, r.sagas)
        assert.are.equal(45, r.completed)
        assert.are.equal(5, r.compensated)
        assert.is_true(r.sagas_per_s > 0)
        assert.truthy(out:find(shape == "" and "each saga one POST ?wait=30s" or "POSTs and their GETs ?wait=30s", 1, true), out)
      end
      local _, health = host:get("/healthz")
      assert.are.equal(100, health.started)
    end)
    host:cleanup()
    assert(ok, e)
  end)

  it("rejects bad flags with exit 2 and the usage", function()
    for _, args in ipairs({ "--sagas 0", "--sagas x", "--concurrency", "--fail-every -1", "--frob",
                            "--amqp amqp://x --server http://y", "--amqp amqp://x --amqp1 amqp://y",
                            "--amqp1 amqp://x --server http://y", "--server http://y --db z", "extra",
                            "--server http://y --wait-on put", "--wait-on get" }) do
      local code, _, err = H.run(H.bin .. " bench " .. args)
      assert.are.equal(2, code, args)
      assert.truthy(err:find("usage: sagahost bench", 1, true), args)
    end
  end)
end)
