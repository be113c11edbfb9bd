#!/usr/bin/env bash
# Builds pgbb's release artifacts into $CARGO_TARGET_DIR/dist (default target/dist):
#   pgbb_VERSION-1_amd64.deb            Debian package (cargo-deb, metadata in Cargo.toml):
#                                       the binary, the man page, completions, the docs
#   pgbb-VERSION-x86_64-linux-static    one statically linked binary (glibc and OpenSSL in
#                                       it): runs on any x86-64 Linux, nothing installed
#   pgbb-VERSION.crate                  the crate `cargo package` made (and verified: it builds
#                                       from the tarball alone, no .git)
#   man/pgbb.1, completions/pgbb.bash, completions/_pgbb (zsh), completions/pgbb.fish
#   SHA256SUMS
# The man page and completions are generated from the command line's definition
# (examples/gen_docs.rs) into target/release/docs, where the .deb takes them from.
# Needs: libssl-dev and libc6-dev (their static libssl.a, libcrypto.a, libc.a), cargo-deb
# (installed from crates.io when missing), dpkg-dev (dpkg-shlibdeps: the .deb's Depends).
# Options: --no-crate skips `cargo package`; --allow-dirty packages uncommitted changes (the
# crate then says so in .cargo_vcs_info.json). Each step says how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
crate=1
package_args=()
for a in "$@"; do
  case $a in
    --no-crate) crate=0 ;;
    --allow-dirty) package_args+=(--allow-dirty) ;;
    *) echo "usage: $0 [--no-crate] [--allow-dirty]" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
T=$CARGO_TARGET_DIR
DIST=$T/dist
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
STATIC_TARGET=x86_64-unknown-linux-gnu

step() { echo "release: $*" >&2; }
timed() {
  local what=$1 t0=$SECONDS
  shift
  "$@"
  step "$what: $((SECONDS - t0)) s"
}

need=()
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
[ -f /usr/lib/x86_64-linux-gnu/libssl.a ] || need+=(libssl-dev)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v strip >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

rm -rf "$DIST"
mkdir -p "$DIST/man" "$DIST/completions"

# 1. The release binary, its man page and completions.
timed "release build" cargo build --release --locked -q
# (The generator runs in the dev profile, which the tests have built already.)
timed "man page and completions" cargo run --locked -q --example gen_docs -- "$T/release/docs" >/dev/null
gzip -9n -c "$T/release/docs/pgbb.1" >"$T/release/docs/pgbb.1.gz"
cp "$T/release/docs/pgbb.1" "$DIST/man/"
cp "$T/release/docs/pgbb.bash" "$T/release/docs/_pgbb" "$T/release/docs/pgbb.fish" "$DIST/completions/"

# 2. The Debian package, from that binary (Depends: dpkg-shlibdeps on it).
if ! cargo deb --version >/dev/null 2>&1; then
  timed "install cargo-deb" cargo install --locked --quiet cargo-deb
fi
timed ".deb" cargo deb --no-build --strip --locked --output "$DIST" >/dev/null

# 3. The static binary: glibc's static libc and Debian's static OpenSSL (OPENSSL_STATIC),
# built for the explicit target so that its flags stay off the build scripts and out of
# target/release.
static() {
  OPENSSL_STATIC=1 RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -q --target "$STATIC_TARGET"
}
timed "static build" static
STATIC_BIN=$DIST/pgbb-$VERSION-x86_64-linux-static
strip -o "$STATIC_BIN" "$T/$STATIC_TARGET/release/pgbb"
ldd_says=$(ldd "$STATIC_BIN" 2>&1 || true)
case "$ldd_says" in
  *"not a dynamic executable"* | *"statically linked"*) step "ldd $STATIC_BIN: $(echo $ldd_says)" ;;
  *) echo "release: $STATIC_BIN is not static: $ldd_says" >&2; exit 1 ;;
esac
"$STATIC_BIN" --version >/dev/null

# 4. The crate, verified by building it from the packaged sources alone.
if [ $crate = 1 ]; then
  timed "cargo package (verified)" cargo package --locked -q "${package_args[@]}"
  cp "$T/package/pgbb-$VERSION.crate" "$DIST/"
fi

(cd "$DIST" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum >SHA256SUMS)
step "artifacts in $DIST:"
(cd "$DIST" && find . -type f | sort | sed 's/^\.\//  /') >&2
