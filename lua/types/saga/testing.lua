---@meta saga.testing
-- LuaLS annotations of sagahost's testing kit, `require "saga.testing"` in a busted spec
-- (docs/testing.md). Written by `sagahost types DIR`; for the editor only.

---@class saga.testing.EnvOptions
---@field scripts string the script directory (under `sagahost test`, $SAGAHOST_SCRIPTS holds the one it was given)
---@field start? string|integer the virtual clock's start: RFC 3339 or ms since the epoch (default "2026-01-01T00:00:00Z")
---@field handlers? boolean keep the scripts' own `saga.handle` participants (default true); mocks override them
---@field db? string the store's file (default a temporary file, removed by `env:close()`)

---What a mocked participant got: `msg` = `{ message_id, saga_id, service, command }`.
---@class saga.testing.Call
---@field payload table
---@field msg saga.Message

---@class saga.testing.Mock
local Mock = {}

---The calls this mock answered, one per message id, in order.
---@return saga.testing.Call[]
function Mock:calls() end

---A row of a saga's history.
---@class saga.testing.HistoryRow
---@field name string the step's name
---@field phase "action"|"compensate"|"saga"
---@field status string
---@field attempt integer
---@field error? string

---@class saga.testing.StartOptions
---@field key? string the idempotency key of the start

---@class saga.testing.SignalOptions
---@field key? string the signal's idempotency key

---@class saga.testing.Faults
---@field duplicate? number probability that a message is delivered twice
---@field drop? number probability that a message is dropped (and re-sent later, same message id)
---@field delay? { [1]: saga.Duration|integer, [2]: saga.Duration|integer } each message delayed by a time drawn from [min, max] (ms or durations)
---@field reorder? boolean deliver messages out of order
---@field crash_every? integer crash the host (as kill -9) at random points, on average every n delivered messages, and reopen it from the store
---@field seed? integer the seed of every random choice: the same seed, the same faults (default $SAGAHOST_TEST_SEED, else a fresh one)

---A saga started by `env:start`.
---@class saga.testing.Handle
---@field id string the saga id
---@field existed boolean the start's key named a saga started before
local Handle = {}

---The saga's error (why it failed or compensated), or nil.
---@return string?
function Handle:error() end

---"running" | "completed" | "compensated" | "compensation_failed" | ... (the names of GET /v1/sagas/{id})
---@return string
function Handle:status() end

---The saga's `ctx.data`.
---@return table
function Handle:data() end

---@return saga.testing.HistoryRow[]
function Handle:history() end

---One entry per step phase that ran (each attempt once), in execution order:
---`{ "Reserve:action", "Charge:action", "Reserve:compensate" }`.
---@return string[]
function Handle:trace() end

---This saga's commands to that service (and command) that reached a participant (mocked or a script's saga.handle).
---@param service string
---@param command? string
---@return saga.testing.Call[]
function Handle:calls(service, command) end

---An in-process engine on a temporary store with a virtual clock.
---@class saga.testing.Env
local Env = {}

---Replaces or adds a participant. `fn(payload, msg)` returns the ok reply (nil = {}); `error("text")` or
---`error{message = ..., retryable = false}` is the error reply; `return testing.NO_REPLY` takes the command
---and never answers. A plain table is always that reply.
---@param service string
---@param command string
---`fn` = nil removes the mock (and returns nil).
---@param fn? table|fun(payload: table, msg: saga.Message): any
---@return saga.testing.Mock
function Env:mock(service, command, fn) end

---Starts a saga and runs until idle.
---@param type string
---@param input? table
---@param opts? saga.testing.StartOptions
---@return saga.testing.Handle
function Env:start(type, input, opts) end

---Every saga's commands to that service (and command) that reached a participant.
---@param service string
---@param command? string
---@return saga.testing.Call[]
function Env:calls(service, command) end

---Sends a signal to a saga (its `ctx:wait(name)` gets the payload).
---Runs until idle; returns "delivered" (a `ctx:wait` took it), "kept" (until one does) or "duplicate".
---@param saga string|saga.testing.Handle the saga id or its handle
---@param name string
---@param payload? any
---@param opts? saga.testing.SignalOptions
---@return "delivered"|"kept"|"duplicate"
function Env:signal(saga, name, payload, opts) end

---A handle on a saga by its id.
---@param id string
---@return saga.testing.Handle
function Env:saga(id) end

---Moves the virtual clock, firing every timer due on the way in due order, and runs until idle after
---each; returns the number of live sagas.
---@param d string|integer a duration ("30s") or ms
---@return integer live
function Env:advance(d) end

---The earliest time something falls due (a timer, a delayed message), ms since the epoch, or nil.
---@return integer?
function Env:next_due() end

---Runs everything runnable without time passing; returns the number of live sagas.
---@return integer live
function Env:run_until_idle() end

---The virtual time, ms since the epoch.
---@return integer
function Env:now() end

---Fault injection on the in-process transport, reproducible from `seed`; nil turns it off.
---@param faults saga.testing.Faults?
function Env:faults(faults) end

---The seed of the faults in use (nil without faults).
---@return integer?
function Env:seed() end

---Runs fn(env); if it fails, prints the fault seed (so the run can be repeated) and raises the error again.
---@param fn fun(env: saga.testing.Env)
function Env:check(fn) end

---Crashes the host as kill -9 would (what is not committed is lost) and opens it again on its store.
function Env:crash() end

---The host's counters: live, completed, compensated, commits, delivered, duplicated, dropped, delayed,
---reordered, crashes, ... (summed over the env's life across crashes)
---@return table<string, integer>
function Env:stats() end

---Closes the host and removes its temporary store (also `local env <close> = testing.env{...}`).
function Env:close() end

---@class saga.testing
---@field NO_REPLY any a mock's return value: take the command, never answer
local testing = {}

---@param opts saga.testing.EnvOptions
---@return saga.testing.Env
function testing.env(opts) end

---ms since the epoch of an RFC 3339 time ("2026-01-01T00:00:00Z") or of a number.
---@param v string|number
---@return integer
function testing.time_ms(v) end

return testing
