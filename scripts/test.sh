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
install() { # command package
	command -v "$1" >/dev/null 2>&1 && return
	[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
	echo "installing $2"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q "$2" >/dev/null 2>&1 ||
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; } ||
		echo "could not install $2: the tests that need it will skip"
}
install chromium chromium
install python3 python3-minimal
install node nodejs
install npm npm

# The official JS SDK, for the stream-survival test (server/jssdk_test.go).
jssdk=server/testdata/jssdk
if command -v npm >/dev/null 2>&1 && [ ! -d "$jssdk/node_modules/@deepgram/sdk" ]; then
	echo "installing @deepgram/sdk into $jssdk"
	(cd "$jssdk" && npm install --no-audit --no-fund --silent) ||
		echo "could not install @deepgram/sdk (npm install in $jssdk failed above): the JS SDK test will skip"
fi

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
