#!/bin/sh
# The test command (README, .ci/run): installs what the tests need on a fresh machine, then runs
# every test — unit and end-to-end on this host, a short run of the fuzz targets, and the vhost tests
# inside the kernel lab (one boot) when this host has no /dev/vhost-net. Extra arguments go to the
# host's pytest run.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: not root; the end-to-end tests create namespaces, veths and macvtaps: run sudo sh tests/run.sh" >&2
    exit 1
fi

# vnetbe itself with the tests' Python packages, then what the tests need from the system (QEMU and a
# stock kernel for the lab, DPDK, clang for the fuzz targets, ...): `vnetbe setup tests`, the same code
# the README's main command runs with `vnetbe setup bench`.
python3 -m pip install -q --root-user-action=ignore -e '.[test]'
python3 -m vnetbe setup tests

export PYTHONDONTWRITEBYTECODE=1
status=0
python3 -m pytest tests -q -p no:cacheprovider --durations=15 -m "not slow" "$@" || status=$?

# The long runs (10^7 frames each way, a million-frame order check): a step of their own.
python3 -m pytest tests -q -p no:cacheprovider --durations=15 -m slow || status=$?

# The benchmarks, briefly (one round each, short counts): they assert delivery and accounting.
VNETBE_BENCH_COUNT="${VNETBE_BENCH_COUNT:-20000}" python3 -m pytest bench -q -p no:cacheprovider \
    --benchmark-disable || status=$?

# The unit tests again over an ASan + UBSan build of the C extensions (in a copy of the tree).
sh tests/asan.sh || status=$?

# A short fuzzing run of each libFuzzer target: split and packed rings, the datapath, the control queue, vhost-user
# (csrc/fuzz/run.sh documents long runs).
sh csrc/fuzz/run.sh "${VNB_FUZZ_SECONDS:-36}" || status=1   # five targets, 3 minutes

if [ ! -e /dev/vhost-net ]; then
    # One boot of the lab for both runs. The lab emulates its CPU (~10x slower than the host): the
    # long vhost runs count 2*10^6 frames each there (10^7 on the host for user and uring), the
    # leak cycles 300 (1000 on the host) and the hostile-ring property tests a quarter of their
    # examples (all of them run on the host); the same checks, a quarter of an hour less.
    echo "tests/run.sh: no /dev/vhost-net here; running the vhost tests (and uring on its 6.1 kernel)," \
        "then the frame benchmarks on both datapaths, in the kernel lab" >&2
    VNETBE_LOAD_FRAMES=2000000 VNETBE_CYCLES=300 VNETBE_EXAMPLES_SCALE=0.25 VNETBE_BENCH_COUNT="${VNETBE_BENCH_COUNT:-20000}" \
        sh tests/lab/run_in_lab.sh --shell '
        s=0
        python3 -m pytest -m "vhost or (uring and not slow)" tests -q --durations=25 || s=$?
        python3 -m pytest -q --benchmark-disable bench/test_bench_tx.py \
            bench/test_bench_rx.py bench/test_bench_vm2vm.py bench/test_bench_rr.py || s=$?
        exit $s' || status=$?
fi
exit $status
