#!/bin/sh
# Runs native Go fuzz targets for a duration each: test/fuzz.sh DURATION PKG:Target...
#
# A finding fails the run: Go writes its reproducer under testdata/fuzz and
# says "Failing input written to". Go 1.26's coordinator can also fail a
# target with a bare "context deadline exceeded" at the -fuzztime boundary,
# having found nothing (golang/go#75804, fixed in Go 1.27): such a run is
# repeated once, and if it ends the same way again it is reported and
# passed, since no input failed.
#
# With TALLY set, the counts of targets passed and failed are appended to
# that file as "passed failed skipped fuzz" (see test/testsum).
set -u
go=${GO:-go}
fuzztime=$1
shift
status=0
passed=0
failed=0
for t in "$@"; do
	pkg=${t%%:*}
	name=${t##*:}
	for attempt in 1 2; do
		echo "fuzz $pkg $name for $fuzztime"
		out=$($go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" "$pkg" 2>&1)
		rc=$?
		printf '%s\n' "$out"
		if [ $rc -eq 0 ]; then
			passed=$((passed + 1))
			break
		fi
		if printf '%s' "$out" | grep -q 'Failing input written to' ||
			! printf '%s' "$out" | grep -q 'context deadline exceeded'; then
			status=1
			failed=$((failed + 1))
			break
		fi
		if [ $attempt -eq 2 ]; then
			echo "fuzz $pkg $name: Go's deadline race again (golang/go#75804), no failing input: passed"
			passed=$((passed + 1))
		else
			echo "fuzz $pkg $name: Go's deadline race (golang/go#75804), no failing input: once more"
		fi
	done
done
echo "fuzz: $passed targets passed, $failed failed"
if [ -n "${TALLY:-}" ]; then
	echo "$passed $failed 0 fuzz" >>"$TALLY"
fi
exit $status
