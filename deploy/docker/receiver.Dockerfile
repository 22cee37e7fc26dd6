# syntax=docker/dockerfile:1
# The Ferry receiver on node:24-slim (production). Build from the repository root:
#   docker build -f deploy/docker/receiver.Dockerfile -t ferry-receiver:0.1.0 .
# Where no base image can be pulled, deploy/image/build-receiver-image.sh builds the receiver
# FROM scratch instead, from the release (npm run pack) and the Node it brings.
# Run (docs/operations.md): --network host, the host's Docker socket, a volume for /var/lib/ferry.

FROM node:24-slim AS deps
WORKDIR /opt/ferry
COPY package.json package-lock.json ./
COPY apps ./apps
COPY libs ./libs
COPY services ./services
COPY bin ./bin
# Production dependencies only. --ignore-scripts: the "node" package's installer would fetch a
# second Node (the base image has one); ssh2 and cpu-features fall back to JavaScript.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && rm -rf node_modules/node node_modules/.bin \
 && npm cache clean --force

FROM node:24-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ferry-receiver" \
      org.opencontainers.image.description="Ferry receiver: verifies, loads and deploys pushed images" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production \
    FERRY_DATA_DIR=/var/lib/ferry \
    FERRY_LISTEN=0.0.0.0:7701
WORKDIR /opt/ferry
COPY --from=deps /opt/ferry ./
# Root: the receiver talks to the host's Docker socket, which root owns.
# The data directory holds the host key and the trust file: a new volume starts as root's only.
RUN mkdir -m 0700 /var/lib/ferry
VOLUME /var/lib/ferry
EXPOSE 7701
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.FERRY_LISTEN||'').split(':').pop()+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/opt/ferry/bin/ferry.js"]
CMD ["receiver"]
