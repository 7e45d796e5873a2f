---@meta saga.testing
-- LuaLS annotations of sagahost's testing kit, `require "saga.testing"` in a busted spec
-- (docs/testing.md). Written by `sagahost types DIR`; for the editor only.

---@class saga.testing.EnvOptions
---@field scripts? string the script directory (`sagahost test` sets $SAGAHOST_SCRIPTS, the default)
---@field start? string|integer the virtual clock's start: RFC 3339 or ms since the epoch (default "2026-01-01T00:00:00Z")
---@field handlers? boolean keep the scripts' own `saga.handle` participants (default true); mocks override them

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

---@class saga.testing.Faults
---@field duplicate? number probability that a message is delivered twice
---@field drop? number probability that a message is dropped (and re-sent later, same message id)
---@field delay? { [1]: integer, [2]: integer } each message delayed by a time drawn from [min, max] ms
---@field reorder? boolean deliver messages out of order
---@field crash_every? integer crash the host (as kill -9) at random points, about every n operations, and reopen it from the store
---@field seed? integer the seed of every random choice: the same seed, the same faults

---A saga started by `env:start`.
---@class saga.testing.Handle
---@field id string the saga id
local Handle = {}

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

---The calls this saga made to that service (and command).
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
---@param fn table|fun(payload: table, msg: saga.Message): any
---@return saga.testing.Mock
function Env:mock(service, command, fn) end

---Starts a saga and runs until idle.
---@param type string
---@param input? table
---@param opts? saga.testing.StartOptions
---@return saga.testing.Handle
function Env:start(type, input, opts) end

---All sagas' calls to that service (and command).
---@param service string
---@param command? string
---@return saga.testing.Call[]
function Env:calls(service, command) end

---Sends a signal to a saga (its `ctx:wait(name)` gets the payload).
---@param saga string|saga.testing.Handle the saga id or its handle
---@param name string
---@param payload? table
function Env:signal(saga, name, payload) end

---Moves the virtual clock, firing every timer due on the way in due order, and runs until idle after each.
---@param d string|integer a duration ("30s") or ms
function Env:advance(d) end

---Runs everything runnable without time passing; returns the number of live sagas.
---@return integer live
function Env:run_until_idle() end

---The virtual time, ms since the epoch.
---@return integer
function Env:now() end

---Fault injection on the in-process transport, reproducible from `seed`.
---@param faults saga.testing.Faults
function Env:faults(faults) end

---The seed in use (printed by the kit when an assertion inside `env:check` fails).
---@return integer
function Env:seed() end

function Env:close() end

---@class saga.testing
---@field NO_REPLY any a mock's return value: take the command, never answer
local testing = {}

---@param opts? saga.testing.EnvOptions
---@return saga.testing.Env
function testing.env(opts) end

return testing
