# Convenience targets; each is one plain go command (make is optional).

.PHONY: run test bench gobench build check

run:            ## run the router on config.yaml (four simulated regions)
	go run ./cmd/router --config config.yaml

test:           ## what CI runs: vet, race tests, short fuzz runs
	./scripts/test.sh

bench:          ## the side-by-side benchmark (router, direct, nginx, HAProxy, Caddy); see bench/README.md
	go run ./bench

gobench:        ## Go benchmarks of the hot paths
	go test -run '^$$' -bench . -benchmem -count 5 ./proxy/ ./routing/ ./server/

build:          ## static binaries in bin/
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/ ./cmd/...

check:          ## validate config.yaml
	go run ./cmd/router --config config.yaml --check
