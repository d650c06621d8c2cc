#!/bin/sh
# The unit tests over an AddressSanitizer + UndefinedBehaviorSanitizer build of both C extensions, in a
# throwaway copy of the tree (the tree's own build is left as it is). tests/run.sh runs it; alone:
#
#   sh tests/asan.sh [pytest args]        # default: tests/unit -m "not root"
#
# Python itself is not instrumented: ASan's runtime is preloaded, and its leak checker is off (the
# interpreter keeps what it allocates until exit). Any error aborts the run with its report.
set -eu
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/vnb-asan.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
tar --exclude='*.so' --exclude=build --exclude=__pycache__ -cf - pyproject.toml setup.py vnetbe csrc tests \
    | tar -C "$work" -xf -
cd "$work"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="$san" LDFLAGS="$san" python3 setup.py -q build_ext --inplace >/dev/null 2>build.log || {
    cat build.log >&2; echo "tests/asan.sh: the sanitizer build failed" >&2; exit 1; }
for so in vnetbe/_vnetbe_c*.so vnetbe/tools/_vnetbe_tools_c*.so; do   # instrumented, or this proves nothing
    nm -D "$so" | grep -q __asan_report_load || { echo "tests/asan.sh: $so is not instrumented" >&2; exit 1; }
done
[ "$#" -gt 0 ] || set -- tests/unit -m "not root"
LD_PRELOAD="$(gcc -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONDONTWRITEBYTECODE=1 VNB_SANITIZED=1 \
    python3 -c 'import sys, vnetbe, pytest; assert vnetbe.__file__.startswith(sys.argv[1]), vnetbe.__file__; sys.exit(pytest.main(sys.argv[2:]))' \
    "$work" -q -p no:cacheprovider "$@"
