# syntax=docker/dockerfile:1
#
# Image Gateway container image.
#   docker build -t image-gateway .
#   docker run -p 8080:8080 -e AIHUBMIX_API_KEY=... -e GATEWAY_API_KEYS=team:gk-... \
#     -e PUBLIC_BASE_URL=http://localhost:8080 -v gateway-data:/data image-gateway
# (NODE_ENV=production: PUBLIC_BASE_URL is required, the address clients reach the gateway at.)
# The gateway runs as PID 1: it must handle SIGTERM itself (or run the container with --init).

# ---- build: install everything, compile TypeScript, then drop dev dependencies ----------
FROM node:24-slim AS build
WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

COPY tsconfig*.json ./
COPY src ./src
# The console: its client source and the script that copies its static and vendored files.
COPY console ./console
COPY scripts ./scripts
COPY openapi.yaml ./
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

# ---- runtime: production dependencies, compiled output (the console's in dist/console) and the API description
FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app

COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/openapi.yaml /app/package.json ./

# Embedded state (image store, SQLite database) lives in /data, owned by the unprivileged user
# and closed to every other (0700); the gateway makes what it writes there 0700/0600 too.
RUN mkdir -p /data && chown node:node /data && chmod 0700 /data
ENV DATA_DIR=/data
VOLUME /data

USER node
EXPOSE 8080

# No curl in slim images: probe with Node's global fetch (shell form, so ${PORT} expands).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:${PORT:-8080}/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"

# The same flags as `npm start` (the README's Docker section says why).
CMD ["node", "--max-semi-space-size=16", "dist/server.js"]
