-- prometheus-node-exporter-lua collector for mxspool (backup MX / mail relay).
-- Reads `mxspool queue stats --json` (counters since the daemon started,
-- the queue and the spool now); nothing else. With the daemon stopped only
-- mxspool_up 0 is reported.

local STATS_CMD = "/usr/sbin/mxspool queue stats --json 2>/dev/null"

-- luci.jsonc when LuCI is installed; otherwise this small parser (the stats
-- are one object of numbers and objects of numbers).
local function parse_json(s)
  local ok, jsonc = pcall(require, "luci.jsonc")
  if ok and jsonc and jsonc.parse then
    return jsonc.parse(s)
  end
  local pos = 1
  local value
  local function ws() pos = s:find("[^ \t\r\n]", pos) or (#s + 1) end
  local function fail() error("bad JSON at " .. pos, 0) end
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail() end
      if c == '"' then pos = pos + 1; return table.concat(out) end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\", ["/"] = "/" }
        if map[e] then
          out[#out + 1] = map[e]; pos = pos + 2
        elseif e == "u" then
          local n = tonumber(s:sub(pos + 2, pos + 5), 16) or fail()
          out[#out + 1] = (n < 128) and string.char(n) or "?"
          pos = pos + 6
        else
          fail()
        end
      else
        out[#out + 1] = c; pos = pos + 1
      end
    end
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return t end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail() end
        local k = str(); ws()
        if s:sub(pos, pos) ~= ":" then fail() end
        pos = pos + 1
        t[k] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return t end
        if d ~= "," then fail() end
      end
    elseif c == "[" then
      local t = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return t end
      while true do
        t[#t + 1] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then fail() end
      end
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return nil
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail() end
      pos = pos + #num
      return tonumber(num)
    end
  end
  local ok2, v = pcall(value)
  if not ok2 then return nil end
  return v
end

local function read_stats()
  local f = io.popen(STATS_CMD)
  if not f then return nil end
  local out = f:read("*a")
  f:close()
  if not out or out == "" then return nil end
  local st = parse_json(out)
  if type(st) ~= "table" or type(st.queued) ~= "number" then return nil end
  return st
end

local function scrape()
  local st = read_stats()
  metric("mxspool_up", "gauge", nil, st and 1 or 0)
  if not st then return end

  metric("mxspool_queue_messages", "gauge", nil, st.queued)
  metric("mxspool_queue_oldest_age_seconds", "gauge", nil, st.oldest_age)
  metric("mxspool_spool_bytes", "gauge", nil, st.spool_bytes)
  if st.max_spool_size then
    metric("mxspool_spool_limit_bytes", "gauge", nil, st.max_spool_size)
  end
  if st.uptime then
    metric("mxspool_uptime_seconds", "gauge", nil, st.uptime)
  end

  metric("mxspool_accepted_total", "counter", nil, st.accepted)
  local rejected = metric("mxspool_rejected_total", "counter")
  for reason, n in pairs(st.rejected or {}) do
    rejected({ reason = reason }, n)
  end
  metric("mxspool_delivered_total", "counter", nil, st.delivered)
  metric("mxspool_deferred_total", "counter", nil, st.deferred)
  metric("mxspool_bounced_total", "counter", nil, st.bounced)
  metric("mxspool_guard_refusals_total", "counter", nil, st.guard_refusals)

  local callahead = metric("mxspool_callahead_total", "counter")
  for result, n in pairs(st.callahead or {}) do
    callahead({ result = result }, n)
  end
  local unreachable = metric("mxspool_destination_unreachable_seconds", "gauge")
  for dest, secs in pairs(st.unreachable or {}) do
    unreachable({ destination = dest }, secs)
  end
end

return { scrape = scrape }
