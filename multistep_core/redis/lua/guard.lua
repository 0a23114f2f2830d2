-- guard.lua (task script: lib.lua first; KEYS as lib.lua says)
-- ARGV: now, lease, ref...   (pending refs without a due time get one, a lease from now)
if not load_task() then return 0 end
local n = 0
for i = 3, #ARGV do
  local ref = ARGV[i]
  local kind, idx = split_ref(ref)
  local r = get_row(kind, idx, ref)
  if r and r.st == 'p' and not redis.call('ZSCORE', KDUE, ref) then
    set_due(ref, NOW + LEASE)
    n = n + 1
  end
end
return n
