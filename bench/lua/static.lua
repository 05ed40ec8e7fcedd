-- GET of the URL's own path (the nginx ceiling: `return 200 "ok"`), with the same closed-loop and
-- fixed-rate modes as put.lua and get.lua so the ceiling is measured the same way.
-- Usage: wrk -t1 -c64 -d10s -s bench/lua/static.lua URL -- [rate=R out=FILE]
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

lib.run(function(o)
    local req = wrk.format("GET", wrk.path)
    return function()
        return req
    end
end)
