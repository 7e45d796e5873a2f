---@meta saga
-- LuaLS annotations of sagahost's `saga` module and of `ctx` (docs/lua-api.md). Written by
-- `sagahost types DIR`; for the editor only: the host never loads this file.

---A duration: a number of seconds (`1.5`) or a string `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"2d"`.
---@alias saga.Duration number|string

---A retry policy. Only retryable failures are retried (an `error(...)`, a timeout, an error reply with
---`retryable = true`). Defaults: actions 3 attempts, 100ms, 5s; compensations 10 attempts, 200ms, 30s.
---@class saga.RetryPolicy
---@field attempts? integer total attempts, >= 1 (actions: 3, compensations: 10)
---@field backoff? "fixed"|"exponential" default "exponential"
---@field initial? saga.Duration the first delay (actions: 100ms, compensations: 200ms)
---@field max? saga.Duration the cap of the delay (actions: 5s, compensations: 30s)
---@field multiplier? number default 2
---@field jitter? boolean each delay drawn from [delay/2, delay]; default true

---A step of a saga.
---@class saga.Step
---@field name string unique within the saga
---@field action fun(ctx: saga.Ctx) the work (required)
---@field compensate? fun(ctx: saga.Ctx) undoes the action; also runs for an attempt of the action that failed after some of its calls completed (`ctx.partial`)
---@field compensate_partial? boolean `false`: do not run `compensate` for a failed attempt's completed calls (default true)
---@field timeout? saga.Duration per attempt: an attempt that takes longer fails as a retryable `timeout`
---@field retry? saga.RetryPolicy overrides the saga's `retry` for this step
---@field compensate_retry? saga.RetryPolicy overrides the saga's `compensate_retry` for this step
---@field description? string free text

---What `saga.define` takes.
---@class saga.Definition
---@field name string the saga type (letters, digits, `_ . -`), unique across all files
---@field steps saga.Step[] run in order
---@field timeout? saga.Duration whole-saga deadline: when it passes, the forward path stops and the saga compensates
---@field retry? saga.RetryPolicy default retry policy of the actions
---@field compensate_retry? saga.RetryPolicy default retry policy of the compensations
---@field description? string free text
---@field key? string|fun(input: table): (string|number|nil) the business key: an input field's name, or a function of the input

---@class saga.BreakerSettings
---@field failure_rate? number the breaker opens when this share of the calls in the window failed; 0 turns it off
---@field min_calls? integer ... once at least this many calls are in the window
---@field window? saga.Duration the counting window
---@field open_for? saga.Duration how long it stays open before one call goes through as a probe

---What an `input` function of a schedule gets at each fire.
---@class saga.Fire
---@field schedule string the schedule's name
---@field time integer the fire time, ms since the epoch
---@field missed boolean true for a catch-up fire

---What `saga.schedule` takes.
---@class saga.Schedule
---@field name string 1 to 100 letters, digits, `_`, `.`, `-`; unique among the loaded files
---@field cron string 5 fields: minute hour day-of-month month day-of-week
---@field saga string the saga type each fire starts
---@field input? table|fun(fire: saga.Fire): table the input of every fire, or a function called at each fire (default {})
---@field catch_up? "one"|"all"|"none" fire times missed while no host ran (default "one")
---@field timezone? "UTC"|"local" default "UTC"

---The `msg` a participant's handler gets.
---@class saga.Message
---@field message_id string `<saga id>.<step>.<a|c|p>.<attempt>.<seq>`: the idempotency key of the side effect
---@field saga_id string
---@field service string
---@field command string

---An error a step can raise: `error{ message = "...", retryable = false }` gives up at once.
---@class saga.Error
---@field message string
---@field retryable? boolean

---A call of a failed attempt that completed (`ctx.journal`, with `ctx.partial`).
---@class saga.JournalEntry
---@field seq integer the operation's number in the attempt
---@field service string
---@field command string
---@field result table the reply

---@class saga.CallOptions
---@field timeout? saga.Duration the call's own timeout (a timeout is retryable)

---@class saga.WaitOptions
---@field timeout? saga.Duration after it, `ctx:wait` returns nil

---@class saga.RunOptions
---@field id? string|integer the child's idempotency key (1 to 200 bytes, or an integer)

---The outcome of one call or branch with `settle = true`.
---@class saga.Outcome
---@field ok boolean
---@field value? any the result when ok
---@field error? string why it failed
---@field retryable? boolean

---`ctx:all`'s argument: the branch functions, and `settle = true` to get outcomes instead of a raise.
---@class saga.AllSpec: { [integer]: fun(): any }
---@field settle? boolean

---One call of `ctx:call_all`: `{service, command, payload [, {timeout = d}]}`.
---@alias saga.CallSpec { [1]: string, [2]: string, [3]: table?, [4]: saga.CallOptions? }

---`ctx:call_all`'s argument: the calls, and `settle = true` to get outcomes instead of a raise.
---@class saga.CallAllSpec: { [integer]: saga.CallSpec }
---@field settle? boolean

---The context of a step attempt (docs/lua-api.md, "The context: ctx").
---`call`, `send`, `publish`, `sleep`, `wait`, `now`, `uuid` and `run` are durable operations, journaled.
---@class saga.Ctx
---@field id string the saga id
---@field type string the saga type
---@field input table the start input (read-only: writing raises)
---@field data table persisted when each step completes; compensations see it too
---@field step string the current step's name
---@field phase "action"|"compensate"
---@field attempt integer the attempt number, 1 on the first
---@field partial? boolean in `compensate`: true when it runs for an action attempt that failed after some of its calls completed
---@field journal? saga.JournalEntry[] with `ctx.partial`: the calls of the failed attempt that completed, in order
local Ctx = {}

---Request/reply: returns the reply table; raises on an error reply (retryable as the reply says) or on the
---timeout (retryable).
---@param service string
---@param command string
---@param payload? table
---@param opts? saga.CallOptions
---@return table reply
function Ctx:call(service, command, payload, opts) end

---Fan-out: runs the functions concurrently, their `ctx:call`s in flight together; returns their results
---in order. With `settle = true` each result is a `saga.Outcome` and nothing is raised.
---@param spec saga.AllSpec
---@return any ...
function Ctx:all(spec) end

---`ctx:all` of a list of calls `{service, command, payload [, opts]}`: returns their replies in order
---(`saga.Outcome`s with `settle = true`).
---@param spec saga.CallAllSpec
---@return any ...
function Ctx:call_all(spec) end

---Fire and forget: a command with no reply.
---@param service string
---@param command string
---@param payload? table
function Ctx:send(service, command, payload) end

---An event on the `saga.events` exchange, routing key `topic.event`.
---@param topic string
---@param event string
---@param payload? table
function Ctx:publish(topic, event, payload) end

---A durable sleep: survives restarts, keeps its original due time.
---@param d saga.Duration
function Ctx:sleep(d) end

---Waits durably for the signal `name` and returns its payload; nil once the timeout passed.
---@param name string
---@param opts? saga.WaitOptions
---@return any|nil payload
function Ctx:wait(name, opts) end

---Seconds since the epoch (with milliseconds), journaled.
---@return number
function Ctx:now() end

---A unique id (UUIDv7), journaled.
---@return string
function Ctx:uuid() end

---A log line tagged with the saga, step and attempt.
---@param ... any
function Ctx:log(...) end

---Gives up now (no retry) and compensates.
---@param reason? string
function Ctx:fail(reason) end

---Starts a child saga and waits for it: returns its `ctx.data`; raises (not retryable) if it ends
---compensated, compensation_failed, resolved or terminated.
---@param type string the child's saga type
---@param input? table
---@param opts? saga.RunOptions
---@return table data
function Ctx:run(type, input, opts) end

---@class saga.json
local json = {}

---@param v any
---@return string
function json.encode(v) end

---@param s string
---@return any
function json.decode(s) end

---The `saga` module: `local saga = require "saga"`.
---@class saga
---@field json saga.json JSON encode/decode (also `require "json"`)
local saga = {}

---Declares a saga type (at the top level of a script file).
---@param spec saga.Definition
function saga.define(spec) end

---Makes this host a participant: answers `service.command`. The return value (a table, or nothing for
---`{}`) is the ok reply; `error(...)` is the error reply (`error{message = ..., retryable = false}` for a
---permanent one). Runs once per message id.
---@param service string
---@param command string
---@param fn fun(payload: table, msg: saga.Message): table?
function saga.handle(service, command, fn) end

---Sets the circuit breaker of a service this host calls; keys left out keep the host's `--breaker-*` flags.
---@param service string
---@param settings saga.BreakerSettings
function saga.breaker(service, settings) end

---Starts a saga of a type on a cron schedule (at the top level of a script file).
---@param spec saga.Schedule
function saga.schedule(spec) end

---A duration in seconds.
---@param d saga.Duration
---@return number seconds
function saga.duration(d) end

return saga
