-- Fill: PUT <prefix><start>..<prefix><start+keys-1> once each (prefix default "key"), in order,
-- with random `value`-byte bodies (default 1024), spread over wrk's threads (give threads=T, the
-- -t value) and their connections.
-- Usage: wrk -tT -cC -d<upper bound> -s bench/lua/fill.lua URL -- keys=N threads=T out=PREFIX
--        [value=B] [start=S] [prefix=P] [ack=A from=F]
-- wrk always runs for -d, so each thread writes PREFIX.<thread> ("<created> <failed>") once all
-- its PUTs are answered; the caller (bench/bench.py) waits for those files and then stops wrk
-- with SIGINT. After its last PUT a connection polls GET /v0/status (answered 200, told apart
-- from a PUT's 201) until its thread is done.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local lib = dofile(dir .. "lib.lua")

local next_id = 0
function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
end

local o, first, last, next_key, created, failed, finished, verifying
local bodies, headers, suffix, status_req, key_prefix

function init(args)
    o = lib.parse_args(args)
    local threads = o.threads or 1
    local keys = o.keys or 1000000
    local start = o.start or 1
    local per = math.floor(keys / threads)
    first = start + thread_id * per
    last = (thread_id == threads - 1) and (start + keys - 1) or (first + per - 1)
    next_key = first
    created, failed, finished = 0, 0, false
    math.randomseed(os.time() + thread_id * 104729)
    bodies = lib.random_values(256, o.value or 1024)
    headers = {["Content-Length"] = tostring(#bodies[1])}
    suffix = lib.query_suffix(o)
    key_prefix = o.prefix and tostring(o.prefix) or "key"
    status_req = wrk.format("GET", "/v0/status")
    -- wrk calls request() once on thread 0 before any connection exists, to check the script's
    -- output (script_verify_request in wrk 4.x); give it a status poll so no key is skipped.
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
    return wrk.format("PUT", "/v0/entity?id=" .. key_prefix .. k .. suffix, headers,
                      bodies[k % #bodies + 1])
end

function response(status)
    if status == 200 then
        return -- a /v0/status poll
    end
    if status == 201 then
        created = created + 1
    else
        failed = failed + 1
    end
    if not finished and created + failed >= last - first + 1 then
        finished = true
        if o.out then
            local f = assert(io.open(o.out .. "." .. thread_id, "w"))
            f:write(created, " ", failed, "\n")
            f:close()
        end
        wrk.thread:stop()
    end
end
