#!/usr/bin/env bash
# Installs what the build and the tests need on a Debian machine. Idempotent and
# quiet when everything is already there, so every make target can call it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: dpkg-deb and apt-get unpack and resolve the image's packages;
# postgresql gives the tests a real server and psql; zstd compresses states in
# shell tools; nodejs/npm run v86 headless; chromium runs the browser tests.
# The guest kernel can be built from source (`image build --kernel
# source`): gcc and libc6-dev compile its host tools (kconfig, fixdep, relocs;
# gcc only recommends libc6-dev, and recommends are not installed here),
# flex and bison kconfig's parser, bc the timer constants; xz-utils unpacks
# its source tarball. No libelf-dev or libssl-dev: objtool is x86-64 only and
# our configuration signs nothing.
packages=(apt dpkg dpkg-dev binutils util-linux gcc-i686-linux-gnu make postgresql postgresql-client zstd nodejs npm ca-certificates chromium haproxy gcc libc6-dev flex bison bc xz-utils)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Node may come from a non-Debian install that already provides node and npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
	tmp=()
	for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || tmp+=("$p"); done
	missing=("${tmp[@]+"${tmp[@]}"}")
fi
if ((${#missing[@]})); then
	echo "setup: installing ${missing[*]}"
	sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# npm modules, pinned by the committed lock files; reinstalled only when a lock
# file changes.
for dir in harness web bench; do
	[[ -f $dir/package-lock.json ]] || continue
	stamp=$dir/node_modules/.lock-hash
	want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
	if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
		echo "setup: npm ci in $dir"
		(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
		echo "$want" >"$stamp"
	fi
done

# Image builds run as an ordinary user. As root (CI, containers), make runs
# them as this one (scripts/as-builder.sh).
if [[ $(id -u) == 0 ]] && ! id pgwasm-build >/dev/null 2>&1; then
	echo "setup: creating the user pgwasm-build for image builds"
	useradd --system --create-home --home-dir /var/lib/pgwasm-build --shell /usr/sbin/nologin pgwasm-build
fi
