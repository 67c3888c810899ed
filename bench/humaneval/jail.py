"""The child side of the sandbox: `python -I -S jail.py CONFIG_JSON -- PROGRAM ARGS...`.

sandbox.py starts this script (never the untrusted program directly); it confines itself and then
exec()s the program. Kept to the standard library and free of package imports so it starts in a
few milliseconds. Two modes:

- "full" (needs root): new mount, network, PID, IPC and UTS namespaces; a fresh read-only tmpfs
  root holding only read-only binds of the system directories, a read-write bind of the sample's
  work directory at /sandbox, a private /tmp and /proc; chroot; an unprivileged uid; no new
  privileges. The program runs as PID 1 of its namespace, so every process it starts dies with it.
- "basic": resource limits and the work directory as cwd; network off through an unprivileged
  user namespace where the kernel allows one.

Any failure before exec exits with status 125 and a "sandbox:" line on stderr.
"""

import ctypes
import json
import os
import resource
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SETUP_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _call(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enc(s):
    return None if s is None else s.encode()


def _mount(src, dst, fstype, flags, data=None):
    _call(_libc.mount(_enc(src), _enc(dst), _enc(fstype), ctypes.c_ulong(flags), _enc(data)),
          f"mount {dst}")


def _prctl(option: int, value: int) -> None:
    _call(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def _bind(host: str, target: str, writable: bool, devices: bool) -> None:
    if os.path.isdir(host):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(host, target, None, MS_BIND)
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (0 if writable else MS_RDONLY)
    _mount(None, target, None, flags | (0 if devices else MS_NODEV))


def _build_root(cfg: dict) -> None:
    """Runs as PID 1 of the new namespaces, still root: assemble the new root and chroot into it."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = cfg["root"]
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=755")
    for host, inside, writable in cfg["binds"]:
        _bind(host, root + inside, writable, devices=False)
    for node in ("null", "zero", "random", "urandom"):
        _bind("/dev/" + node, f"{root}/dev/{node}", writable=True, devices=True)
    for link, dest in cfg["symlinks"]:
        os.symlink(dest, root + link)
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp")
    tmp_options = f"size={cfg['tmp_size']},mode=1777"
    _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmp_options)
    _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chroot(root)


def _set_limits(limits: dict) -> None:
    for name, (soft, hard) in limits.items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))


def _drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # credentials changes clear it: set it last


def _exec(cfg: dict, argv: list[str]) -> None:
    os.chdir(cfg["cwd"])
    os.execve(argv[0], argv, cfg["env"])


def _full(cfg: dict, argv: list[str]) -> None:
    _call(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS),
          "unshare")
    # On SIGTERM (the harness's wall timeout) kill PID 1, which takes the whole namespace down,
    # and exit only once it is gone: no process of the sample outlives this one.
    child: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: child and os.kill(child[0], signal.SIGKILL))
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _build_root(cfg)
            _set_limits(cfg["limits"])
            _drop_privileges(cfg["uid"], cfg["gid"])
            _exec(cfg, argv)
        except BaseException as e:  # report any setup failure the same way
            os.write(2, f"sandbox: {e}\n".encode())
        os._exit(SETUP_FAILED)
    child.append(pid)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def _basic(cfg: dict, argv: list[str]) -> None:
    if cfg.get("userns_net") and _libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        os.write(2, b"sandbox: no user namespace, network stays on\n")
    _set_limits(cfg["limits"])
    _exec(cfg, argv)


def main() -> None:
    try:
        cfg = json.loads(sys.argv[1])
        argv = sys.argv[sys.argv.index("--", 2) + 1:]
        (_full if cfg["mode"] == "full" else _basic)(cfg, argv)
    except BaseException as e:
        os.write(2, f"sandbox: {e}\n".encode())
    os._exit(SETUP_FAILED)


if __name__ == "__main__":
    main()
