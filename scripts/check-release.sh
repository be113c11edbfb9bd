#!/usr/bin/env bash
# Builds the release artifacts (scripts/release.sh) and proves each one (CI runs this):
#   static binary  ldd finds no dynamic dependency (release.sh), and in an empty root (only
#                  the binary and a CA certificate: no libc, no libssl, no /etc) it takes a
#                  backup over TLS (verify-full) under pgbench writes that restores
#   .deb           Depends only on libc6 and libssl3; `apt-get install ./pgbb_*.deb` puts the
#                  binary, man page, completions and docs in place; the installed
#                  `pgbb --version` is this build's and /usr/bin/pgbb takes the same backup;
#                  then the package is purged again
#   crate          `cargo package` verified it builds from the tarball (release.sh); then
#                  `cargo install --locked` of the packaged sources gives this build's pgbb
# The backups are the integration test packaging::packaged_binary_takes_a_tls_backup_that_restores
# (ignored by the plain test run), pointed at each binary. Needs root (apt-get, chroot).
# Arguments go to scripts/release.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
DIST=$CARGO_TARGET_DIR/dist
step() { echo "check-release: $*" >&2; }

scripts/release.sh "$@"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
packaged_test() {
  local t0=$SECONDS
  cargo test --locked -q --test integration packaging::packaged_binary_takes_a_tls_backup_that_restores \
    -- --ignored --exact --nocapture
  step "backup with $PGBB_PACKAGED_BIN: $((SECONDS - t0)) s"
}

# The crate: `cargo install --locked` from its sources (as from crates.io), into a scratch root.
# (Only when release.sh packaged it in this run: an older unpacked crate may be there.)
if [[ " $* " != *" --no-crate "* ]] && [ -d "$CARGO_TARGET_DIR/package/pgbb-$VERSION" ]; then
  t0=$SECONDS
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  cargo install --locked -q --path "$CARGO_TARGET_DIR/package/pgbb-$VERSION" --root "$root"
  [ "$("$root/bin/pgbb" --version)" = "$("$DIST/pgbb-$VERSION-x86_64-linux-static" --version)" ] ||
    { echo "check-release: cargo install gave $("$root/bin/pgbb" --version)" >&2; exit 1; }
  rm -rf "$root"
  trap - EXIT
  step "cargo install --locked of the crate: $((SECONDS - t0)) s"
fi

# The static binary, alone in an empty root.
PGBB_PACKAGED_BIN=$DIST/pgbb-$VERSION-x86_64-linux-static PGBB_PACKAGED_ISOLATE=1 packaged_test

# The .deb: what it depends on, then installed into this machine, used, purged.
DEB=$(ls "$DIST"/pgbb_"$VERSION"-*_amd64.deb)
depends=$(dpkg-deb -f "$DEB" Depends)
step "Depends: $depends"
others=$(echo "$depends" | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -Evx 'libc6|libssl3' || true)
[ -z "$others" ] || { echo "check-release: the .deb depends on more than libc6 and libssl3: $others" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -qq -o DPkg::Lock::Timeout=300)
# A pgbb package already installed is someone's: refused, never replaced or purged (a run of
# this script removes what it installed; set PGBB_CHECK_RELEASE_REPLACE=1 to let it go).
if dpkg-query -W -f '${Status}' pgbb 2>/dev/null | grep -q 'install ok installed'; then
  [ "${PGBB_CHECK_RELEASE_REPLACE:-}" = 1 ] || {
    echo "check-release: a pgbb package is installed on this machine; this check installs and purges its own" \
         "(set PGBB_CHECK_RELEASE_REPLACE=1 to let it purge that one)" >&2
    exit 1
  }
fi
purge() { "${APT[@]}" purge pgbb >/dev/null; }
trap purge EXIT
(cd "$DIST" && "${APT[@]}" install ./pgbb_*.deb >/dev/null)
for f in /usr/bin/pgbb /usr/share/man/man1/pgbb.1.gz /usr/share/bash-completion/completions/pgbb \
  /usr/share/zsh/vendor-completions/_pgbb /usr/share/fish/vendor_completions.d/pgbb.fish \
  /usr/share/doc/pgbb/copyright /usr/share/doc/pgbb/README.md /usr/share/doc/pgbb/docs/automation.md; do
  [ -f "$f" ] || { echo "check-release: the .deb did not install $f" >&2; exit 1; }
done
zcat /usr/share/man/man1/pgbb.1.gz | grep -q 'log\\-format' || { echo "check-release: man page lacks --log-format" >&2; exit 1; }
step "installed: $(pgbb --version)"
PGBB_PACKAGED_BIN=/usr/bin/pgbb packaged_test
purge
trap - EXIT
[ ! -e /usr/bin/pgbb ] || { echo "check-release: /usr/bin/pgbb is still there after the purge" >&2; exit 1; }
step "ok: static binary, .deb, crate"
