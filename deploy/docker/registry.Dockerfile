# syntax=docker/dockerfile:1
# The Ferry registry (`ferry registry`: hosts, desired and actual state, drift) on node:24-slim
# (production). Build from the repository root:
#   docker build -f deploy/docker/registry.Dockerfile -t ferry-registry:0.1.0 .

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
LABEL org.opencontainers.image.title="ferry-registry" \
      org.opencontainers.image.description="Ferry registry: hosts, heartbeats, desired and actual state, drift" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV NODE_ENV=production \
    FERRY_DATA_DIR=/var/lib/ferry-registry \
    FERRY_LISTEN=0.0.0.0:7702
WORKDIR /opt/ferry
COPY --from=deps /opt/ferry ./
# It needs no socket: an unprivileged user will do.
RUN mkdir -p /var/lib/ferry-registry && chown node:node /var/lib/ferry-registry
USER node
VOLUME /var/lib/ferry-registry
EXPOSE 7702
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.FERRY_LISTEN||'').split(':').pop()+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/opt/ferry/bin/ferry.js"]
CMD ["registry"]
