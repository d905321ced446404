# healert-agent container image: a static (musl) binary on an empty base.
#
#   docker build --build-arg VERSION=0.2.0 --build-arg COMMIT=$(git rev-parse HEAD) \
#     -t ghcr.io/healert/agent:0.2.0 .
#
# The builder compiles for the musl target, which links statically: the final image needs no
# libc, no shell and no package manager. musl's resolver reads /etc/resolv.conf itself, so DNS
# works on `scratch` (a static glibc binary would need NSS modules at run time).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# Alpine's native Rust target is x86_64/aarch64-unknown-linux-musl: a plain
# `cargo build --release` is already static (crt-static is musl's default).
WORKDIR /src
# hadolint ignore=DL3018
RUN apk add --no-cache musl-dev
COPY Cargo.toml Cargo.lock rules.yaml ./
COPY src ./src
# Same profile as every release build (Cargo.toml: fat LTO, panic=abort, stripped).
RUN cargo build --release --locked --bin healert-agent \
 && install -D -m 0555 target/release/healert-agent /out/healert-agent \
 && install -D -m 0444 rules.yaml /out/rules.yaml

FROM scratch
ARG VERSION=0.2.0
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="healert-agent" \
      org.opencontainers.image.description="Follows the Kubernetes audit log and reports platform friction to the Healert backend" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Healert OÜ" \
      org.opencontainers.image.source="https://github.com/healert-io/agent"
COPY --from=build /out/healert-agent /healert-agent
# The default rules; the DaemonSet mounts its ConfigMap over RULES_PATH=/etc/healert/rules.yaml.
COPY --from=build /out/rules.yaml /rules.yaml
ENV RULES_PATH=/rules.yaml
# The distroless "nonroot" uid/gid; the DaemonSet sets the same and adds the audit-log group.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/healert-agent"]
CMD ["run"]
