-- PUT /v0/entity?id=key<N>, N uniform in 1..keys (default 100000), with a random `value`-byte
-- body (default 16: the small values of the first issue's numbers).
-- Usage: wrk -t1 -c64 -d10s -s bench/lua/put.lua URL -- [keys=N] [value=B] [ack=A from=F]
--        [rate=R]              (all arguments: bench/lua/lib.lua)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

lib.run(function(o)
    local bodies = lib.random_values(256, o.value or 16)
    local headers = {["Content-Length"] = tostring(#bodies[1])}
    local suffix = lib.query_suffix(o)
    local keys = o.keys
    local random = math.random
    return function()
        local path = "/v0/entity?id=key" .. random(1, keys) .. suffix
        return wrk.format("PUT", path, headers, bodies[random(1, #bodies)])
    end
end)
