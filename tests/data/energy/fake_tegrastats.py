"""A stand-in for tegrastats in tests: prints the lines of a fixture file (argv[1]) over and over, one per
``--interval`` milliseconds, until stopped."""
import sys
import time

lines = [ln for ln in open(sys.argv[1]).read().splitlines() if ln.strip()]
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000 if "--interval" in sys.argv else 0.02
i = 0
while True:
    print(lines[i % len(lines)], flush=True)
    i += 1
    time.sleep(interval)
