-- GET /v0/entity?id=key<N>, N uniform in 1..keys (default 100000; the fill wrote them all, so
-- anything but 200 counts as an error).
-- Usage: wrk -t1 -c64 -d10s -s bench/lua/get.lua URL -- [keys=N] [ack=A from=F] [rate=R]
--        (all arguments: bench/lua/lib.lua)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

lib.run(function(o)
    local suffix = lib.query_suffix(o)
    local keys = o.keys
    local random = math.random
    return function()
        return wrk.format("GET", "/v0/entity?id=key" .. random(1, keys) .. suffix)
    end
end)
