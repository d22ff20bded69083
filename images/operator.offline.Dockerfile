# The operator image without a registry: images/build-offline builds it from the Debian base
# made with debootstrap (images/base-image runtime: the dynamo user, uid 10001, CA certificates)
# and the dynamo-operator binary built on the host (scripts/build), copied into the context.
# The running image is the same as images/operator.Dockerfile's (operator/tests/packaging.rs).
ARG BASE
FROM ${BASE}
ARG REVISION=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title=dynamo-operator \
      org.opencontainers.image.source=https://github.com/dynamokv/dynamo \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.version=${VERSION}
COPY dynamo-operator /usr/local/bin/dynamo-operator
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/dynamo-operator"]
CMD ["--metrics-addr=0.0.0.0:8080"]
