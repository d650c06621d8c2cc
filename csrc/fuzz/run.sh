#!/bin/sh
# Build and run the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined), each for SECONDS,
# starting from the seed corpus in csrc/fuzz/corpus/<target>; an input that runs over 10 s is a failure
# (a hang). vhost_user is the vhost-user message
# parser and session (Python, libFuzzer through atheris: fuzz_vhost_user.py). Exits non-zero if a target crashes or an
# oracle fails; the input that did it is left in build/fuzz/<target>/crash-*.
#
#   sh csrc/fuzz/run.sh                  # every target, 60 s each (the test command's short run)
#   sh csrc/fuzz/run.sh 3600 virtq       # a long run of one target (virtq, packed, datapath, ctrl, vhost_user)
#   FUZZ_JOBS=2 sh csrc/fuzz/run.sh 600  # libFuzzer -jobs/-workers for long runs
#
# New inputs found go to build/fuzz/<target>/corpus (not the tree); merge the interesting ones into
# the seed corpus with: build/fuzz/<target>/fuzz -merge=1 csrc/fuzz/corpus/<target> build/fuzz/<target>/corpus
set -eu
cd "$(dirname "$0")/../.."
secs=${1:-60}
[ "$#" -gt 0 ] && shift
targets=${*:-"virtq packed datapath ctrl vhost_user"}
ring="csrc/device/vnb_virtq.c csrc/device/vnb_vq_chain.c csrc/device/vnb_vq_split.c csrc/device/vnb_vq_packed.c csrc/device/vnb_log.c"
cc=$(command -v clang-14 || command -v clang || true)
if [ -z "$cc" ]; then
    echo "csrc/fuzz/run.sh: no clang: apt-get install clang-14 libclang-rt-14-dev" >&2
    exit 1
fi
flags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE -DVNB_FUZZ"
status=0
# report TARGET OK: the closing figures of a run, or its log tail and where the failing input is.
report() {
    if [ "$2" = 0 ]; then
        grep -E "DONE|^stat::number_of_executed_units" "build/fuzz/$1/fuzz.log" | tail -2 >&2
    else
        tail -30 "build/fuzz/$1/fuzz.log" >&2
        echo "fuzz $1: FAILED (input in build/fuzz/$1/crash-* or the log above)" >&2
        status=1
    fi
}
for t in $targets; do
    out=build/fuzz/$t
    mkdir -p "$out/corpus"
    if [ "$t" = vhost_user ]; then
        echo "fuzz $t: ${secs} s from csrc/fuzz/corpus/$t" >&2
        rc=0
        python3 csrc/fuzz/fuzz_vhost_user.py -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=4096 \
            -artifact_prefix="$out/" "$out/corpus" csrc/fuzz/corpus/$t 2>"$out/fuzz.log" || rc=$?
        report "$t" "$rc"
        continue
    fi
    case $t in
        virtq|packed) srcs="$ring csrc/device/vnb_mem.c" ;;
        ctrl) srcs="csrc/device/vnb_ctrl.c csrc/device/vnb_guard.c $ring csrc/device/vnb_mem.c" ;;
        datapath) srcs="csrc/device/vnb_datapath.c csrc/device/vnb_dp_core.c csrc/device/vnb_dp_plain.c csrc/device/vnb_dp_uring.c csrc/device/vnb_uring.c $ring csrc/device/vnb_mem.c csrc/device/vnb_guard.c" ;;
        *) echo "csrc/fuzz/run.sh: unknown target $t (virtq, packed, datapath, ctrl, vhost_user)" >&2; exit 2 ;;
    esac
    # shellcheck disable=SC2086
    "$cc" $flags -Icsrc/device "csrc/fuzz/fuzz_$t.c" $srcs -lpthread -o "$out/fuzz"
    echo "fuzz $t: ${secs} s from csrc/fuzz/corpus/$t" >&2
    # shellcheck disable=SC2086
    rc=0
    (cd "$out" && ./fuzz -max_total_time="$secs" -print_final_stats=1 ${FUZZ_JOBS:+-jobs=$FUZZ_JOBS -workers=$FUZZ_JOBS} \
        -timeout=10 corpus "../../../csrc/fuzz/corpus/$t" 2>fuzz.log) || rc=$?
    report "$t" "$rc"
done
exit $status
