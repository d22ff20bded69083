# The storage node image without a registry: images/build-offline builds it from a Debian base
# made with debootstrap (images/base-image runtime: the dynamo user, uid 10001, and
# /var/lib/dynamo) and the binaries built on the host (scripts/build), copied into the context.
# The running image is the same as images/node.Dockerfile's (operator/tests/packaging.rs checks).
ARG BASE
FROM ${BASE}
ARG REVISION=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title=dynamo-node \
      org.opencontainers.image.source=https://github.com/dynamokv/dynamo \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.version=${VERSION}
COPY dynamo-node dynamoctl /usr/local/bin/
USER 10001:10001
ENV DYNAMO_LISTEN=0.0.0.0:7070 \
    DYNAMO_DATA_DIR=/var/lib/dynamo
EXPOSE 7070
VOLUME ["/var/lib/dynamo"]
ENTRYPOINT ["/usr/local/bin/dynamo-node"]
CMD ["--config", "/etc/dynamo/node.toml"]
