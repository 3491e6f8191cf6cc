#!/bin/sh
# The test command: vet, the whole suite under the race detector, then a
# short run of every fuzz target (FUZZTIME each, default 10000x: ten
# thousand inputs; FUZZTIME=0 skips them). CI runs exactly this (.ci/run).
# The default is a count, not a duration: with a duration, Go 1.26's fuzz
# coordinator can fail a target with a bare "context deadline exceeded"
# as the time runs out (golang/go#75804, fixed in Go 1.27).
set -eu
cd "$(dirname "$0")/.."
go version

# Some tests want more than Go: the status page's browser test (Chromium),
# the deployer's check of its generated Python (python3) and the JS SDK
# test (Node, npm and @deepgram/sdk). They are installed when missing and
# possible (root on Debian; the npm registry); otherwise those tests skip
# and say why.
. scripts/lib.sh

deps() {
	install chromium chromium
	install python3 python3-minimal
	install node nodejs
	install npm npm
	# The official JS SDK, for the stream-survival test (server/jssdk_test.go).
	jssdk=server/testdata/jssdk
	if command -v npm >/dev/null 2>&1 && [ ! -d "$jssdk/node_modules/@deepgram/sdk" ]; then
		echo "installing @deepgram/sdk into $jssdk"
		log=$(mktemp)
		(cd "$jssdk" && npm install --no-audit --no-fund --silent) >"$log" 2>&1 || {
			echo "could not install @deepgram/sdk: the JS SDK test will skip. npm said:"
			tail -n 15 "$log" | sed 's/^/  | /'
		}
		rm -f "$log"
	fi
}

fuzz() {
	# Each target runs alone (go test -fuzz takes one target at a time), in
	# one worker: with two, FuzzCopyControl's worker stalls after its first
	# new input (its loopback WebSocket pair is per process; cause not
	# found). Each package's test binary is built once for all its targets.
	bin=$(mktemp -d)
	for pkg in $(grep -l '^func Fuzz' --include='*_test.go' -r . | xargs -n1 dirname | sort -u); do
		go test -c -fuzz=. -o "$bin/fuzz.test" "$pkg" # instrumented for fuzzing
		for target in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$pkg"/*_test.go); do
			echo "fuzz $pkg $target ($fuzztime)"
			(cd "$pkg" && "$bin/fuzz.test" -test.run '^$' -test.fuzz "^$target\$" -test.fuzztime "$fuzztime" \
				-test.parallel 1 -test.fuzzcachedir "$(go env GOCACHE)/fuzz/github.com/earshot/earshot/${pkg#./}")
		done
	done
	rm -rf "$bin"
}

all=$(date +%s)
step "tools for the browser, Python and JS SDK tests" deps
step "go vet" go vet ./...
step "go test -race" go test -race ./...
fuzztime=${FUZZTIME:-10000x}
[ "$fuzztime" = 0 ] || step "fuzz ($fuzztime per target)" fuzz
echo "-- all: $(($(date +%s) - all))s"
