-- Cycles through pre-built requests read from a file (one per line: METHOD, PATH, BODY
-- and "Name: value" headers, tab separated) and prints a JSON summary when done.
local built = {}
local count = 0
local next_index = 0

local function fields(line)
  local out = {}
  for field in (line .. "\t"):gmatch("([^\t]*)\t") do
    out[#out + 1] = field
  end
  return out
end

function init(args)
  for line in io.lines(args[1]) do
    local f = fields(line)
    local headers = {}
    for j = 4, #f do
      local name, value = f[j]:match("^([^:]+):%s*(.*)$")
      if name then headers[name] = value end
    end
    local body = f[3]
    if body == "" then body = nil end
    count = count + 1
    built[count] = wrk.format(f[1], f[2], headers, body)
  end
end

function request()
  next_index = next_index % count + 1
  return built[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
