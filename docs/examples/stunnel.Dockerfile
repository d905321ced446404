# The TLS client sidecar of docs/examples/daemonset-tls.yaml: Debian's stunnel4 package, the
# same stunnel the TLS end-to-end test runs (tests/it/harden.rs, docs/tls.md).
#
#   docker build -f docs/examples/stunnel.Dockerfile -t ghcr.io/healert/stunnel:5.68 docs/examples
#
# stunnel runs in the foreground as uid 65532 (the pod's user) and reads its configuration
# from the ConfigMap mounted at /etc/stunnel; it writes nothing (no pid file, logs to stderr),
# so the root filesystem can be read-only.
FROM debian:bookworm-slim
# Versions come from Debian bookworm's security updates; not pinned, so a rebuild picks them up.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends stunnel4 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532
ENTRYPOINT ["stunnel"]
CMD ["/etc/stunnel/stunnel.conf"]
