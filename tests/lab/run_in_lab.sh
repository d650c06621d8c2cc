#!/bin/sh
# Run a pytest selection inside one boot of the kernel lab (a VM whose kernel has vhost_net) and
# exit with pytest's status, or 125 if the lab itself failed (see vnetbe/lab.py).
#
#   tests/lab/run_in_lab.sh                      # default: -m vhost tests/ -q
#   tests/lab/run_in_lab.sh tests/e2e -k vhost -x
#   LAB_OPTS='--memory 3G --timeout 1800' tests/lab/run_in_lab.sh
#   tests/lab/run_in_lab.sh --shell 'python3 -m pytest A || s=1; python3 -m pytest B || s=1; exit ${s:-0}'
#
# The project tree is read-only inside the lab: the C extension must already be built on the host,
# and the lab points pytest's cache and hypothesis' database at the guest's throwaway /tmp.
set -eu
cd "$(dirname "$0")/../.."

if ! python3 -c 'import vnetbe._vnetbe_c' 2>/dev/null; then
    echo "run_in_lab: vnetbe's C extension is not built; run 'pip install -e .' (or" \
         "'python3 setup.py build_ext --inplace') on the host first: the lab cannot write the tree" >&2
    exit 125
fi

# --shell SCRIPT: run a shell script in the boot instead (several pytest runs in one boot; it
# exits with the status it wants).
if [ "${1:-}" = --shell ]; then
    # shellcheck disable=SC2086
    exec python3 -m vnetbe.tools.lab ${LAB_OPTS:-} -- sh -c "$2"
fi
[ "$#" -gt 0 ] || set -- -m vhost tests/ -q
# LAB_OPTS is split on spaces on purpose: it holds options like "--memory 3G".
# shellcheck disable=SC2086
exec python3 -m vnetbe.tools.lab ${LAB_OPTS:-} -- python3 -m pytest "$@"
