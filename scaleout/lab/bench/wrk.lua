-- wrk script for `scaleout bench`: rotate through the credentials of the pre-logged-in users.
-- Every distinct request is formatted once per thread, so wrk's own CPU per request stays small and the
-- same for both sides of a pair (it shares the machine's CPUs with the processes being measured).
local creds = {$creds}
local requests = {}
local i = 0

init = function(args)
  if #creds == 0 then
    requests[1] = wrk.format("GET", "$path")
  else
    for k, c in ipairs(creds) do requests[k] = wrk.format("GET", "$path", {["$header"] = c}) end
  end
end

request = function()
  i = i + 1
  return requests[(i % #requests) + 1]
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
