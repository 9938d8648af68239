-- luacheck configuration: Lua 5.4, busted specs, our scripts and the Pool.
std = "lua54"
max_line_length = 120
files["spec/"] = {std = "+busted"}
-- globals set on purpose (the initializer spec writes worker globals)
files["spec/pool_spec.lua"] = {globals = {"INIT_TAG", "INIT_COUNT"}}
exclude_files = {"build*/", "spec/fixtures/syntax_error.lua"}
