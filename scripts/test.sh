#!/bin/sh
# The test command: vet, the whole suite under the race detector, then a
# short run of every fuzz target (FUZZTIME each, default 10000x: ten
# thousand inputs; FUZZTIME=0 skips them). CI runs exactly this (.ci/run).
# The default is a count, not a duration: with a duration, Go 1.26's fuzz
# coordinator can fail a target with a bare "context deadline exceeded"
# as the time runs out (golang/go#75804, fixed in Go 1.27).
set -eu
cd "$(dirname "$0")/.."

go vet ./...
go test -race ./...

fuzztime=${FUZZTIME:-10000x}
[ "$fuzztime" = 0 ] && exit 0
# Each target runs alone (go test -fuzz takes one target per package), in
# one worker: with two, FuzzCopyControl's worker stalls after its first
# new input (its loopback WebSocket pair is per process; cause not found).
grep -l '^func Fuzz' --include='*_test.go' -r . | sort | while read -r file; do
	pkg=$(dirname "$file")
	for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$file"); do
		echo "fuzz $pkg $target ($fuzztime)"
		go test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" -parallel 1 "$pkg"
	done
done
