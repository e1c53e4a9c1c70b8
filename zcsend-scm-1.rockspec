-- From the repository's root:
--   luarocks --lua-version 5.4 make
--   luarocks --lua-version 5.1 make LUA_INCDIR=/usr/include/luajit-2.1   (LuaJIT 2.1: nginx-lua, Tarantool)
-- Verified with Lua 5.4 and LuaJIT 2.1 (scripts/test.sh builds and loads both). Lua 5.1-5.3
-- are not tested: the dependency admits 5.1 for LuaJIT's sake only.
-- The build is lua/Makefile's (a "builtin" rockspec here would also install everything
-- under lua/ — specs, examples, build trees — as modules).
rockspec_format = "3.0"
package = "zcsend"
version = "scm-1"
source = { url = "git+https://github.com/zcsend/zcsend" }
description = {
  summary = "Zero-copy file sending (sendfile/splice) for Lua coroutine hosts",
  detailed = [[
zcsend.sendfile(sock, file, offset, count) sends a file to a socket without
copying it through user space, waiting through its host: nginx + lua-nginx-module,
Tarantool, luv, cqueues, zcsend's own libev loop, or blocking in a plain script.
TLS connections get the file through their own send, never plaintext.]],
  license = "MIT",
}
dependencies = { "lua >= 5.1" }
external_dependencies = {
  LIBEV = { header = "ev.h", library = "ev" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
}
build = {
  type = "command",
  build_command = [[make -B -C lua OUT=build-rock/zcsend/core.so CC="$(CC)" ]] ..
    [[LUA_CFLAGS="-I$(LUA_INCDIR) -I$(LIBEV_INCDIR) -I$(OPENSSL_INCDIR)" ]] ..
    [[LDFLAGS="-L$(LIBEV_LIBDIR) -L$(OPENSSL_LIBDIR)"]],
  install_command = [[make -C lua install OUT=build-rock/zcsend/core.so ]] ..
    [[INST_LUADIR="$(LUADIR)" INST_LIBDIR="$(LIBDIR)"]],
}
