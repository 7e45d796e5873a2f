-- Finding sagas: business keys (saga.define{key = ...}), the filters, order and cursor of GET /v1/sagas,
-- GET /v1/counts, and the CLI's list.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"
local done = { { name = "A", action = function(ctx) end } }
saga.define { name = "ByField", key = "order_id", steps = done }
saga.define { name = "ByFn", steps = done,
  key = function(input) return input.customer and string.format("%s/%d", input.customer, input.n) end }
saga.define { name = "Failing", steps = done,
  key = function(input) if input.boom then error("no key for " .. input.boom) end return input.k end }
saga.define { name = "Looping", steps = done, key = function(input) while true do end end }
saga.define { name = "Plain", steps = done }
saga.define { name = "Gives", key = "order_id",
  steps = { { name = "A", action = function(ctx) ctx:fail("declined") end } } }
saga.define { name = "Naps", key = "order_id",
  steps = { { name = "A", action = function(ctx) ctx:sleep("1h") end } } }
saga.define { name = "Many", key = "group", steps = done }
]]

local STATUSES = { "running", "compensating", "completed", "compensated", "compensation_failed", "resolved", "terminated" }

-- "2026-11-30T12:00:00.123Z" -> ms since the epoch
local function ms_of(iso)
  local t = H.log_time(iso .. " ")
  return math.floor(t * 1000 + 0.5)
end

local function esc(s)
  return (tostring(s):gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

describe("finding sagas", function()
  local host
  setup(function()
    host = H.host { name = "search", scripts = { ["keys.lua"] = SCRIPT } }
    host:start()
  end)
  teardown(function() host:stop() end)

  local function list(query)
    local code, body, text = host:get("/v1/sagas?" .. query)
    assert(code == 200, "GET /v1/sagas?" .. query .. ": " .. tostring(code) .. " " .. tostring(text))
    return body
  end

  local function ids_of(body)
    local ids = {}
    for _, s in ipairs(body.sagas) do ids[#ids + 1] = s.id end
    return ids
  end

  -- every page of a query, following "next"; the pages' sagas in the order given
  local function all_pages(query, limit, cursor_param)
    local got, cursor, pages = {}, nil, 0
    repeat
      local body = list(query .. "&limit=" .. limit .. (cursor and ("&" .. (cursor_param or "cursor") .. "=" .. cursor) or ""))
      for _, s in ipairs(body.sagas) do got[#got + 1] = s end
      pages = pages + 1
      assert.is_true(#body.sagas <= limit)
      if body.next ~= cjson.null then
        assert.are.equal(limit, #body.sagas, "a page that is not the last is full")
        assert.matches("^[ad]%.", body.next)
        assert.are.equal(body.sagas[#body.sagas].id, body.next:sub(3))
      end
      cursor = body.next ~= cjson.null and body.next or nil
    until not cursor or pages > 1000
    return got, pages
  end

  it("gives each saga its key: by field name, by function, numbers as decimal strings, none as null", function()
    local a = host:start_saga("ByField", { order_id = "o-1" })
    local b = host:start_saga("ByField", { order_id = 42 })
    local c = host:start_saga("ByField", { order_id = 12.5 })
    local d = host:start_saga("ByField", { other = 1 })
    local e = host:start_saga("ByFn", { customer = "ann", n = 3 })
    local f = host:start_saga("ByFn", {})
    local g = host:start_saga("Plain", { order_id = "o-1" })
    local want = { [a] = "o-1", [b] = "42", [c] = "12.5", [d] = cjson.null, [e] = "ann/3", [f] = cjson.null,
                   [g] = cjson.null }
    for id, key in pairs(want) do
      local s = host:wait(id)
      assert.are.equal(key, s.key, id)
      assert.are.equal("completed", s.status)
    end
    -- the list shows it too
    local body = list("type=ByFn")
    local seen = {}
    for _, s in ipairs(body.sagas) do seen[s.id] = s.key end
    assert.are.equal("ann/3", seen[e])
    assert.are.equal(cjson.null, seen[f])
    -- and it is stored: a restarted host shows the same
    host:stop()
    host:start()
    assert.are.equal("o-1", host:saga(a).key)
    assert.are.equal("42", host:saga(b).key)
  end)

  it("refuses a start whose key cannot be made, with a 400 that says why, and starts nothing", function()
    local function counts(type_)
      local code, body = host:get("/v1/counts?type=" .. type_)
      assert.are.equal(200, code)
      return body.counts
    end
    local before = counts("Failing")
    local code, body = host:post("/v1/sagas/Failing", { boom = "you" })
    assert.are.equal(400, code)
    assert.matches("^saga type 'Failing': key function failed: .*keys%.lua:%d+: no key for you", body.error)
    code, body = host:post("/v1/sagas/Failing", { k = true })
    assert.are.equal(400, code)
    assert.matches("saga type 'Failing': key function %(.*keys%.lua:%d+%) gave a boolean: a key must be a string or a number",
                   body.error)
    code, body = host:post("/v1/sagas/ByField", { order_id = { 1, 2 } })
    assert.are.equal(400, code)
    assert.matches("saga type 'ByField': key field 'order_id' gave a table", body.error)
    code, body = host:post("/v1/sagas/ByField", { order_id = string.rep("x", 201) })
    assert.are.equal(400, code)
    assert.matches("key field 'order_id' gave 201 bytes: a key must be 1 to 200 bytes", body.error)
    code, body = host:post("/v1/sagas/ByField", { order_id = "" })
    assert.are.equal(400, code)
    assert.matches("gave an empty string", body.error)
    -- a key function that never returns is stopped by the script limits, and the host goes on
    code, body = host:post("/v1/sagas/Looping", {})
    assert.are.equal(400, code)
    assert.matches("saga type 'Looping': key function failed: .*keys%.lua:%d+: .*", body.error)
    assert.matches("key function", body.error:gsub("^saga type 'Looping': key function failed: ", ""))
    assert.are.same(before, counts("Failing"))
    assert.are.equal(0, #list("type=Failing").sagas)
    assert.are.equal(0, #list("type=Looping").sagas)
    -- the same type starts when the key is fine; a 200-byte key is fine
    local id = host:start_saga("Failing", { k = "fine" })
    assert.are.equal("fine", host:wait(id).key)
    id = host:start_saga("ByField", { order_id = string.rep("y", 200) })
    assert.are.equal(string.rep("y", 200), host:wait(id).key)
    assert.are.equal(200, (host:get("/healthz")))
  end)

  it("finds the sagas with a key, of any type, newest first", function()
    local mine = {}
    for i = 1, 3 do mine[#mine + 1] = host:start_saga("ByField", { order_id = "find-me" }) end
    mine[#mine + 1] = host:start_saga("Gives", { order_id = "find-me" })
    host:start_saga("ByField", { order_id = "find-me-not" })
    host:start_saga("ByField", { order_id = "FIND-ME" })
    host:start_saga("Plain", { order_id = "find-me" })
    host:wait_all(mine)
    local body = list("key=find-me")
    assert.are.same({ mine[4], mine[3], mine[2], mine[1] }, ids_of(body))
    for _, s in ipairs(body.sagas) do assert.are.equal("find-me", s.key) end
    assert.are.equal(cjson.null, body.next)
    -- with the other filters
    assert.are.same({ mine[4] }, ids_of(list("key=find-me&type=Gives")))
    assert.are.same({ mine[4] }, ids_of(list("key=find-me&status=compensated")))
    assert.are.same({ mine[3], mine[2], mine[1] }, ids_of(list("key=find-me&type=ByField&status=completed")))
    assert.are.same({ mine[1], mine[2], mine[3], mine[4] }, ids_of(list("key=find-me&order=asc")))
    assert.are.same({}, ids_of(list("key=nobody")))
    -- a key with characters a URL must escape
    local odd = host:start_saga("ByField", { order_id = "a b&c=d/é" })
    assert.are.same({ odd }, ids_of(list("key=" .. esc("a b&c=d/é"))))
  end)

  it("filters by type, status and creation time", function()
    local a = host:start_saga("Naps", { order_id = "t-1" })
    local b = host:start_saga("Gives", { order_id = "t-2" })
    H.sleep(0.05)
    local c = host:start_saga("ByField", { order_id = "t-3" })
    H.sleep(0.05)
    local d = host:start_saga("ByField", { order_id = "t-4" })
    host:wait(a, "running")
    host:wait(b)
    host:wait(d)
    assert.are.same({ a }, ids_of(list("type=Naps&status=running")))
    for _, s in ipairs(list("status=compensated&limit=1000").sagas) do assert.are.equal("compensated", s.status) end
    local sc, sd = host:saga(c), host:saga(d)
    assert.is_true(ms_of(sc.created_at) < ms_of(sd.created_at))
    -- since is inclusive, until exclusive; ISO 8601 UTC with or without ms, or epoch ms
    assert.are.same({ d, c }, ids_of(list("type=ByField&since=" .. sc.created_at)))
    assert.are.same({ d, c }, ids_of(list("type=ByField&since=" .. ms_of(sc.created_at))))
    assert.are.same({ c }, ids_of(list("type=ByField&since=" .. sc.created_at .. "&until=" .. sd.created_at)))
    assert.are.same({ c }, ids_of(list("type=ByField&since=" .. ms_of(sc.created_at) .. "&until=" .. ms_of(sd.created_at))))
    assert.are.same({ d }, ids_of(list("since=" .. sd.created_at)))
    assert.are.same({ c, d }, ids_of(list("since=" .. sc.created_at .. "&order=asc")))
    local before_c = list("until=" .. sc.created_at .. "&limit=1000")
    for _, s in ipairs(before_c.sagas) do
      assert.is_true(ms_of(s.created_at) < ms_of(sc.created_at))
      assert.are_not.equal(c, s.id)
    end
    assert.is_true(#before_c.sagas >= 2)
    -- a whole-second form, and the far past and future
    local whole = sc.created_at:gsub("%.%d+Z$", "Z")
    assert.is_true(#list("since=" .. whole).sagas >= 2)
    assert.are.same({}, ids_of(list("since=2999-01-01T00:00:00Z")))
    assert.are.same({}, ids_of(list("until=1970-01-01T00:00:00Z")))
    assert.is_true(#list("since=1970-01-01T00:00:00Z&limit=1000").sagas >= 4)
    -- an offset other than Z
    local plus = list("type=ByField&since=" .. esc(sc.created_at:gsub("Z$", "+00:00")))
    assert.are.same({ d, c }, { plus.sagas[1].id, plus.sagas[2].id })
    host:post("/v1/sagas/" .. a .. "/compensate", { reason = "test over" })
  end)

  it("lists newest first by default, oldest first with order=asc", function()
    local body = list("limit=1000")
    assert.is_true(#body.sagas >= 10)
    for i = 2, #body.sagas do
      local p, s = body.sagas[i - 1], body.sagas[i]
      assert.is_true(p.id > s.id, "ids descending")
      assert.is_true(ms_of(p.created_at) >= ms_of(s.created_at), "created_at descending")
      for _, k in ipairs({ "id", "type", "key", "status", "definition_version", "created_at", "updated_at", "error" }) do
        assert.is_not_nil(s[k], k)
      end
    end
    local asc = list("limit=1000&order=asc")
    assert.are.equal(#body.sagas, #asc.sagas)
    for i = 1, #asc.sagas do assert.are.equal(body.sagas[#body.sagas + 1 - i].id, asc.sagas[i].id) end
    assert.are.same(ids_of(body), ids_of(list("limit=1000&order=desc")))
  end)

  it("pages with a cursor through a few hundred sagas: each once, in order, either way", function()
    local n = 300
    local cmd = string.format("for i in $(seq 1 %d); do curl -s -o /dev/null -w '%%{http_code}\\n' -X POST -H "
      .. "'Content-Type: application/json' --data-binary \"{\\\"group\\\":\\\"g$((i %% 3))\\\",\\\"i\\\":$i}\" %s; done",
      n, H.q(host.url .. "/v1/sagas/Many"))
    local _, out = H.sh(cmd)
    assert.are.equal(n, H.count(out, "201"))
    local function check(got, pages, desc, limit)
      assert.are.equal(n, #got)
      assert.are.equal(math.ceil(n / limit), pages)
      local seen = {}
      for i, s in ipairs(got) do
        assert.is_nil(seen[s.id], "seen twice: " .. s.id)
        seen[s.id] = true
        assert.are.equal("Many", s.type)
        if i > 1 then
          if desc then assert.is_true(got[i - 1].id > s.id) else assert.is_true(got[i - 1].id < s.id) end
        end
      end
    end
    local got, pages = all_pages("type=Many", 37)
    check(got, pages, true, 37)
    got, pages = all_pages("type=Many&order=asc", 50)
    check(got, pages, false, 50)
    -- a client that still pages with after=: it continues the listing its first page began (newest
    -- first), and after= with a saga id lists oldest first from that id, as it always did
    got, pages = all_pages("type=Many", 64, "after")
    check(got, pages, true, 64)
    got, pages = all_pages("type=Many&order=asc", 64, "after")
    check(got, pages, false, 64)
    local oldest = list("type=Many&order=asc&limit=2").sagas
    local from = list("type=Many&limit=3&after=" .. oldest[1].id)
    assert.are.equal(oldest[2].id, from.sagas[1].id)
    assert.is_true(from.sagas[1].id < from.sagas[2].id)
    assert.are.equal("a." .. from.sagas[3].id, from.next)
    -- a page size that divides the total: the last full page says there is no next one
    got, pages = all_pages("type=Many", 100)
    check(got, pages, true, 100)
    -- with a key: a third of them
    got = all_pages("type=Many&key=g1", 30)
    assert.are.equal(n // 3, #got)
    for _, s in ipairs(got) do assert.are.equal("g1", s.key) end
    -- the whole store, newest first, without filters: every Many saga among them
    got = all_pages("status=completed", 250)
    local many = 0
    for i, s in ipairs(got) do
      if s.type == "Many" then many = many + 1 end
      if i > 1 then assert.is_true(got[i - 1].id > s.id) end
    end
    assert.are.equal(n, many)
  end)

  it("answers malformed parameters with a 400 that names them", function()
    local cases = {
      { "since=yesterday", "since must be a UTC time like 2026%-11%-30T12:00:00Z" },
      { "since=2026-11-30", "since must be" },
      { "since=2026-11-30T12:00:00", "since must be" },
      { "until=2026-13-01T00:00:00Z", "until must be" },
      { "until=2026-02-30T00:00:00Z", "until must be" },
      { "since=-5", "since must be" },
      { "cursor=abc", "malformed cursor" },
      { "cursor=01234567-89ab-7cde-8f01-23456789abcG", "malformed cursor" },
      { "after=nope", "malformed after" },
      { "cursor=x.01890000-0000-7000-8000-000000000000", "malformed cursor" },
      { "cursor=d.", "malformed cursor" },
      { "after=01890000-0000-7000-8000-000000000000&cursor=01890000-0000-7000-8000-000000000000", "not both" },
      { "after=01890000-0000-7000-8000-000000000000&order=desc", "continues a listing with order=asc" },
      { "cursor=d.01890000-0000-7000-8000-000000000000&order=asc", "continues a listing with order=desc" },
      { "limit=0", "limit must be an integer from 1 to 1000" },
      { "limit=1001", "limit must be" },
      { "limit=ten", "limit must be" },
      { "order=sideways", "order must be desc" },
      { "status=nope", "unknown status" },
      { "key=" .. string.rep("k", 201), "key must be 1 to 200 bytes" },
    }
    for _, c in ipairs(cases) do
      local code, body = host:get("/v1/sagas?" .. c[1])
      assert.are.equal(400, code, c[1])
      assert(type(body) == "table" and tostring(body.error):find(c[2]), c[1] .. ": " .. cjson.encode(body))
    end
    -- empty parameters are absent ones
    assert.are.equal(200, (host:get("/v1/sagas?key=&type=&status=&since=&until=&cursor=&order=")))
  end)

  it("counts the sagas of the whole store by status", function()
    local code, body = host:get("/v1/counts")
    assert.are.equal(200, code)
    local total = 0
    for _, st in ipairs(STATUSES) do
      assert.is_number(body.counts[st], st)
      total = total + body.counts[st]
      local n = #all_pages("status=" .. st, 1000)
      assert.are.equal(n, body.counts[st], st)
    end
    assert.are.equal(#all_pages("order=asc", 1000), total)
    code, body = host:get("/v1/counts?type=Many")
    assert.are.equal(200, code)
    assert.are.same({ running = 0, compensating = 0, completed = 300, compensated = 0, compensation_failed = 0,
                      resolved = 0, terminated = 0 }, body.counts)
    code, body = host:get("/v1/counts?type=NoSuchType")
    assert.are.equal(200, code)
    assert.are.equal(0, body.counts.completed)
    assert.are.equal(405, (host:post("/v1/counts", {})))
  end)

  it("the CLI lists by key with the key column, newest first, and pages with --cursor", function()
    local ids = {}
    for i = 1, 5 do ids[i] = host:start_saga("ByField", { order_id = "cli-key" }) end
    host:wait_all(ids)
    local code, out, err = H.cli("list --key cli-key", host.url)
    assert.are.equal(0, code, err)
    assert.matches("^ID%s+TYPE%s+KEY%s+STATUS%s+CREATED%s+UPDATED\n", out)
    local rows = {}
    for line in out:gmatch("[^\n]+") do
      local id, typ, key, status = line:match("^(%x[%x%-]+)%s+(%S+)%s+(%S+)%s+(%S+)")
      if id then rows[#rows + 1] = id; assert.are.equal("cli-key", key); assert.are.equal("ByField", typ)
        assert.are.equal("completed", status) end
    end
    assert.are.same({ ids[5], ids[4], ids[3], ids[2], ids[1] }, rows)
    assert.are.equal("", err)
    -- a page at a time
    code, out, err = H.cli("list --key cli-key --limit 2", host.url)
    assert.are.equal(0, code)
    local cursor = err:match("%(more: add %-%-cursor (%S+)%)")
    assert.are.equal("d." .. ids[4], cursor)
    assert.matches(ids[5], out, 1, true)
    code, out, err = H.cli("list --key cli-key --limit 2 --cursor " .. cursor, host.url)
    assert.are.equal(0, code)
    assert.matches(ids[3], out, 1, true)
    assert.matches(ids[2], out, 1, true)
    assert.is_nil(out:find(ids[4], 1, true))
    cursor = err:match("%(more: add %-%-cursor (%S+)%)")
    code, out, err = H.cli("list --key cli-key --limit 2 --cursor " .. cursor, host.url)
    assert.are.equal(0, code)
    assert.matches(ids[1], out, 1, true)
    assert.are.equal("", err, "the last page says nothing more")
    -- oldest first, the other filters, JSON
    code, out = H.cli("list --key cli-key --oldest --limit 1 --type ByField --status completed --json", host.url)
    assert.are.equal(0, code)
    local j = cjson.decode(out)
    assert.are.equal(ids[1], j.sagas[1].id)
    assert.are.equal("a." .. ids[1], j.next)
    code, out = H.cli("list --key cli-key --since " .. host:saga(ids[3]).created_at .. " --json", host.url)
    assert.are.equal(0, code)
    assert.are.same({ ids[5], ids[4], ids[3] }, ids_of(cjson.decode(out)))
    -- the old --after still works
    code, out, err = H.cli("list --key cli-key --limit 3 --after " .. ids[1], host.url)
    assert.are.equal(0, code)
    assert.matches(ids[2], out, 1, true)
    assert.matches("%(more: add %-%-after a%." .. ids[4]:gsub("%-", "%%-") .. "%)", err)
    -- the host's 400 is the CLI's error
    code, _, err = H.cli("list --since yesterday", host.url)
    assert.are.equal(1, code)
    assert.matches("since must be", err)
    code, _, err = H.cli("list --after " .. ids[1] .. " --cursor " .. ids[2], host.url)
    assert.are.equal(2, code)
    assert.matches("give --cursor or --after (deprecated), not both", err, 1, true)
    -- show has the key
    code, out = H.cli("show " .. ids[1], host.url)
    assert.are.equal(0, code)
    assert.are.equal("cli-key", cjson.decode(out).key)
    code, out = H.cli("list --help")
    assert.are.equal(0, code)
    for _, flag in ipairs({ "--key", "--type", "--status", "--since", "--until", "--oldest", "--limit", "--cursor" }) do
      assert.matches(flag, out, 1, true)
    end
  end)
end)
