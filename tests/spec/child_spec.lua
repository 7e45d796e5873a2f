-- Child sagas (ctx:run): data returned up two levels, parent and children in the API, a parent's
-- compensation reaching its children (deepest first), a failed child as an error the parent catches,
-- kill -9 while a child sleeps, and a child shared through {id = key}.
local H = require "helper"
local cjson = require "cjson"

local SCRIPT = [[
local saga = require "saga"

-- what ran and what was undone, in order, per test tag
local log = {}
saga.handle("audit", "Add", function(p)
  print("AUDIT " .. p.tag .. " " .. p.what)
  log[p.tag] = log[p.tag] or {}
  table.insert(log[p.tag], p.what)
  return {}
end)
saga.handle("audit", "Get", function(p) return { log = table.concat(log[p.tag] or {}, ",") } end)

local function audit(ctx, what) ctx:call("audit", "Add", { tag = ctx.input.tag, what = what }) end

saga.define {
  name = "ReadAudit",
  steps = { { name = "Read", action = function(ctx) ctx.data.log = ctx:call("audit", "Get", { tag = ctx.input.tag }).log end } },
}

saga.define {
  name = "Label",
  steps = {
    { name = "Print",
      action = function(ctx)
        if ctx.input.fail_label then ctx:fail("printer jammed") end
        audit(ctx, "Label.Print")
        ctx.data.label = "L-" .. ctx.input.order
      end,
      compensate = function(ctx)
        if ctx.input.comp_sleep then ctx:sleep(ctx.input.comp_sleep) end
        audit(ctx, "-Label.Print")
      end },
    { name = "Attach",
      action = function(ctx)
        if ctx.input.label_sleep then ctx:sleep(ctx.input.label_sleep) end
        ctx.data.attached = true
      end,
      compensate = function(ctx) audit(ctx, "-Label.Attach") end },
  },
}

saga.define {
  name = "Shipping",
  key = "order", -- a child's business key is computed as for any start
  steps = {
    { name = "Book",
      action = function(ctx)
        if ctx.input.sleep then ctx:sleep(ctx.input.sleep) end
        audit(ctx, "Shipping.Book")
        ctx.data.booking = "B-" .. ctx.input.order
      end,
      compensate = function(ctx) audit(ctx, "-Shipping.Book") end },
    { name = "MakeLabel",
      action = function(ctx)
        local l = ctx:run("Label", { order = ctx.input.order, tag = ctx.input.tag, fail_label = ctx.input.fail_label,
                                     label_sleep = ctx.input.label_sleep, comp_sleep = ctx.input.comp_sleep })
        ctx.data.label = l.label
      end,
      compensate = function(ctx) audit(ctx, "-Shipping.MakeLabel") end },
  },
}

saga.define {
  name = "Order",
  steps = {
    { name = "Reserve", action = function(ctx) audit(ctx, "Order.Reserve") end,
      compensate = function(ctx) audit(ctx, "-Order.Reserve") end },
    { name = "Ship",
      action = function(ctx)
        local s = ctx:run("Shipping", { order = ctx.input.order, tag = ctx.input.tag, sleep = ctx.input.sleep,
                                        fail_label = ctx.input.fail_label, label_sleep = ctx.input.label_sleep,
                                        comp_sleep = ctx.input.comp_sleep })
        ctx.data.booking, ctx.data.label = s.booking, s.label
      end,
      compensate = function(ctx) audit(ctx, "-Order.Ship") end },
    { name = "Charge", action = function(ctx)
        if ctx.input.fail_charge then ctx:fail("card declined") end
        ctx.data.charged = true
      end },
  },
}

-- a step with a child and no compensate function of its own
saga.define {
  name = "Wrapper",
  steps = {
    { name = "Run", action = function(ctx) ctx.data.label = ctx:run("Label", { order = "w", tag = ctx.input.tag }).label end },
    { name = "Wait", action = function(ctx) ctx:sleep("60s") end },
  },
}

-- a step that runs a child and then fails once: its failed attempt's child is compensated before the retry
saga.define {
  name = "Flaky",
  steps = {
    { name = "Ship", retry = { attempts = 2, initial = "10ms", jitter = false },
      action = function(ctx)
        local l = ctx:run("Label", { order = "f" .. ctx.attempt, tag = ctx.input.tag })
        if ctx.attempt == 1 then error("lost the parcel") end
        ctx.data.label = l.label
      end },
  },
}

-- the same with a keyed child: the retry gets the same child, left as it was
saga.define {
  name = "KeyedFlaky",
  steps = {
    { name = "Ship", retry = { attempts = 2, initial = "10ms", jitter = false },
      action = function(ctx)
        local l = ctx:run("Label", { order = "k", tag = ctx.input.tag }, { id = "kf-" .. ctx.id })
        if ctx.attempt == 1 then error("lost the parcel") end
        ctx.data.label = l.label
      end },
  },
}

-- a saga that starts itself at once, without end
saga.define {
  name = "Forever",
  steps = { { name = "Again", action = function(ctx) ctx:run("Forever", { n = (ctx.input.n or 0) + 1 }) end } },
}

-- a failed child caught by its parent
saga.define {
  name = "Careful",
  steps = {
    { name = "TryLabel", action = function(ctx)
        local ok, err = pcall(ctx.run, ctx, "Label", { order = "x", tag = ctx.input.tag, fail_label = true })
        ctx.data.ok = ok
        ctx.data.err = tostring(err)
      end },
  },
}

-- a child shared by key: two parents with the same ref get one child
saga.define {
  name = "Ledger",
  steps = { { name = "Post", action = function(ctx)
      audit(ctx, "Ledger.Post")
      ctx.data.entry = "E-" .. ctx.input.ref
    end } },
}
saga.define {
  name = "SlowLedger",
  steps = { { name = "Post", action = function(ctx)
      ctx:sleep(ctx.input.sleep)
      ctx.data.entry = "S-" .. ctx.input.ref
    end } },
}
saga.define {
  name = "SlowPayer",
  steps = { { name = "Pay", action = function(ctx)
      ctx.data.ledger = ctx:run("SlowLedger", { ref = ctx.input.ref, sleep = ctx.input.sleep }, { id = "slow-" .. ctx.input.ref })
    end } },
}
saga.define {
  name = "Payer",
  steps = { { name = "Pay", action = function(ctx)
      ctx.data.ledger = ctx:run("Ledger", { ref = ctx.input.ref, tag = ctx.input.tag }, { id = "ledger-" .. ctx.input.ref })
      -- the same key again in the same step: the same child, answered at once
      ctx.data.again = ctx:run("Ledger", { ref = ctx.input.ref, tag = ctx.input.tag }, { id = "ledger-" .. ctx.input.ref })
    end } },
}
]]

local function audit_log(host, tag)
  local id = host:start_saga("ReadAudit", { tag = tag })
  return host:wait(id).data.log
end

local function list(host, query)
  local code, body = host:get("/v1/sagas?" .. query)
  assert.are.equal(200, code)
  return body.sagas
end

describe("child sagas", function()
  local host
  before_each(function()
    host = H.host { name = "child", scripts = { ["c.lua"] = SCRIPT } }
    host:start()
  end)
  after_each(function() host:stop() end)

  it("nested two deep: data comes back up, and each level shows its parent and children", function()
    local id = host:start_saga("Order", { order = "o-1", tag = "nest" })
    local o = host:wait(id)
    assert.are.equal("completed", o.status)
    assert.are.equal("B-o-1", o.data.booking)
    assert.are.equal("L-o-1", o.data.label)
    assert.is_true(o.data.charged)
    assert.are.equal(cjson.null, o.parent)
    assert.are.equal(1, #o.children)
    local sc = o.children[1]
    assert.are.equal("Shipping", sc.type)
    assert.are.equal("completed", sc.status)
    assert.are.equal(2, sc.step)

    local s = host:saga(sc.id)
    assert.are.equal("completed", s.status)
    assert.are.equal(id, s.parent)
    assert.are.equal("o-1", s.key)
    assert.are.equal(1, #s.children)
    assert.are.equal("Label", s.children[1].type)
    assert.are.equal("completed", s.children[1].status)

    local l = host:saga(s.children[1].id)
    assert.are.equal(sc.id, l.parent)
    assert.are.same({}, l.children)
    assert.are.equal("L-o-1", l.data.label)

    -- the list filter
    local kids = list(host, "parent=" .. id)
    assert.are.equal(1, #kids)
    assert.are.equal(sc.id, kids[1].id)
    assert.are.equal(id, kids[1].parent)
    assert.are.equal("Order.Reserve,Shipping.Book,Label.Print", audit_log(host, "nest"))
  end)

  it("a parent's compensation reaches its children, deepest first, before its own compensations", function()
    local id = host:start_saga("Order", { order = "o-2", tag = "comp", fail_charge = true })
    local o = host:wait(id)
    assert.are.equal("compensated", o.status)
    assert.are.equal("Order.Reserve,Shipping.Book,Label.Print," ..
                     "-Label.Attach,-Label.Print,-Shipping.MakeLabel,-Shipping.Book,-Order.Ship,-Order.Reserve",
                     audit_log(host, "comp"))
    -- each child went completed -> compensating -> compensated, saying why
    local s = host:saga(o.children[1].id)
    assert.are.equal("compensated", s.status)
    assert.are.equal("compensated", o.children[1].status)
    local found = false
    for _, st in ipairs(s.steps) do
      if st.phase == "saga" and st.error == "compensated by its parent saga " .. id then found = true end
    end
    assert.is_true(found, "Shipping's history names its parent: " .. cjson.encode(s.steps))
    assert.are.same({ "Book:action:completed", "MakeLabel:action:completed", "MakeLabel:compensate:completed",
                      "Book:compensate:completed" }, H.history(s))
    local l = host:saga(s.children[1].id)
    assert.are.equal("compensated", l.status)
    assert.are.equal("compensated by its parent saga " .. s.id, l.error)
  end)

  it("a child still running when its parent is compensated by an operator gives up", function()
    local id = host:start_saga("Order", { order = "o-3", tag = "op", label_sleep = "60s" })
    -- Label sleeps in its second step
    local deadline = os.time() + 10
    local label
    repeat
      local ls = list(host, "type=Label&status=running")
      for _, x in ipairs(ls) do label = x end
      if not label then H.sleep(0.05) end
    until label or os.time() > deadline
    assert.is_truthy(label, "the Label child never ran")
    local code = host:post("/v1/sagas/" .. id .. "/compensate", { reason = "customer cancelled", by = "spec" })
    assert.are.equal(200, code)
    local o = host:wait(id)
    assert.are.equal("compensated", o.status)
    assert.are.equal("compensated", host:wait(label.id).status)
    assert.are.equal("compensated", host:wait(o.children[1].id).status)
    -- Label undid its completed step, then Shipping its own, then the order its own
    assert.are.equal("Order.Reserve,Shipping.Book,Label.Print,-Label.Print,-Shipping.Book,-Order.Reserve",
                     audit_log(host, "op"))
  end)

  it("a step that started a child is compensated for it even without a compensate function; plan shows it", function()
    local id = host:start_saga("Wrapper", { tag = "wrap" })
    local deadline = os.time() + 10
    while host:saga(id).steps[2] == nil and os.time() < deadline do H.sleep(0.05) end
    local code, plan = host:get("/v1/sagas/" .. id .. "/plan")
    assert.are.equal(200, code)
    assert.is_true(plan.abortable)
    assert.are.same({ { step = 1, name = "Run" } }, plan.compensations)
    assert.are.equal(200, (host:post("/v1/sagas/" .. id .. "/compensate", { reason = "test", by = "spec" })))
    local w = host:wait(id)
    assert.are.equal("compensated", w.status)
    assert.are.equal("compensated", w.children[1].status)
    assert.are.equal("Label.Print,-Label.Attach,-Label.Print", audit_log(host, "wrap"))
  end)

  it("a child still running when its parent is terminated gives up; the parent compensates nothing", function()
    local id = host:start_saga("Order", { order = "o-8", tag = "term", label_sleep = "60s" })
    local deadline = os.time() + 10
    local label
    repeat
      for _, x in ipairs(list(host, "type=Label&status=running")) do label = x end
      if not label then H.sleep(0.05) end
    until label or os.time() > deadline
    assert.is_truthy(label, "the Label child never ran")
    assert.are.equal(200, (host:post("/v1/sagas/" .. id .. "/terminate", { reason = "duplicate order", by = "spec" })))
    local o = host:wait(id, "terminated")
    assert.are.equal("compensated", host:wait(label.id).status)
    assert.are.equal("compensated", host:wait(o.children[1].id).status)
    assert.is_truthy(host:saga(label.id).error:find("gave up", 1, true))
    -- the children undid what they had done; the order itself compensated nothing
    assert.are.equal("Order.Reserve,Shipping.Book,Label.Print,-Label.Print,-Shipping.Book", audit_log(host, "term"))
  end)

  it("a failed child is an error the parent catches with pcall; uncaught it fails the parent's step", function()
    local id = host:start_saga("Careful", { tag = "catch" })
    local c = host:wait(id)
    assert.are.equal("completed", c.status)
    assert.is_false(c.data.ok)
    local child = c.children[1]
    assert.are.equal("Label", child.type)
    assert.are.equal("compensated", child.status)
    assert.is_truthy(c.data.err:find("child saga Label " .. child.id .. " ended compensated", 1, true), c.data.err)
    assert.is_truthy(c.data.err:find("printer jammed", 1, true), c.data.err)

    -- uncaught, two deep: Label fails, Shipping gives up, the order gives up
    local oid = host:start_saga("Order", { order = "o-4", tag = "uncaught", fail_label = true })
    local o = host:wait(oid)
    assert.are.equal("compensated", o.status)
    assert.is_truthy(o.error:find("child saga Shipping", 1, true), o.error)
    assert.are.equal("Order.Reserve,Shipping.Book,-Shipping.Book,-Order.Reserve", audit_log(host, "uncaught"))
    assert.are.equal("compensated", o.children[1].status)
  end)

  it("a child of an attempt that failed afterwards is compensated before the step is retried", function()
    local id = host:start_saga("Flaky", { tag = "flaky" })
    local f = host:wait(id)
    assert.are.equal("completed", f.status)
    assert.are.equal("L-f2", f.data.label)
    assert.are.equal(2, #f.children)
    assert.are.equal("compensated", f.children[1].status)
    assert.are.equal("completed", f.children[2].status)
    assert.are.equal("Label.Print,-Label.Attach,-Label.Print,Label.Print", audit_log(host, "flaky"))
  end)

  it("with {id = key} the retry of a failed attempt gets the same child, not compensated", function()
    local id = host:start_saga("KeyedFlaky", { tag = "kflaky" })
    local f = host:wait(id)
    assert.are.equal("completed", f.status)
    assert.are.equal("L-k", f.data.label)
    assert.are.equal(1, #f.children)
    assert.are.equal("completed", f.children[1].status)
    assert.are.equal("Label.Print", audit_log(host, "kflaky"))
  end)

  it("a saga that starts itself at once fails at a bounded depth; the host stays up", function()
    local id = host:start_saga("Forever", {})
    local f = host:wait(id)
    assert.are.equal("compensated", f.status)
    assert.is_truthy(f.error:find("child saga Forever", 1, true), f.error)
    assert.is_true(host:alive())
    -- the deepest one names the limit
    local deepest = list(host, "type=Forever&limit=1")[1]
    assert.is_truthy(host:saga(deepest.id).error:find("nested more than 32 deep", 1, true))
    assert.are.equal(33, #list(host, "type=Forever"))
  end)

  it("kill -9 while the child sleeps: after the restart the parent gets its data and no second child starts", function()
    local id = host:start_saga("Order", { order = "o-5", tag = "crash", sleep = "3s" })
    local deadline = os.time() + 10
    while #list(host, "type=Shipping&parent=" .. id) == 0 and os.time() < deadline do H.sleep(0.05) end
    H.sleep(0.5)
    host:kill9()
    H.sleep(1)
    host:start()
    local o = host:wait(id, nil, 30)
    assert.are.equal("completed", o.status)
    assert.are.equal("B-o-5", o.data.booking)
    assert.are.equal("L-o-5", o.data.label)
    assert.are.equal(1, #list(host, "type=Shipping&parent=" .. id))
    assert.are.equal(1, #o.children)
    assert.are.equal(1, #list(host, "type=Label&parent=" .. o.children[1].id))
    -- each step ran once across both runs of the host (the log of the first run ends at the kill)
    local all = host:log()
    assert.are.equal(1, H.count(all, "AUDIT crash Order.Reserve"))
    assert.are.equal(1, H.count(all, "AUDIT crash Shipping.Book"))
    assert.are.equal(1, H.count(all, "AUDIT crash Label.Print"))
  end)

  it("a parent waiting on a child keeps no coroutine for long", function()
    local id = host:start_saga("Order", { order = "o-6", tag = "evict", sleep = "4s" })
    local deadline = H.now() + 3.5
    local co
    repeat
      local code, h = host:get("/healthz")
      assert.are.equal(200, code)
      co = h.coroutines
      if co ~= 0 then H.sleep(0.1) end
    until co == 0 or H.now() > deadline
    assert.are.equal(0, co, "coroutines still held while the parent waits")
    assert.are.equal("running", host:saga(id).status)
    local o = host:wait(id)
    assert.are.equal("completed", o.status)
    assert.are.equal("L-o-6", o.data.label)
  end)

  it("kill -9 while a child compensates for its parent: after the restart each compensation runs once, in order", function()
    local id = host:start_saga("Order", { order = "o-7", tag = "ccrash", fail_charge = true, comp_sleep = "3s" })
    host:wait_log("AUDIT ccrash %-Label%.Attach", 10)
    H.sleep(0.5)
    host:kill9()
    H.sleep(1)
    host:start()
    local o = host:wait(id, nil, 30)
    assert.are.equal("compensated", o.status)
    local all = host:log()
    local order = {}
    for what in all:gmatch("AUDIT ccrash (%S+)") do order[#order + 1] = what end
    assert.are.equal("Order.Reserve,Shipping.Book,Label.Print,-Label.Attach,-Label.Print,-Shipping.MakeLabel," ..
                     "-Shipping.Book,-Order.Ship,-Order.Reserve", table.concat(order, ","))
    assert.are.equal("compensated", host:saga(o.children[1].id).status)
  end)

  it("{id = key}: parents with the same key share one child", function()
    local a = host:start_saga("Payer", { ref = "r-1", tag = "key" })
    local pa = host:wait(a)
    assert.are.equal("completed", pa.status)
    local b = host:start_saga("Payer", { ref = "r-1", tag = "key" })
    local pb = host:wait(b)
    assert.are.equal("completed", pb.status)
    assert.are.equal("E-r-1", pa.data.ledger.entry)
    assert.are.same(pa.data.ledger, pa.data.again)
    assert.are.same(pa.data.ledger, pb.data.ledger)
    -- one Ledger saga, run once, the child of the first payer only
    local ledgers = list(host, "type=Ledger")
    assert.are.equal(1, #ledgers)
    assert.are.equal(a, ledgers[1].parent)
    assert.are.equal(1, #pa.children)
    assert.are.same({}, pb.children)
    assert.are.equal("ledger-r-1", host:saga(ledgers[1].id).idempotency_key)
    assert.are.equal("Ledger.Post", audit_log(host, "key"))
  end)

  it("several hosts: a parent waiting on a child another host owns goes on when that child ends", function()
    H.pg_only("hosts sharing a database")
    local dir = H.tmpdir("child-hosts")
    local db = H.db_for(dir, "shared.db")
    local a = H.host { name = "child-a", db = db, host_id = "child-a", scripts = { ["c.lua"] = SCRIPT } }
    local b = H.host { name = "child-b", db = db, host_id = "child-b", scripts = { ["c.lua"] = SCRIPT } }
    a:start()
    b:start()
    local ok, err = pcall(function()
      local p1 = a:start_saga("SlowPayer", { ref = "x-1", sleep = "3s" })
      local deadline = os.time() + 10
      while #list(a, "type=SlowLedger&parent=" .. p1) == 0 and os.time() < deadline do H.sleep(0.05) end
      -- the same child from a parent on the other host: it waits for host a's child
      local p2 = b:start_saga("SlowPayer", { ref = "x-1", sleep = "3s" })
      local s2 = b:wait(p2, nil, 20)
      local s1 = a:wait(p1, nil, 20)
      assert.are.equal("completed", s1.status)
      assert.are.equal("completed", s2.status)
      assert.are.equal("S-x-1", s2.data.ledger.entry)
      assert.are.same(s1.data.ledger, s2.data.ledger)
      local ledgers = list(a, "type=SlowLedger")
      assert.are.equal(1, #ledgers)
      assert.are.equal("child-a", H.sql(db, "SELECT owner FROM sagas WHERE id = '" .. ledgers[1].id .. "'"))
      assert.are.equal("child-b", H.sql(db, "SELECT owner FROM sagas WHERE id = '" .. p2 .. "'"))
    end)
    a:stop()
    b:stop()
    assert(ok, err)
  end)
end)
