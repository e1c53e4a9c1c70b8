-- cd lua && luarocks --lua-version 5.4 make   (builds in lua/, so luarocks' copy of a
-- top-level lua/ directory never picks up the repository's files)
rockspec_format = "3.0"
package = "zcsend"
version = "scm-1"
source = { url = "git+https://github.com/zcsend/zcsend" }
description = {
  summary = "Zero-copy file sending (sendfile/splice) for Lua coroutine hosts",
  detailed = [[
zcsend.sendfile(sock, file, offset, count) sends a file to a socket without
copying it through user space, waiting through its host: nginx-lua,
Tarantool, luv, cqueues, zcsend's own libev loop, or blocking. TLS objects (luasec) go through bounded chunks and their own send().]],
  license = "MIT",
}
dependencies = { "lua >= 5.4" }
external_dependencies = {
  LIBEV = { header = "ev.h", library = "ev" },
  OPENSSL = { header = "openssl/ssl.h", library = "ssl" },
}
build = {
  type = "builtin",
  modules = {
    zcsend = "zcsend.lua",
    -- host adapters, loaded by zcsend.lua when their host shows itself
    ["zcsend.nginx"] = "zcsend/nginx.lua",
    ["zcsend.tarantool"] = "zcsend/tarantool.lua",
    ["zcsend.luv"] = "zcsend/luv.lua",
    ["zcsend.core"] = {
      sources = {
        "zcsend_core.c", "../csrc/backend_linux.c", "../csrc/backend_emulated.c",
        "../csrc/sink_tls.c", "../csrc/transfer.c", "../csrc/driver_ev.c", "../csrc/engine.c",
      },
      defines = { "_FILE_OFFSET_BITS=64" },
      incdirs = { "../csrc", "$(LIBEV_INCDIR)", "$(OPENSSL_INCDIR)" },
      libdirs = { "$(LIBEV_LIBDIR)", "$(OPENSSL_LIBDIR)" },
      libraries = { "ev", "ssl", "crypto", "pthread" },
    },
  },
}
