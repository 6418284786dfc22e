# check.py - what the packaging tests share: cmocka-style result lines, so
# that script/summarize counts each check as one test case, and running
# commands.
import subprocess
import sys

failures = 0


def case(name, ok, detail=""):
    """Reports one check as "[       OK ] name" or "[  FAILED  ] name"."""
    global failures
    if ok:
        print(f"[       OK ] {name}")
    else:
        failures += 1
        if detail:
            print(detail)
        print(f"[  FAILED  ] {name}")
    sys.stdout.flush()


def run(argv, **kw):
    """Runs argv, returns (exit status, stdout + stderr as text)."""
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    return p.returncode, p.stdout


def finish():
    sys.exit(1 if failures else 0)
