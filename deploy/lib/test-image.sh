#!/usr/bin/env bash
# deploy/lib/test-image.sh - build a small, deterministic test image FROM scratch.
#
# Usage: deploy/lib/test-image.sh DOCKER_HOST TAG [VARIANT]
#
#   DOCKER_HOST  engine to build on, e.g. unix:///tmp/ferry-stack/build.sock
#   TAG          image reference to tag the result with, e.g. ferry-test:v1
#   VARIANT      free text (default "v1"); it changes only the top layer, so
#                two variants share their lower layers but have different ids
#
# Nothing is pulled: the image is FROM scratch and holds only
#   layer 1  /bin/busybox            (static busybox from Debian busybox-static)
#   layer 2  /www/healthz, /data/    (fixed content, the same for every variant)
#   layer 3  /www/index.html, /www/variant  (contains VARIANT)
#
# At run time it serves /www with busybox httpd on 0.0.0.0:$PORT (default
# 8080); meant for `docker run --network host -e PORT=NNNN`. There is no shell
# in the image besides busybox, so the entrypoint is `/bin/busybox sh -c`.
# GET /healthz answers "ok", GET / answers a page naming the variant.
#
# File contents, modes and mtimes in the build context are fixed, so the
# layers (diff ids) are the same on every build and every engine. The image
# id itself also carries the build time, as with any `docker build`.
#
# Env: FERRY_BUSYBOX  static busybox to copy (default /bin/busybox)
#      DOCKER_BUILDKIT defaults to 0 (classic builder; works with dockerd 20.10
#                      and with clients that have no buildx plugin)
#
# Prints progress to stderr and the image id (sha256:...) as the last line of
# stdout.
set -euo pipefail

log() { printf 'test-image: %s\n' "$*" >&2; }
die() { printf 'test-image: error: %s\n' "$*" >&2; exit 1; }

[ "$#" -ge 2 ] && [ "$#" -le 3 ] || die "usage: $0 DOCKER_HOST TAG [VARIANT]"
host=$1
tag=$2
variant=${3:-v1}
[ -n "$host" ] || die "DOCKER_HOST argument is empty"
[ -n "$tag" ] || die "TAG argument is empty"
case $variant in
  *[!A-Za-z0-9._+-]*|'') die "VARIANT must match [A-Za-z0-9._+-]+ (got '$variant')" ;;
esac

command -v docker >/dev/null 2>&1 || die "docker client not found (run deploy/local-stack.sh up)"

busybox=${FERRY_BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || die "$busybox not found (apt-get install busybox-static, or run deploy/local-stack.sh up)"
if [ -z "${FERRY_BUSYBOX:-}" ] && ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
  die "/bin/busybox is not from busybox-static (a dynamic busybox cannot run FROM scratch); apt-get install busybox-static"
fi

dk() { docker -H "$host" "$@"; }
dk version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers at $host"

ctx=$(mktemp -d "${TMPDIR:-/tmp}/ferry-img.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

mkdir -p "$ctx/l1/bin" "$ctx/l2/www" "$ctx/l2/data" "$ctx/l3/www"

# layer 1: busybox
cp "$busybox" "$ctx/l1/bin/busybox"
chmod 0755 "$ctx/l1/bin/busybox"

# layer 2: fixed content shared by all variants
printf 'ok\n' > "$ctx/l2/www/healthz"
awk 'BEGIN { for (i = 0; i < 2048; i++) printf "ferry test data line %06d abcdefghijklmnopqrstuvwxyz\n", i }' \
  > "$ctx/l2/data/blob.txt"
printf 'ferry test image data layer\n' > "$ctx/l2/data/README"

# layer 3: variant-specific content
cat > "$ctx/l3/www/index.html" <<EOF
<!doctype html>
<html><head><title>ferry test image $variant</title></head>
<body><h1>ferry test image</h1><p id="variant">$variant</p></body></html>
EOF
printf '%s\n' "$variant" > "$ctx/l3/www/variant"

cat > "$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY l1/ /
COPY l2/ /
COPY l3/ /
ENV PORT=8080
WORKDIR /www
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM INT; /bin/busybox httpd -f -p 0.0.0.0:${PORT:-8080} -h /www & wait"]
EOF
printf 'LABEL org.opencontainers.image.title="ferry-test" ferry.test.variant="%s"\n' "$variant" >> "$ctx/Dockerfile"

# Fixed modes and mtimes so COPY produces byte-identical layers every time.
find "$ctx" -type d -exec chmod 0755 {} +
find "$ctx" -type f ! -path "$ctx/l1/bin/busybox" -exec chmod 0644 {} +
find "$ctx" -exec touch -h -d '@946684800' {} +

log "building $tag (variant $variant) on $host"
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} dk build --quiet --tag "$tag" "$ctx" >&2 \
  || die "docker build failed on $host"

id=$(dk image inspect --format '{{.Id}}' "$tag") || die "cannot inspect $tag after build"
nlayers=$(dk image inspect --format '{{len .RootFS.Layers}}' "$tag")
[ "$nlayers" -ge 3 ] || die "expected at least 3 layers in $tag, got $nlayers"
log "built $tag: $id ($nlayers layers)"
printf '%s\n' "$id"
