# syntax=docker/dockerfile:1
# Multi-stage: build with the Rust toolchain, run from a small distroless image as a
# non-root user. Mount the config at /etc/swr-gate/gate.toml; the shipped policies are
# at /etc/swr-gate/policies (mount your own over them).
# The toolchain is the crate's rust-version (Cargo.toml): older ones refuse to build it.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY policies policies
COPY benches benches
RUN cargo build --release --locked --bin swr-gate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/swr-gate /usr/local/bin/swr-gate
COPY policies /etc/swr-gate/policies
USER nonroot:nonroot
EXPOSE 8080 8443 9090
ENTRYPOINT ["/usr/local/bin/swr-gate"]
CMD ["serve", "--config", "/etc/swr-gate/gate.toml"]
