# syntax=docker/dockerfile:1
# Multi-stage build: a locked release build, then a small runtime image that runs
# as a non-root user with a read-only root filesystem (data lives on /data).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock config.yaml ./
COPY server ./server
COPY entity ./entity
COPY migration ./migration
COPY tests ./tests
RUN cargo build --release --locked -p palisade

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin palisade \
 && mkdir -p /data /etc/palisade \
 && chown palisade:palisade /data && chmod 0700 /data
COPY --from=build /src/target/release/palisade /usr/local/bin/palisade
COPY config.yaml /etc/palisade/config.yaml
USER 10001:10001
WORKDIR /data
# Listening on all interfaces in plaintext is refused unless allowed: in a
# container, TLS terminates at the ingress or load balancer. To terminate TLS here
# instead, set server.tls in the config and PALISADE_ALLOW_PLAINTEXT_PUBLIC=0.
ENV PALISADE_CONFIG=/etc/palisade/config.yaml \
    PALISADE_LISTEN=0.0.0.0:8080 \
    PALISADE_ALLOW_PLAINTEXT_PUBLIC=1 \
    PALISADE_DATABASE_URL=sqlite:///data/palisade.db?mode=rwc
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/palisade"]
CMD ["serve"]
