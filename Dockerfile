# hawser container image.
#
#   docker build -t hawser .
#   docker run -d --name hawser -p 8080:8080 \
#     -v /var/run/docker.sock:/var/run/docker.sock:ro \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     hawser
#
# Docker socket access: hawser runs as the unprivileged user `hawser` (uid 10001), which
# cannot open /var/run/docker.sock on its own: the socket is owned by root and by the
# host's `docker` group (mode 660), and that group's id differs from host to host. Give
# the container that group id as a supplementary group with
# `--group-add $(stat -c %g /var/run/docker.sock)` (compose: `group_add`), rather than
# running as root. Mounting the socket read-only (`:ro`) only stops the file from being
# replaced; the Docker API behind it is still fully usable, so treat access to it as
# root-equivalent. hawser itself only reads (events, inspect, list).
#
# With no arguments hawser runs with its embedded defaults (listen 0.0.0.0:8080, label
# prefix `hawser`); for another configuration mount a file and pass it:
#   ... -v ./hawser.yaml:/etc/hawser/hawser.yaml:ro hawser -c /etc/hawser/hawser.yaml
# (see conf/hawser.yaml for every key; `hawser -t -c FILE` checks a file).

# --- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# pingora's dependencies build C code with cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole tree (less what .dockerignore drops): Cargo.toml may name tests and benches.
COPY . .
RUN cargo build --release --locked \
    && install -m 0755 target/release/hawser /hawser

# --- run --------------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hawser \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin hawser

COPY --from=builder /hawser /usr/local/bin/hawser

USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/hawser"]
