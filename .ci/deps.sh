#!/usr/bin/env bash
# Installs the Debian packages sagahost needs to build and test, if any are missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config liblua5.4-dev lua5.4 libev-dev librabbitmq-dev libsqlite3-dev
      libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libssl-dev libpq-dev lua-cjson lua-cjson-dev
      lua-busted sqlite3 curl)
# libFuzzer comes with Debian's clang runtime (libclang-rt-14-dev on Debian 12); make test-debug runs fuzz-smoke
fuzz_pkgs=(clang libclang-rt-14-dev)
[ "${1:-}" = "--test" ] && pkgs+=(rabbitmq-server postgresql python3-pika openssl "${fuzz_pkgs[@]}")
[ "${1:-}" = "--fuzz" ] && pkgs+=("${fuzz_pkgs[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
