# syntax=docker/dockerfile:1
# The operator image. Build from the repository root:
#   eval "$(images/refs)"
#   docker build -f images/operator.Dockerfile --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg VERSION="$DYNAMO_IMAGE_VERSION" -t "$DYNAMO_OPERATOR_IMAGE" .
# Without a registry (no rust or debian image to pull): images/build-offline.
# It needs no RocksDB: only the operator crate and its dependencies are compiled.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dynamo-operator --bin dynamo-operator

FROM debian:bookworm-slim
ARG REVISION=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title=dynamo-operator \
      org.opencontainers.image.source=https://github.com/dynamokv/dynamo \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.version=${VERSION}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 dynamo \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin dynamo
COPY --from=build /src/target/release/dynamo-operator /usr/local/bin/dynamo-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dynamo-operator"]
CMD ["--metrics-addr=0.0.0.0:8080"]
