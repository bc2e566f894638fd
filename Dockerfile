# syntax=docker/dockerfile:1
#
# The `cafe` image: one static binary (`cafe hub`, `cafe member`, the CLI), built for
# x86_64-unknown-linux-musl without the simulator (`--no-default-features`). TLS is rustls
# (ring), so no OpenSSL is linked; ring's C and assembly parts are compiled with musl-gcc.
#
#   docker build -t ghcr.io/cafe-project/cafe:0.1.0 .

FROM rust:1.95-slim-trixie AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cache mount so that the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --no-default-features --bin cafe \
        --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/cafe /cafe

# Distroless static: no shell, no package manager; CA certificates and a `nonroot` user
# (65532) only.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /cafe /cafe
USER 65532:65532
# --admin-address: /healthz, /readyz, /metrics.
EXPOSE 8080
ENTRYPOINT ["/cafe"]
