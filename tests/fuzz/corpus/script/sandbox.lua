-- reaches for what the sandbox withholds, and loops at load: all must fail cleanly
local saga = require "saga"
assert(os == nil or os.execute == nil)
local ok = pcall(function() return io.open("/etc/passwd") end)
saga.define("Tiny", { steps = { { name = "a", run = function(ctx) return {} end } } })
for i = 1, 10 do local t = {} t[i] = string.rep("x", i) end
