-- finish.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease, kind, index, ref, attempt, has_result, result, errjson, errtype
if not load_task() then return {'ok', ''} end
local kind, idx, ref, attempt = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local errjson = nil
if ARGV[9] ~= '' then errjson = ARGV[9] end
local r = get_row(kind, idx, ref)
if not r or r.st == 's' or r.st == 'f' then return {'ok', T.queue} end
if errjson and (r.st ~= 'r' or r.a ~= attempt) then return {'ok', T.queue} end
if kind == 'f' and (T.state ~= 'finalizing' or idx ~= T.fin_done) then return {'ok', T.queue} end
if kind == 'x' and T.state ~= 'failed' then return {'ok', T.queue} end
if kind == 'j' and r.st == 'r' then tset('running', T.running - 1) end
local d = record(r, kind, idx, ref, ARGV[7] == '1', ARGV[8], errjson, ARGV[10])
save_task()
apply_ttl()
return out(d)
