-- GET /tests?limit=100&after=<random>: a full page from anywhere in the
-- table, a different one per request, so that no two concurrent requests
-- share a query (store/pages.go coalesces only identical pages). The
-- script's first argument is the table's row count (ids 1 to it).
local rows = 100000

function init(args)
  rows = tonumber(args[1]) or rows
  -- Each wrk thread has its own Lua state: seed each differently.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16))
end

function request()
  local after = math.random(0, math.max(rows - 100, 0))
  return wrk.format("GET", "/tests?limit=100&after=" .. after)
end
