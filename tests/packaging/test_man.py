#!/usr/bin/env python3
# test_man.py - the man pages render, and cannot drift from the code: every
# option that `ferryd --help`, `ferry --help` and `ferry COMMAND --help` (and
# `ferry bench SUB --help`) print appears in ferryd(8) or ferry(1).
#
#   test_man.py FERRYD FERRY MANDIR
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check import case, finish, run  # noqa: E402

ferryd, ferry, mandir = sys.argv[1:4]
OPT = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*[a-z0-9]|-[a-zA-Z])(?![\w-])")

rendered = {}
for page in ["ferryd.8", "ferry.1", "ferry.conf.5", "libferry.3"]:
    env = dict(os.environ, LC_ALL="C", MANWIDTH="2000")
    rc, out = run(["man", "--warnings", "-l", os.path.join(mandir, page)], env=env)
    # groff's warnings go to stderr, merged here: any line it adds is one.
    lines = out.splitlines()
    warnings = [line for line in lines if "warning:" in line]
    rendered[page] = out.replace("\u2010", "-")
    case(f"man_{page}_renders", rc == 0 and len(lines) > 20 and not warnings,
         f"man -l {page}: status {rc}, {len(lines)} lines, warnings: {warnings}")


def help_options(argv):
    rc, out = run(argv)
    return set(OPT.findall(out)) if rc == 0 else None


def check_options(page, what, argv):
    opts = help_options(argv)
    if opts is None:
        case(f"man_{page}_covers_{what}", False, f"{' '.join(argv)} failed")
        return
    missing = sorted(o for o in opts if not re.search(r"(?<![\w-])" + re.escape(o) + r"(?![\w-])",
                                                         rendered[page]))
    case(f"man_{page}_covers_{what}", not missing,
         f"{page} does not mention {missing} (printed by {' '.join(argv)})")


check_options("ferryd.8", "ferryd_help", [ferryd, "--help"])
check_options("ferry.1", "ferry_help", [ferry, "--help"])
rc, out = run([ferry, "--help"])
commands = re.findall(r"^  ([a-z]+)  ", out.split("Commands:")[1].split("\n\n")[0], re.M)
for cmd in commands:
    if cmd == "help":
        continue
    check_options("ferry.1", f"ferry_{cmd}_help", [ferry, cmd, "--help"])
    # Every command has its own section in the page.
    case(f"man_ferry.1_documents_{cmd}", re.search(r"^ *ferry " + cmd + r"\b", rendered["ferry.1"],
                                                   re.M) is not None)
rc, out = run([ferry, "bench", "--help"])
for sub in re.findall(r"^  ([a-z0-9]+)  ", out, re.M):
    check_options("ferry.1", f"ferry_bench_{sub}_help", [ferry, "bench", sub, "--help"])
# Every [broker] setting of ferry.conf(5) is a ferryd option.
opts = help_options([ferryd, "--help"]) or set()
settings = {o[2:] for o in opts} - {"help", "version", "config"}
missing = sorted(s for s in settings if s not in rendered["ferry.conf.5"])
case("man_ferry.conf.5_lists_every_setting", not missing, f"ferry.conf(5) lacks {missing}")
finish()
