#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite plus the linter. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# Three workers on two cores, each taking whole test files (module fixtures, such as three replicas, stay one per
# file; the longest files first, tests/conftest.py): the suite waits on server processes as much as it computes,
# and two workers kept the cores ~80% busy (three: 544 s where two took 573-710 s in one session of 948 tests on
# the AMX Xeon, 1.6 cores busy on average). TEST_WORKERS=0 runs it in one process.
.venv/bin/python -m pytest -q -n "${TEST_WORKERS:-3}" --dist loadfile "$@"
