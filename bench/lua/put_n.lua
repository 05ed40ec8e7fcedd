-- PUT /v0/entity?id=key<N>&ack=A&from=F, N uniform in 1..keys, 16-byte random bodies, until `n`
-- replies have come back; then the thread stops and wrk is sent SIGINT (stock wrk otherwise
-- sleeps for the whole -d), so a run is a fixed number of requests, for instruction counts
-- (bench/callgrind3.sh) and syscall counts. Prints "PUTN sent=S answered=A bad=B" (bad: not
-- 201); S - A requests were in flight when it stopped (at most the connection count).
-- Usage: wrk -t1 -cC -d3000s -s bench/lua/put_n.lua URL -- n=N [keys=K] [ack=A from=F]
local ffi = require("ffi")
ffi.cdef("int getpid(void); int kill(int pid, int sig);")
local n, keys, suffix = 20000, 100000, ""
local answered, sent, bad, done = 0, 0, 0, false
local bodies = {}

function init(args)
    local o = {}
    for _, a in ipairs(args) do
        local k, v = a:match("^(%w+)=(.*)$")
        if k == nil then
            error("put_n.lua: argument '" .. a .. "' is not name=value")
        end
        o[k] = v
    end
    n = tonumber(o.n or n)
    keys = tonumber(o.keys or keys)
    if o.ack then suffix = suffix .. "&ack=" .. o.ack end
    if o.from then suffix = suffix .. "&from=" .. o.from end
    math.randomseed(os.time() + (tonumber(o.seed) or 0))
    for i = 1, 256 do
        local t = {}
        for j = 1, 16 do t[j] = string.char(math.random(97, 122)) end
        bodies[i] = table.concat(t)
    end
end

function request()
    sent = sent + 1
    return wrk.format("PUT", "/v0/entity?id=key" .. math.random(1, keys) .. suffix,
                      {["Content-Length"] = "16"}, bodies[math.random(1, #bodies)])
end

function response(status)
    answered = answered + 1
    if status ~= 201 then bad = bad + 1 end
    if answered >= n and not done then
        done = true
        io.write(string.format("PUTN sent=%d answered=%d bad=%d\n", sent, answered, bad))
        io.flush()
        wrk.thread:stop()
        ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT: wrk's main thread stops waiting for -d
    end
end
