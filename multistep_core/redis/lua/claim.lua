-- claim.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease, limit, lost message
-- Returns {'gone'} or {'ok', queue, processed, next_due or '', ref...}
if not load_task() then
  redis.call('DEL', unpack(ALLK))
  return {'gone'}
end
if expired() then
  redis.call('DEL', unpack(ALLK))
  return {'gone'}
end
local limit = tonumber(ARGV[3])
local lostmsg = cjson.encode(ARGV[4])
local items = redis.call('ZRANGEBYSCORE', KDUE, '-inf', NOW_S, 'LIMIT', 0, limit)
local sent = {}
for _, ref in ipairs(items) do
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if not r or (kind == 'j' and r.st == 's') then
    clear_due(ref)
  else
    local wanted = (kind == 'j' and (T.state == 'open' or T.state == 'running'))
      or (kind == 'f' and T.state == 'finalizing' and idx == T.fin_done)
      or (kind == 'x' and T.state == 'failed')
    if r.st == 'r' then
      if kind == 'j' then tset('running', T.running - 1) end
      r.l = r.l + 1
      if not wanted then
        r.st = 'p'
        clear_due(ref)
        put_row(ref, r)
      else
        local errjson = '{"ref":' .. cjson.encode(ref) .. ',"fn":' .. cjson.encode(spec_fn(ref))
          .. ',"type":"WorkerLost","message":' .. lostmsg .. ',"traceback":"","attempt":'
          .. string.format('%d', r.a) .. ',"at":' .. NOW_S .. '}'
        local d = record(r, kind, idx, ref, false, '', errjson, 'WorkerLost')
        if d then sent[#sent + 1] = d end
      end
    elseif not wanted then
      clear_due(ref)
    else
      sent[#sent + 1] = follow(ref)
    end
  end
end
save_task()
apply_ttl()
local nxt = redis.call('ZRANGE', KDUE, 0, 0, 'WITHSCORES')
local ret = {'ok', T.queue, #items, nxt[2] or ''}
for _, ref in ipairs(sent) do ret[#ret + 1] = ref end
return ret
