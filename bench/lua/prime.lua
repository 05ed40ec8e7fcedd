-- Prime: GET <prefix><start>..<prefix><start+keys-1> once each, in order, spread over wrk's
-- threads (give threads=T, the -t value) and their connections, so that the block cache holds
-- what a server that has been answering these keys for a while would hold. Like fill.lua, each
-- thread writes PREFIX.<thread> ("<found> <failed>") once all its GETs are answered, and the
-- caller (bench/bench.py) then stops wrk with SIGINT.
-- Usage: wrk -tT -cC -d<upper bound> -s bench/lua/prime.lua URL -- keys=N threads=T out=PREFIX
--        [start=S] [prefix=P] [ack=A from=F]
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

local next_id = 0
function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
end

local o, first, last, next_key, found, failed, finished, verifying
local suffix, status_req, key_prefix

function init(args)
    o = lib.parse_args(args)
    local threads = o.threads or 1
    local keys = o.keys or 100000
    local start = o.start or 1
    local per = math.floor(keys / threads)
    first = start + thread_id * per
    last = (thread_id == threads - 1) and (start + keys - 1) or (first + per - 1)
    next_key = first
    found, failed, finished = 0, 0, false
    suffix = lib.query_suffix(o)
    key_prefix = o.prefix and tostring(o.prefix) or "key"
    status_req = wrk.format("GET", "/v0/status")
    -- wrk calls request() once on thread 0 before any connection exists (script check).
    verifying = (thread_id == 0)
end

function request()
    if verifying then
        verifying = false
        return status_req
    end
    if next_key > last then
        return status_req
    end
    local k = next_key
    next_key = next_key + 1
    return wrk.format("GET", "/v0/entity?id=" .. key_prefix .. k .. suffix)
end

-- A status poll and a found key both answer 200; a value comes as application/octet-stream,
-- the poll's "OK" as text.
local answered = 0
function response(status, headers, body)
    if finished then
        return
    end
    local ct = headers["Content-Type"] or headers["content-type"] or ""
    if status == 200 and not ct:find("octet-stream", 1, true) then
        return -- a /v0/status poll
    end
    answered = answered + 1
    if status == 200 then
        found = found + 1
    else
        failed = failed + 1
    end
    if answered >= last - first + 1 then
        finished = true
        if o.out then
            local f = assert(io.open(o.out .. "." .. thread_id, "w"))
            f:write(found, " ", failed, "\n")
            f:close()
        end
        wrk.thread:stop()
    end
end
