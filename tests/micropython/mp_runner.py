"""A tiny test runner for scripts that run on the MicroPython unix port (no pytest there).

Each script defines test_* functions and ends with `run_tests(globals())`; the CPython test that
starts it checks the exit code and the "N passed, M failed" line.
"""

import sys


def run_tests(namespace):
    failed = 0
    passed = 0
    for name in sorted(namespace):
        if name.startswith("test_"):
            try:
                namespace[name]()
                passed += 1
                print("ok", name)
            except Exception as exc:  # report every failure, then exit non-zero
                failed += 1
                print("FAIL", name, repr(exc))
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
