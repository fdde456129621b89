-- Runs the mxspool collector once, the way prometheus-node-exporter-lua
-- does (a global metric(), the collector's scrape()), with io.popen
-- answering STATS_FILE's content (empty: the daemon is not running).
-- Prints "popen: COMMAND", one "# TYPE name type" per metric and one
-- "name{k="v",...} value" per sample, labels sorted.
-- usage: lua5.1 run-collector.lua COLLECTOR.lua STATS_FILE

local collector_path, stats_path = arg[1], arg[2]

local function read(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("*a")
  f:close()
  return s
end
local stats = read(stats_path)

io.popen = function(cmd)
  print("popen: " .. cmd)
  return {
    read = function() return stats end,
    close = function() return true end,
  }
end

local function sample(name, labels, value)
  local keys = {}
  for k in pairs(labels or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    parts[#parts + 1] = string.format('%s="%s"', k, tostring(labels[k]))
  end
  local l = (#parts > 0) and ("{" .. table.concat(parts, ",") .. "}") or ""
  assert(type(value) == "number", name .. ": value is not a number: " .. tostring(value))
  print(name .. l .. " " .. string.format("%.17g", value))
end

function metric(name, mtype, labels, value)
  assert(mtype == "gauge" or mtype == "counter", name .. ": type " .. tostring(mtype))
  print("# TYPE " .. name .. " " .. mtype)
  local out = function(l, v) sample(name, l, v) end
  if value ~= nil then out(labels, value) end
  return out
end

local c = dofile(collector_path)
assert(type(c) == "table" and type(c.scrape) == "function", "the collector returns { scrape = scrape }")
c.scrape()
