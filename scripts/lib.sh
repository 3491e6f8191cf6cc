# Helpers of scripts/test.sh, in a file of their own so that
# scripts/scripts_test.go can run them against stand-ins.

# install COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is
# missing and it can (root, apt-get); says why when it cannot.
install() { # command package
	command -v "$1" >/dev/null 2>&1 && return
	[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || {
		echo "$2 is not installed and cannot be (needs root and apt-get): the tests that need it will skip"
		return 0
	}
	echo "installing $2"
	export DEBIAN_FRONTEND=noninteractive
	log=$(mktemp)
	if ! apt-get install -y -q "$2" >"$log" 2>&1; then
		apt-get update -q >>"$log" 2>&1 && apt-get install -y -q "$2" >>"$log" 2>&1 || {
			echo "could not install $2: the tests that need it will skip. apt-get said:"
			tail -n 15 "$log" | sed 's/^/  | /'
		}
	fi
	rm -f "$log"
}

# step NAME COMMAND...: runs a step and says how long it took.
step() {
	name=$1
	shift
	start=$(date +%s)
	"$@"
	echo "-- $name: $(($(date +%s) - start))s"
}

