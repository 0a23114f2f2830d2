-- finish.lua (task script)
-- ARGV[6..]: kind, index, ref, attempt, has_result, result, errjson, errtype
bind(ARGV[5])
if not load_task() then return {'ok', '', ''} end
local errjson = nil
if ARGV[12] ~= '' then errjson = ARGV[12] end
local d = finish_one(ARGV[6], tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9]), ARGV[10] == '1', ARGV[11], errjson, ARGV[13])
settle()
commit()
return extras(out(d))
