# syntax=docker/dockerfile:1
#
# earshot router: a static binary on a distroless base, running as non-root.
#   docker build -t earshot .
#   docker run -p 8080:8080 earshot                      # simulated regions
#   docker run -p 8080:8080 -v $PWD/prod.yaml:/etc/earshot/config.yaml \
#     -e MODAL_KEY -e MODAL_SECRET earshot                # real regions
# The admin listener (status page, /metrics, /readyz) binds loopback by
# default; pass --admin 0.0.0.0:9090 (or set admin: ":9090") to reach it from
# outside the container. On SIGTERM the router drains streams for up to
# timeouts.shutdown (30s): stop it with more time than that,
#   docker stop -t 40 CONTAINER
# (Kubernetes: terminationGracePeriodSeconds; see deploy/kubernetes/).

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/router ./cmd/simengine

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/router /out/simengine /usr/local/bin/
COPY config.yaml /etc/earshot/config.yaml
USER nonroot:nonroot
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/router", "--config", "/etc/earshot/config.yaml"]
