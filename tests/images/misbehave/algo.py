"""A test algorithm that misbehaves on request: ``args.mode`` in ``ALGO_ARG`` picks how.

Modes: ``ok`` (a valid output counting the readable DICOM files), ``nothing``,
``invalid_json``, ``not_object``, ``schema``, ``big`` (100 MB), ``symlink``, ``extra_file``,
``exit3``, ``sleep``, ``forkbomb``, ``oom``, ``tamper`` (tries to change the inputs and the
root filesystem, reports what worked) and ``probe`` (reports what the sandbox looks like
from inside). Runs on the base image's python3 (3.11, pydicom 2.3).
"""

import json
import os
import socket
import sys
import time

OUT_DIR = "/elic/output"


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def dicom_files(participant):
    """Paths of every file in the series folders that participant.json names."""
    paths = []
    for timepoint in participant["timepoints"]:
        for study in timepoint["studies"]:
            for series in study["series"]:
                folder = series["dicom_dir"]
                paths += [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    return paths


def count_readable(paths):
    import pydicom

    count = 0
    for path in paths:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
            count += 1
        except Exception:
            pass
    return count


def attempt(action):
    """True if ``action`` worked (the tamper and probe modes want it to fail)."""
    try:
        action()
        return True
    except OSError:
        return False


def append(path):
    with open(path, "ab") as f:
        f.write(b"x")


def tamper(participant_path, paths):
    dicom = paths[0]
    series_dir = os.path.dirname(dicom)
    tries = {
        "create_in_root": lambda: write("/tampered", "x"),
        "create_in_var_tmp": lambda: write("/var/tmp/tampered", "x"),
        "mkdir_in_root": lambda: os.mkdir("/tampered-dir"),
        "write_etc_hosts": lambda: append("/etc/hosts"),
        "chmod_root_file": lambda: os.chmod("/opt/elic/algo.py", 0o777),
        "create_in_input": lambda: write("/elic/input/tampered", "x"),
        "append_participant": lambda: append(participant_path),
        "truncate_participant": lambda: os.truncate(participant_path, 0),
        "delete_participant": lambda: os.unlink(participant_path),
        "chmod_participant": lambda: os.chmod(participant_path, 0o666),
        "create_in_dicom_root": lambda: write("/elic/dicom/tampered", "x"),
        "create_in_series": lambda: write(os.path.join(series_dir, "tampered.dcm"), "x"),
        "append_dicom": lambda: append(dicom),
        "truncate_dicom": lambda: os.truncate(dicom, 0),
        "touch_dicom": lambda: os.utime(dicom, (0, 0)),
        "chmod_dicom": lambda: os.chmod(dicom, 0o666),
        "rename_dicom": lambda: os.rename(dicom, dicom + ".moved"),
        "delete_dicom": lambda: os.unlink(paths[-1]),
        "chmod_series_dir": lambda: os.chmod(series_dir, 0o777),
    }
    return {name: attempt(action) for name, action in tries.items()}


def mount_options():
    options = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            options[parts[1]] = parts[3].split(",")
    return options


def status_fields():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def first_readable(*paths):
    for path in paths:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            pass
    return None


def cpu_limit():
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max`` or v1 quota/period)."""
    v2 = first_readable("/sys/fs/cgroup/cpu.max")
    if v2 is not None:
        quota, period = v2.split()
    else:
        quota = first_readable("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        period = first_readable("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    if quota is None or quota in ("max", "-1"):
        return None
    return int(quota) / int(period)


def connects(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def probe(participant_path):
    with open("/proc/net/dev") as f:
        interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    tmp = os.statvfs("/tmp")
    status = status_fields()
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "euid": os.geteuid(),
        "groups": os.getgroups(),
        "root_writable": attempt(lambda: write("/probe", "x")),
        "var_tmp_writable": attempt(lambda: write("/var/tmp/probe", "x")),
        "input_writable": attempt(lambda: write("/elic/input/probe", "x")),
        "participant_writable": attempt(lambda: append(participant_path)),
        "dicom_writable": attempt(lambda: write("/elic/dicom/probe", "x")),
        "output_writable": os.access(OUT_DIR, os.W_OK),
        "tmp_writable": attempt(lambda: write("/tmp/probe", "x")),
        "tmp_bytes": tmp.f_blocks * tmp.f_frsize,
        "mounts": {
            p: o
            for p, o in mount_options().items()
            if p in ("/", "/tmp", "/elic/input", "/elic/dicom", "/elic/output")
        },
        "interfaces": interfaces,
        "connect_localhost": connects("127.0.0.1", 1),
        "connect_internet": connects("1.1.1.1", 53),
        "cap_eff": status.get("CapEff"),
        "cap_prm": status.get("CapPrm"),
        "cap_bnd": status.get("CapBnd"),
        "no_new_privs": status.get("NoNewPrivs"),
        "env_names": sorted(os.environ),
        "memory_limit": first_readable(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"
        ),
        "pids_limit": first_readable("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
        "cpus": cpu_limit(),
    }


def forkbomb():
    while True:  # every child runs this same loop, and none gives up
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)


def oom():
    hoard = []
    while True:
        hoard.append(bytearray(b"\x01" * (8 * 1024 * 1024)))


def big(path):
    chunk = "x" * (1024 * 1024)
    try:
        with open(path, "w") as f:
            f.write('{"mode": "big", "pad": "')
            for _ in range(100):
                f.write(chunk)
            f.write('"}')
    except OSError as e:
        print(f"write failed: {e}", file=sys.stderr)
        return 1
    return 0


def main():
    arg = json.loads(os.environ["ALGO_ARG"])
    out = arg["output"]
    mode = arg["args"].get("mode", "ok")
    with open(arg["participant"]) as f:
        participant = json.load(f)
    paths = dicom_files(participant)
    print(f"mode {mode}, {len(paths)} files")
    if mode == "ok":
        document = {"mode": mode, "dicom_files": count_readable(paths), "args": arg["args"]}
        write(out, json.dumps(document))
    elif mode == "nothing":
        pass
    elif mode == "invalid_json":
        write(out, '{"mode": "invalid_json", ')
    elif mode == "not_object":
        write(out, "[1,2]")
    elif mode == "schema":
        write(out, json.dumps({"dicom_files": "many"}))
    elif mode == "big":
        return big(out)
    elif mode == "symlink":
        os.symlink("/etc/passwd", out)
    elif mode == "extra_file":
        write(out, json.dumps({"mode": mode}))
        write(os.path.join(OUT_DIR, "notes.txt"), "more")
    elif mode == "exit3":
        write(out, json.dumps({"mode": mode}))
        return 3
    elif mode == "sleep":
        time.sleep(3600)
    elif mode == "forkbomb":
        forkbomb()
    elif mode == "oom":
        oom()
    elif mode == "tamper":
        write(out, json.dumps({"mode": mode, "attempts": tamper(arg["participant"], paths)}))
    elif mode == "probe":
        document = probe(arg["participant"])
        document["mode"] = mode
        write(out, json.dumps(document))
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
