#!/usr/bin/env bash
# deploy/image/build-receiver-image.sh - build the receiver's container image without pulling a
# base image: FROM scratch, holding this project's Node binary and the shared libraries it links,
# a few /etc files, and the application with its production dependencies.
#
# Usage: deploy/image/build-receiver-image.sh [--docker-host unix:///…] [--tag REF] [--no-strip]
#
#   --docker-host H  engine to build on (default: $DOCKER_HOST, else the local socket)
#   --tag REF        image reference (default ferry-receiver:<version from package.json>)
#   --no-strip       keep the Node binary's symbols (strip removes ~18 MB when it is installed)
#
# The image (deploy/docker/receiver.Dockerfile is the same thing on a node:24-slim base):
#   /usr/local/bin/node        node_modules/.bin/node resolved to the real binary
#   /lib…, /usr/lib…           every library `ldd` names for node and the native addons
#   /etc/passwd, group, nsswitch.conf, ssl/certs/ca-certificates.crt (when the build host has it)
#   /opt/ferry                 package.json, apps/, bin/, libs/, services/, node_modules/ (dev-only
#                              packages left out, as package-lock.json marks them)
#   entrypoint `node /opt/ferry/bin/ferry.js`, command `receiver`; /var/lib/ferry is a volume.
# It runs as root: the receiver needs the host's Docker socket, which root owns.
#
# Prints progress to stderr and the image id as the last line of stdout.
set -euo pipefail

PROG=build-receiver-image
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
NODE_LINK=$ROOT/node_modules/.bin/node
HOST=${DOCKER_HOST:-}
TAG=''
STRIP=1
while [ "$#" -gt 0 ]; do
  case $1 in
    --docker-host) [ "$#" -ge 2 ] || die "--docker-host needs a value"; HOST=$2; shift 2 ;;
    --tag) [ "$#" -ge 2 ] || die "--tag needs a value"; TAG=$2; shift 2 ;;
    --no-strip) STRIP=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ -x "$NODE_LINK" ] || die "$NODE_LINK is missing: run npm ci (or bash deploy/lib/ensure-node-deps.sh) first"
NODE=$(readlink -f "$NODE_LINK")
VERSION=$("$NODE" -p 'require(process.argv[1]).version' "$ROOT/package.json")
NODE_VERSION=$("$NODE" --version)
TAG=${TAG:-ferry-receiver:$VERSION}
command -v docker >/dev/null 2>&1 || die "the docker client is required"
command -v ldd >/dev/null 2>&1 || die "ldd is required (libc-bin)"
dk() { if [ -n "$HOST" ]; then docker -H "$HOST" "$@"; else docker "$@"; fi; }
dk version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers at ${HOST:-the default socket}"

CTX=$(mktemp -d "${TMPDIR:-/tmp}/ferry-rximg.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
R=$CTX/rootfs
mkdir -p "$R/usr/local/bin" "$R/etc/ssl/certs" "$R/opt/ferry" "$R/var/lib/ferry" "$R/tmp" "$R/root"
chmod 1777 "$R/tmp"
# The data directory holds the host key and the trust file: a new volume starts as root's only.
chmod 0700 "$R/var/lib/ferry"

say "node $NODE_VERSION from $NODE"
if [ "$STRIP" = 1 ] && command -v strip >/dev/null 2>&1; then
  strip --strip-all -o "$R/usr/local/bin/node" "$NODE"
else
  cp "$NODE" "$R/usr/local/bin/node"
fi

# The application: what `ferry receiver` imports, and the packages it needs at run time. Packages
# that package-lock.json marks dev-only stay out, and so does the "node" package, whose binary
# is /usr/local/bin/node already. Workspace links (node_modules/@ferry/*) stay links.
"$NODE" -e '
  const lock = require(process.argv[1]);
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path.startsWith("node_modules/") && entry.dev) console.log(path);
  }
  console.log("node_modules/node"); console.log("node_modules/.bin"); console.log("node_modules/.package-lock.json");
' "$ROOT/package-lock.json" > "$CTX/exclude"
tar -C "$ROOT" --anchored --exclude-from="$CTX/exclude" --exclude='node_modules/*/node_modules/.cache' \
  -cf - package.json apps bin libs services node_modules | tar -C "$R/opt/ferry" -xf -

# Shared libraries: those of node and of every native addon shipped, with the loader.
{
  ldd "$NODE"
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
ENV PATH=/usr/local/bin \\
    NODE_ENV=production \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    FERRY_DATA_DIR=/var/lib/ferry
LABEL org.opencontainers.image.title="ferry-receiver" \\
      org.opencontainers.image.description="Ferry receiver: verifies, loads and deploys pushed images" \\
      org.opencontainers.image.version="$VERSION" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      io.ferry.node-version="$NODE_VERSION"
VOLUME /var/lib/ferry
WORKDIR /opt/ferry
ENTRYPOINT ["/usr/local/bin/node", "/opt/ferry/bin/ferry.js"]
CMD ["receiver"]
EOF

say "building $TAG on ${HOST:-the default engine} ($(du -sh "$R" | cut -f1) context)"
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} dk build --quiet --tag "$TAG" "$CTX" >&2 || die "docker build failed"
ID=$(dk image inspect --format '{{.Id}}' "$TAG") || die "cannot inspect $TAG after the build"
say "built $TAG: $ID"
printf '%s\n' "$ID"
