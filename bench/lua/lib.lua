-- Shared code for the dkv wrk scripts (get.lua, put.lua, static.lua, fill.lua): arguments,
-- random values, the fixed-rate mode and the one-line JSON result that bench/bench.py reads.
--
-- Arguments follow the URL after `--`, as name=value:
--   keys=N      key space: key1..keyN (default 100000)
--   value=B     PUT body bytes (default 16 for put.lua, 1024 for fill.lua); random bytes, so
--               RocksDB's block compression cannot shrink the data set
--   ack=A from=F  added to the query string when given
--   rate=R      fixed-rate mode, R requests/s for this wrk thread (stock wrk, see below)
--   wrk2=1      say that the tool is wrk2 -R (it paces and corrects by itself)
--   seed=S      mixed into the per-thread random seed
--
-- FIXED-RATE MODE (stock wrk has no -R like wrk2). Each wrk thread follows its own schedule:
-- request k is due at t0 + k / rate. Whenever a connection is free, delay() claims the next slot
-- and sleeps until it (wrk timers have millisecond granularity, so a request leaves up to 1 ms
-- early) or returns 0 when the slot is already past (the server or the generator is behind).
-- Latency: wrk measures from the moment it writes a request and, at the end of the run, corrects
-- its histogram for coordinated omission the way HdrHistogram does (wrk's stats_correct: a reply
-- that took v > I, with I = connections / rate the expected interval per connection, also
-- records v - I, v - 2I, ..., standing for the requests that connection would have sent
-- meanwhile). A server stall thus weighs on the percentiles for every request due during it, not
-- once per connection (Gil Tene, "How NOT to measure latency"); docs/benchmarks.md shows the
-- check. What the correction cannot see is lag: a request leaving after its slot because every
-- connection was busy or the generator did not get the CPU in time (wrk cannot tell the script
-- which connection a reply belongs to, so the lag cannot be added to that request's latency the
-- way wrk2 does). The script therefore records each request's lag (send time - slot) in its own
-- histogram and reports its percentiles next to the latency ones, plus how many requests left
-- more than 1 ms late ("late"). Small lag: the latency figures are the full story. Large lag:
-- the rate was not sustained and the true latency is up to the lag higher.
local M = {}

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } dkv_bench_timespec_t;
int clock_gettime(int clk_id, dkv_bench_timespec_t *tp);
]]
local ts = ffi.new("dkv_bench_timespec_t")
local CLOCK_MONOTONIC = 1

-- Monotonic time in microseconds (a double: exact far beyond any uptime).
function M.now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

function M.parse_args(args)
    local o = {keys = 100000, seed = 0}
    for _, a in ipairs(args) do
        local k, v = a:match("^([%w_]+)=(.*)$")
        if k == nil then
            error("bench/lua: argument '" .. a .. "' is not name=value")
        end
        o[k] = tonumber(v) or v
    end
    return o
end

function M.query_suffix(o)
    local s = ""
    if o.ack then s = s .. "&ack=" .. o.ack end
    if o.from then s = s .. "&from=" .. o.from end
    return s
end

-- Up to `n` random strings of `bytes` bytes each (built once per thread, then reused), read
-- from /dev/urandom (a byte-by-byte Lua loop takes minutes for 1 MiB values). Large values get
-- fewer strings, at most 16 MiB in all: each value is still random within itself, which is
-- what keeps RocksDB's block compression from shrinking the data.
function M.random_values(n, bytes)
    n = math.max(1, math.min(n, math.floor(16 * 1048576 / math.max(1, bytes))))
    local f = assert(io.open("/dev/urandom", "rb"))
    local pool = {}
    for i = 1, n do
        pool[i] = f:read(bytes)
        assert(pool[i] and #pool[i] == bytes, "short read from /dev/urandom")
    end
    f:close()
    return pool
end

-- Log-scale histogram buckets: bucket b >= 1 holds [1.02^(b-1), 1.02^b) us, bucket 0 anything
-- below 1 us (a request sent early has a negative lag: 0). Percentiles are within 2%.
local LOG_STEP = math.log(1.02)

function M.bucket_of(v_us)
    if v_us < 1 then
        return 0
    end
    return math.floor(math.log(v_us) / LOG_STEP) + 1
end

local function bucket_value(b)
    if b == 0 then
        return 0
    end
    return math.exp((b - 0.5) * LOG_STEP)
end

-- Percentiles (list of p in 0..100) of histograms merged from several threads' tables.
local function hist_percentiles(hists, ps)
    local merged, total = {}, 0
    for _, h in ipairs(hists) do
        for b, n in pairs(h) do
            merged[b] = (merged[b] or 0) + n
            total = total + n
        end
    end
    local keys = {}
    for b in pairs(merged) do
        keys[#keys + 1] = b
    end
    table.sort(keys)
    local out = {}
    for i, p in ipairs(ps) do
        out[i] = 0
        local want, seen = total * p / 100, 0
        for _, b in ipairs(keys) do
            seen = seen + merged[b]
            if seen >= want then
                out[i] = bucket_value(b)
                break
            end
        end
    end
    return out
end

-- Installs delay() and the send-time bookkeeping of the fixed-rate mode; `o.rate` is this thread's
-- rate in requests/s, shared by its connections.
function M.install_fixed_rate(o)
    local interval_us = 1e6 / o.rate
    local t0 = nil
    local k = 0
    local due = {} -- claimed slots not yet sent, oldest first
    local head, tail = 1, 0
    sent = 0 -- globals: done() reads them with thread:get()
    late = 0
    lag_hist = {}

    delay = function()
        local now = M.now_us()
        if t0 == nil then
            t0 = now
        end
        local slot = t0 + k * interval_us
        k = k + 1
        tail = tail + 1
        due[tail] = slot
        local wait_ms = math.floor((slot - now) / 1000)
        return wait_ms > 0 and wait_ms or 0
    end

    M.on_send = function()
        if head > tail then
            return -- wrk's one-off request() call that checks the script's output
        end
        local slot = due[head]
        due[head] = nil
        head = head + 1
        sent = sent + 1
        local lag = M.now_us() - slot
        if lag > 1000 then
            late = late + 1
        end
        local b = M.bucket_of(lag)
        lag_hist[b] = (lag_hist[b] or 0) + 1
    end
end

M.on_send = function() end

-- done(): the run's figures as one line "DKV_RESULT {json}" on stdout.
function M.report(threads, o, summary, latency)
    local late_total, sent_total, hists = 0, 0, {}
    for _, t in ipairs(threads) do
        late_total = late_total + (t:get("late") or 0)
        sent_total = sent_total + (t:get("sent") or 0)
        hists[#hists + 1] = t:get("lag_hist") or {}
    end
    local lag = hist_percentiles(hists, {50, 99, 99.9})
    local mode = "closed-loop"
    if o.wrk2 then
        mode = "fixed-rate-wrk2"
    elseif o.rate then
        mode = "fixed-rate"
    end
    local e = summary.errors
    print(string.format(
        'DKV_RESULT {"mode":"%s","requests":%d,"duration_s":%.3f,"rps":%.1f,' ..
        '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f,' ..
        '"late":%d,"sent":%d,"lag_p50_us":%.1f,"lag_p99_us":%.1f,"lag_p999_us":%.1f,' ..
        '"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d,' ..
        '"err_status":%d}',
        mode, summary.requests, summary.duration / 1e6,
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, late_total, sent_total, lag[1], lag[2], lag[3],
        e.connect, e.read, e.write, e.timeout, e.status))
end

-- Wires wrk's global callbacks. `make_request(o)` runs once per thread and returns the function
-- that builds one request.
function M.run(make_request)
    local threads = {}
    local next_id = 0

    setup = function(thread)
        thread:set("thread_id", next_id)
        next_id = next_id + 1
        threads[#threads + 1] = thread
    end

    init = function(args)
        local o = M.parse_args(args)
        dkv_args = args -- global: done() runs in the main Lua state and reads it back
        math.randomseed(o.seed * 7919 + (thread_id or 0) * 104729 + os.time())
        if o.rate and not o.wrk2 then
            M.install_fixed_rate(o)
        end
        local build = make_request(o)
        request = function()
            M.on_send()
            return build()
        end
    end

    done = function(summary, latency, requests)
        M.report(threads, M.parse_args(threads[1]:get("dkv_args") or {}), summary, latency)
    end
end

return M
