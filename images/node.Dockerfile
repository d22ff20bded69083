# syntax=docker/dockerfile:1
# The storage node image: dynamo-node (the server) and dynamoctl (the CLI). Build from the
# repository root:
#   eval "$(images/refs)"
#   docker build -f images/node.Dockerfile --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg VERSION="$DYNAMO_IMAGE_VERSION" -t "$DYNAMO_NODE_IMAGE" .
# Without a registry (no rust or debian image to pull): images/build-offline.
# The operator runs it with `--config /etc/dynamo/node.toml` and DYNAMO_* variables per pod.

FROM rust:1.95-bookworm AS build
# RocksDB's bindings need libclang (bindgen) and a C++ compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dynamo-node -p dynamoctl --bin dynamo-node --bin dynamoctl

FROM debian:bookworm-slim
ARG REVISION=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title=dynamo-node \
      org.opencontainers.image.source=https://github.com/dynamokv/dynamo \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.version=${VERSION}
RUN groupadd --gid 10001 dynamo \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin dynamo \
 && mkdir -p /var/lib/dynamo \
 && chown 10001:10001 /var/lib/dynamo
COPY --from=build /src/target/release/dynamo-node /src/target/release/dynamoctl /usr/local/bin/
USER 10001:10001
ENV DYNAMO_LISTEN=0.0.0.0:7070 \
    DYNAMO_DATA_DIR=/var/lib/dynamo
EXPOSE 7070
VOLUME ["/var/lib/dynamo"]
ENTRYPOINT ["/usr/local/bin/dynamo-node"]
CMD ["--config", "/etc/dynamo/node.toml"]
