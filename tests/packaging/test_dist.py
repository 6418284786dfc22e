#!/usr/bin/env python3
# test_dist.py - the sample ferry.conf and the systemd unit (dist/):
#   - ferryd starts with the sample config unchanged, and with every
#     commented-out [broker] setting uncommented (each shows its default or
#     an example value, which must all be valid);
#   - every ferryd option (but --config, --help, --version) is in the file;
#   - systemd-analyze verify accepts the unit (built with ExecStart at the
#     ferryd just built).
#
#   test_dist.py FERRYD SAMPLE_CONF TEST_UNIT MANDIR
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check import case, finish, run  # noqa: E402

ferryd, sample, unit, mandir = (os.path.abspath(a) for a in sys.argv[1:5])
text = open(sample).read()


def start_with(conf_text, name):
    """Starts ferryd with conf_text as its config on a free port, waits for
    it to listen, stops it with SIGTERM; the case passes on a clean exit."""
    d = tempfile.mkdtemp(prefix="ferry-dist-")
    try:
        conf = os.path.join(d, "ferry.conf")
        with open(conf, "w") as f:
            f.write(conf_text)
        os.chmod(conf, 0o600)
        ready = os.path.join(d, "ready")
        log = open(os.path.join(d, "log"), "w+")
        p = subprocess.Popen([ferryd, "--config", conf, "--listen", "127.0.0.1:0",
                              "--data", os.path.join(d, "data"), "--ready-file", ready],
                             cwd=d, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(ready) and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        up = os.path.exists(ready)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = -9
        log.seek(0)
        case(name, up and rc == 0, f"ferryd: listening {up}, exit {rc}\n{log.read()}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


start_with(text, "dist_sample_conf_unchanged_starts")

# Uncomment every "# key = value" line of [broker] (up to the tokens).
broker = text.split("# Tokens:")[0]
lines = []
for line in broker.splitlines():
    m = re.match(r"^# ([a-z][a-z-]*) = (.*)$", line)
    if m and m.group(1) not in ("data", "ready-file", "listen"):
        line = f"{m.group(1)} = {m.group(2)}"
    lines.append(line)
start_with("\n".join(lines) + "\n", "dist_sample_conf_every_setting_valid")

rc, out = run([ferryd, "--help"])
opts = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*[a-z0-9])", out)) - {"help", "version", "config"}
keys = set(re.findall(r"^# ([a-z][a-z-]*) = ", broker, re.M))
case("dist_sample_conf_lists_every_option", opts <= keys,
     f"ferry.conf lacks {sorted(opts - keys)}")

# Type=notify: ferryd tells $NOTIFY_SOCKET it is ready once it listens,
# and that it is stopping on SIGTERM (when built with libsystemd; the unit
# is Type=exec otherwise, and then nothing is expected).
notify = "Type=notify" in open(unit).read()
if notify:
    import socket
    d = tempfile.mkdtemp(prefix="ferry-notify-")
    sock_path = os.path.join(d, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(30)
    p = subprocess.Popen([ferryd, "--listen", "127.0.0.1:0", "--data", os.path.join(d, "data")],
                         env=dict(os.environ, NOTIFY_SOCKET=sock_path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    said = []
    try:
        said.append(sock.recv(4096).decode())
        p.send_signal(signal.SIGTERM)
        said.append(sock.recv(4096).decode())
    except OSError as e:
        said.append(f"({e})")
    rc = p.wait(timeout=30)
    sock.close()
    shutil.rmtree(d, ignore_errors=True)
    case("dist_ferryd_notifies_systemd", "READY=1" in said[0] and len(said) > 1 and
         "STOPPING=1" in said[1] and rc == 0, f"messages {said}, exit {rc}")

# Documentation= names man pages, which verify looks up with man(1): the
# ones just built, in a MANPATH of their own.
manpath = tempfile.mkdtemp(prefix="ferry-man-")
for page in os.listdir(mandir):
    sec = page.rsplit(".", 1)[-1]
    if sec.isdigit():
        os.makedirs(os.path.join(manpath, "man" + sec), exist_ok=True)
        shutil.copy(os.path.join(mandir, page), os.path.join(manpath, "man" + sec, page))
rc, out = run(["systemd-analyze", "verify", unit], env=dict(os.environ, MANPATH=manpath))
shutil.rmtree(manpath, ignore_errors=True)
problems = [line for line in out.splitlines() if line.strip()]
case("dist_systemd_unit_verifies", rc == 0 and not problems,
     f"systemd-analyze verify {unit}: status {rc}\n{out}")
rc, out = run(["grep", "-E", "^(Type=(notify|exec)|Restart=on-failure|ProtectSystem=strict)$", unit])
case("dist_systemd_unit_hardened_and_restarting", len(out.split()) == 3, out)
finish()
