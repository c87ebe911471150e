#!/usr/bin/env bash
# Installs what the build needs beyond the Rust toolchain, once: clang/libclang (for
# the RocksDB bindings' bindgen) and Debian's librocksdb-dev (linked instead of
# compiling RocksDB's C++, see README "Building"). Idempotent and quiet when done.
set -euo pipefail
missing=()
[ -e /usr/lib/x86_64-linux-gnu/librocksdb.so ] || [ -e /usr/lib/librocksdb.so ] || missing+=(librocksdb-dev)
command -v clang >/dev/null 2>&1 || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "weir: installing ${missing[*]} (needed to build the RocksDB state backend)" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
