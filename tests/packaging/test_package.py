#!/usr/bin/env python3
# test_package.py - the Debian packages (script/package): built with
# dpkg-buildpackage and clean under lintian (no errors), then unpacked into a
# scratch root with dpkg -x: each holds its files, ferryd and ferry run from
# there (ferryd --version, ferry --help), and a program builds against
# libferry-dev's header, static library and pkg-config file.
#
#   test_package.py SOURCE_ROOT OUTDIR
import glob
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check import case, finish, run  # noqa: E402

src, out = (os.path.abspath(a) for a in sys.argv[1:3])
shutil.rmtree(out, ignore_errors=True)
rc, log = run([os.path.join(src, "script", "package"), out], cwd=src)
case("package_builds_and_lintian_has_no_errors", rc == 0, log[-6000:])
if rc != 0:
    finish()

debs = {os.path.basename(d).split("_")[0]: d for d in glob.glob(os.path.join(out, "*.deb"))}
case("package_four_packages", {"ferry", "libferry0", "libferry-dev", "python3-ferry"} <= set(debs),
     f"built: {sorted(debs)}")

root = tempfile.mkdtemp(prefix="ferry-root-")
try:
    expect = {
        "ferry": ["usr/bin/ferryd", "usr/bin/ferry", "etc/ferry/ferry.conf",
                  "lib/systemd/system/ferryd.service", "usr/share/man/man8/ferryd.8.gz",
                  "usr/share/man/man1/ferry.1.gz", "usr/share/man/man5/ferry.conf.5.gz",
                  "usr/lib/*/ferry/ferry_sqlite.so"],
        "libferry0": ["usr/lib/*/libferry.so.0"],
        "python3-ferry": ["usr/lib/python3/dist-packages/ferry/__init__.py",
                          "usr/lib/python3/dist-packages/ferry/_ferry.cpython-*.so"],
        "libferry-dev": ["usr/include/ferry.h", "usr/include/ferry_codes.h",
                         "usr/lib/*/libferry.a", "usr/lib/*/libferry.so",
                         "usr/lib/*/pkgconfig/ferry.pc", "usr/share/man/man3/libferry.3.gz"],
    }
    for pkg, files in expect.items():
        rc, listing = run(["dpkg", "-x", debs[pkg], root])
        missing = [f for f in files if not glob.glob(os.path.join(root, f))]
        case(f"package_{pkg.replace('-', '_')}_holds_its_files", rc == 0 and not missing,
             f"dpkg -x {debs[pkg]}: {rc} {listing}; missing {missing}")
    rc, info = run(["dpkg", "-I", debs["ferry"]])
    case("package_ferry_creates_its_user", "postinst" in info and
         "adduser" in open(os.path.join(src, "debian", "ferry.postinst")).read(), info)

    libdir = os.path.dirname(glob.glob(os.path.join(root, "usr/lib/*/libferry.so.0"))[0])
    env = dict(os.environ, LD_LIBRARY_PATH=libdir)
    rc, v = run([os.path.join(root, "usr/bin/ferryd"), "--version"], env=env)
    case("package_ferryd_runs", rc == 0 and "0." in v, v)
    rc, h = run([os.path.join(root, "usr/bin/ferry"), "--help"], env=env)
    case("package_ferry_runs", rc == 0 and "Commands:" in h, h)
    rc, man = run(["man", "-l", os.path.join(root, "usr/share/man/man8/ferryd.8.gz")],
                  env=dict(os.environ, MANWIDTH="80"))
    case("package_man_page_reads", rc == 0 and "ferryd" in man, man[:2000])

    # The SQLite extension loads into Debian's sqlite3 shell as
    # docs/OPERATIONS.md says (.load without the .so).
    ext = glob.glob(os.path.join(root, "usr/lib/*/ferry/ferry_sqlite.so"))
    rc, js = (run(["sqlite3", ":memory:", "-cmd", ".load " + ext[0][:-3],
                   "SELECT ferry_headers(x'0001000161000131')"]) if ext
              else (1, "no ferry_sqlite.so"))
    case("package_sqlite_extension_loads", rc == 0 and js == '{"a":"1"}\n', js)

    # The Python package imports from the scratch root.
    rc, py = run(["/usr/bin/python3", "-c", "import ferry; print(ferry.version())"],
                 env=dict(env, PYTHONPATH=os.path.join(root, "usr/lib/python3/dist-packages")))
    case("package_python3_ferry_imports", rc == 0 and py.startswith("0."), py)

    # A client built against the unpacked -dev package alone.
    prog = os.path.join(root, "hello.c")
    with open(prog, "w") as f:
        f.write('#include <ferry.h>\n#include <stdio.h>\n'
                'int main(void) { puts(ferry_strerror(FERRY_ETIMEOUT)); return 0; }\n')
    pcdir = os.path.dirname(glob.glob(os.path.join(root, "usr/lib/*/pkgconfig/ferry.pc"))[0])
    rc, flags = run(["pkg-config", "--cflags", "--libs", "ferry"],
                    env=dict(os.environ, PKG_CONFIG_PATH=pcdir, PKG_CONFIG_SYSROOT_DIR=root))
    exe = os.path.join(root, "hello")
    if rc == 0:
        rc, cc = run(["cc", prog, "-o", exe] + flags.split())
        flags += cc
    if rc == 0:
        rc, said = run([exe], env=env)
        flags += said
    case("package_dev_builds_a_client", rc == 0, flags)
finally:
    shutil.rmtree(root, ignore_errors=True)
finish()
