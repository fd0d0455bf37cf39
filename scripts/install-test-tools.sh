#!/usr/bin/env bash
# Installs the Debian mail clients the end-to-end tests drive (swaks, curl, mutt,
# fetchmail, mbsync, openssl, and the Perl TLS modules swaks uses) when any is missing.
# Needs root or sudo.
set -eu
need=()
for pair in swaks:swaks curl:curl mutt:mutt fetchmail:fetchmail mbsync:isync openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# swaks speaks TLS through these Perl modules, which apt only recommends.
for pair in Net::SSLeay=libnet-ssleay-perl IO::Socket::SSL=libio-socket-ssl-perl; do
  perl -M"${pair%%=*}" -e1 >/dev/null 2>&1 || need+=("${pair#*=}")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing test clients: ${need[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
