#!/usr/bin/env bash
# as-builder.sh DIR... -- COMMAND...: runs an image pipeline command (pgwasm
# image build / snapshot) as an ordinary user. The pipeline needs no root; make
# started as root (CI, a container) runs it as the pgwasm-build user that
# scripts/setup.sh creates, so every CI run proves that, and hands that user
# the directories it writes (the DIRs and $PGWASM_CACHE). Anyone else runs
# COMMAND as they are.
set -euo pipefail
dirs=()
while (($#)) && [[ $1 != -- ]]; do dirs+=("$1"); shift; done
[[ ${1:-} == -- ]] || { echo "usage: $0 DIR... -- COMMAND..." >&2; exit 2; }
shift
if [[ $(id -u) != 0 ]]; then exec "$@"; fi

user=${PGWASM_BUILD_USER:-pgwasm-build}
if ! home=$(getent passwd "$user" | cut -d: -f6) || [[ -z $home ]]; then
	echo "as-builder: user $user does not exist; run scripts/setup.sh (make setup) as root" >&2
	exit 1
fi
: "${PGWASM_CACHE:?as-builder: PGWASM_CACHE must be set}"
# Made by the user where it can (its own ~/.cache must not become root's),
# else by root and handed over (CI's fresh cache in /var/tmp).
runuser -u "$user" -- mkdir -p "$PGWASM_CACHE" 2>/dev/null || mkdir -p "$PGWASM_CACHE"
mkdir -p "${dirs[@]}"
chown -R "$user:" "$PGWASM_CACHE" "${dirs[@]}"
if ! runuser -u "$user" -- test -x "$1"; then
	echo "as-builder: $user cannot run $1: the checkout must be readable by other users (or run make as an ordinary user)" >&2
	exit 1
fi
exec runuser -u "$user" -- env -u TMPDIR HOME="$home" USER="$user" PGWASM_CACHE="$PGWASM_CACHE" "$@"
