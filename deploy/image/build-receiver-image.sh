#!/usr/bin/env bash
# deploy/image/build-receiver-image.sh - build the receiver's container image without pulling a
# base image: FROM scratch, holding Ferry's release as npm installs it, the Node it brings and the
# shared libraries those link, and a few /etc files.
#
# Usage: deploy/image/build-receiver-image.sh [--docker-host unix:///…] [--tag REF] [--artifact FILE] [--no-strip]
#
#   --docker-host H  engine to build on (default: $DOCKER_HOST, else the local socket)
#   --tag REF        image reference (default ferry-receiver:<the release's version>)
#   --artifact FILE  the release to install, ferry-<version>.tgz (default: npm run pack of this
#                    checkout, made now)
#   --no-strip       keep the Node binary's symbols (strip removes ~18 MB when it is installed)
#
# The image (deploy/docker/receiver.Dockerfile is the same receiver on a node:24-slim base, from
# a checkout):
#   /opt/ferry                 the release, installed by npm as "npm i -g FILE" installs it: its
#                              package.json, dist/ (the bundle) and node_modules/ (its dependencies,
#                              at the versions its npm-shrinkwrap.json pins), less its Node package
#   /usr/local/bin/node        that Node package's binary (node-linux-<arch>): the Node the release
#                              was tested with
#   /usr/sbin/haproxy, openssl the build host's, when it has them: the receiver runs the host's
#                              proxy from them (FERRY_PROXY_HTTP)
#   /lib…, /usr/lib…           every library `ldd` names for node, the native addons and those two
#   /etc/passwd, group, nsswitch.conf, ssl/certs/ca-certificates.crt (when the build host has it)
#   entrypoint `node /opt/ferry/dist/ferry.js`, command `receiver`; /var/lib/ferry is a volume.
#   Labels: org.opencontainers.image.version, io.ferry.node-version, and io.ferry.release (the
#   tarball's name and sha256), so an image says which release it holds.
# It runs as root: the receiver needs the host's Docker socket, which root owns. npm installs the
# release with --prefer-offline: what npm's cache holds is not asked for again.
#
# Prints progress to stderr and the image id as the last line of stdout.
set -euo pipefail

PROG=build-receiver-image
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HOST=${DOCKER_HOST:-}
TAG=''
ARTIFACT=''
STRIP=1
while [ "$#" -gt 0 ]; do
  case $1 in
    --docker-host) [ "$#" -ge 2 ] || die "--docker-host needs a value"; HOST=$2; shift 2 ;;
    --tag) [ "$#" -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --artifact) [ "$#" -ge 2 ] || die "--artifact needs a value"; ARTIFACT=$2; shift 2 ;;
    --no-strip) STRIP=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

command -v docker >/dev/null 2>&1 || die "the docker client is required"
command -v ldd >/dev/null 2>&1 || die "ldd is required (libc-bin)"
command -v npm >/dev/null 2>&1 || die "npm is required: it installs the release into the image"
dk() { if [ -n "$HOST" ]; then docker -H "$HOST" "$@"; else docker "$@"; fi; }
dk version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers at ${HOST:-the default socket}"

CTX=$(mktemp -d "${TMPDIR:-/tmp}/ferry-rximg.XXXXXX")
trap 'rm -rf "$CTX"' EXIT

if [ -z "$ARTIFACT" ]; then
  [ -x "$ROOT/node_modules/.bin/node" ] || die "$ROOT/node_modules is missing: run npm ci first, or give --artifact FILE"
  say "packing the release from $ROOT"
  ARTIFACT=$("$ROOT/node_modules/.bin/node" "$ROOT/scripts/pack.ts" --out "$CTX" | tail -n 1) || die "npm run pack failed"
fi
if [ ! -f "$ARTIFACT" ] || [ ! -r "$ARTIFACT" ]; then die "--artifact: cannot read $ARTIFACT"; fi
ARTIFACT=$(cd "$(dirname "$ARTIFACT")" && pwd)/$(basename "$ARTIFACT")
VERSION=$(tar -xzOf "$ARTIFACT" package/package.json 2>/dev/null | sed -n 's/^  "version": "\([^"]*\)".*/\1/p' | head -n 1)
[ -n "$VERSION" ] || die "$ARTIFACT is not a Ferry release (no package/package.json with a version)"
RELEASE="$(basename "$ARTIFACT") sha256:$(sha256sum "$ARTIFACT" | cut -d' ' -f1)"
TAG=${TAG:-ferry-receiver:$VERSION}

# The release, installed as a user installs it; then its Node becomes the image's /usr/local/bin/node.
say "installing $RELEASE"
npm install --global --prefix "$CTX/install" --prefer-offline --no-audit --no-fund --loglevel=error "$ARTIFACT" >&2 \
  || die "npm could not install $ARTIFACT"
PKG=$CTX/install/lib/node_modules/ferry
NODE_PKG=$(find "$PKG/node_modules" -mindepth 1 -maxdepth 1 -name 'node-linux-*' -type d | head -n 1)
if [ -z "$NODE_PKG" ] || [ ! -x "$NODE_PKG/bin/node" ]; then die "the release brings no Node for $(uname -m) (it has one for Linux x64)"; fi
NODE=$NODE_PKG/bin/node
NODE_VERSION=$("$NODE" --version)

R=$CTX/rootfs
mkdir -p "$R/usr/local/bin" "$R/etc/ssl/certs" "$R/opt" "$R/var/lib/ferry" "$R/tmp" "$R/root"
chmod 1777 "$R/tmp"
# The data directory holds the host key and the trust file: a new volume starts as root's only.
chmod 0700 "$R/var/lib/ferry"

say "node $NODE_VERSION from the release"
if [ "$STRIP" = 1 ] && command -v strip >/dev/null 2>&1; then
  strip --strip-all -o "$R/usr/local/bin/node" "$NODE"
else
  cp "$NODE" "$R/usr/local/bin/node"
fi
# That Node is /usr/local/bin/node now: with no Node package beside the bundle, the launcher runs on it.
rm -rf "$NODE_PKG" "$PKG/node_modules/.bin"
cp -a "$PKG" "$R/opt/ferry"

# HAProxy and openssl, for a receiver that runs the host's proxy (FERRY_PROXY_HTTP, docs/proxy.md):
# the build host's own, with their libraries below. Without them the image serves no routed service.
PROXY_BINS=()
for bin in haproxy openssl; do
  path=$(command -v "$bin" 2>/dev/null || true)
  if [ -z "$path" ]; then say "no $bin on this build host: the image cannot run the proxy (apt-get install haproxy openssl)"; continue; fi
  mkdir -p "$R/usr/sbin"
  cp -L "$path" "$R/usr/sbin/$bin"
  PROXY_BINS+=("$R/usr/sbin/$bin")
done

# Shared libraries: those of node, of every native addon shipped and of the proxy's binaries, with the loader.
{
  ldd "$R/usr/local/bin/node"
  for bin in "${PROXY_BINS[@]}"; do ldd "$bin"; done
  find "$R/opt/ferry/node_modules" -name '*.node' -type f -exec ldd {} \; 2>/dev/null
} | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u > "$CTX/libs"
while IFS= read -r lib; do
  [ -e "$lib" ] || continue
  mkdir -p "$R$(dirname "$lib")"
  cp -L "$lib" "$R$lib"
done < "$CTX/libs"
say "$(wc -l < "$CTX/libs") shared libraries"

cat > "$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat > "$R/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$R/etc/nsswitch.conf"
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/ca-certificates.crt"
else
  say "no /etc/ssl/certs/ca-certificates.crt here: the image trusts no public CA (NODE_EXTRA_CA_CERTS can add one)"
fi

cat > "$CTX/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin \\
    NODE_ENV=production \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    FERRY_DATA_DIR=/var/lib/ferry
LABEL org.opencontainers.image.title="ferry-receiver" \\
      org.opencontainers.image.description="Ferry receiver: verifies, loads and deploys pushed images" \\
      org.opencontainers.image.version="$VERSION" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      io.ferry.node-version="$NODE_VERSION" \\
      io.ferry.release="$RELEASE"
VOLUME /var/lib/ferry
WORKDIR /opt/ferry
ENTRYPOINT ["/usr/local/bin/node", "/opt/ferry/dist/ferry.js"]
CMD ["receiver"]
EOF

say "building $TAG on ${HOST:-the default engine} ($(du -sh "$R" | cut -f1) context)"
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} dk build --quiet --tag "$TAG" "$CTX" >&2 || die "docker build failed"
ID=$(dk image inspect --format '{{.Id}}' "$TAG") || die "cannot inspect $TAG after the build"
say "built $TAG: $ID"
printf '%s\n' "$ID"
