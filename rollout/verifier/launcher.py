"""In-sandbox launcher: runs `solution.py` from the current directory as a stdio or call-based program.

Executed as `python -I -B -c <this file's source> MODE [FN_NAME [AUDIT]]` after the sandbox has applied
its namespaces, rlimits and uid, so it depends on the standard library only. It enforces nothing
itself: the audit hook *classifies* forbidden actions (network, process creation, signals, writes
outside the working directory, other processes' /proc entries, raw C calls) as violations by exiting
at once with EXIT_VIOLATION, before the action runs. The OS-level limits are the containment; a
program that defeats the hook still meets them.

Channel (fd 3, JSON lines): call-mode results `{"i", "ok", "value" | "error"}` and event records.
Expected outputs never enter the sandbox, so a program writing to the channel can only hurt itself.
"""

import contextlib
import errno
import json
import os
import re
import sys

CHANNEL_FD = 3
EXIT_VIOLATION = 86
EXIT_MEMORY = 87
EXIT_FILE_SIZE = 88
EXIT_COMPILE = 89
EXIT_MISSING_FUNCTION = 90

_BLOCKED_EVENTS = frozenset(
    {
        "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "subprocess.Popen",
        "pty.spawn", "os.kill", "os.killpg", "signal.pthread_kill", "os.setns", "os.unshare",
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyaddr", "socket.gethostbyname_ex", "socket.getnameinfo",
        "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect", "webbrowser.open",
        "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function", "ctypes.cdata",
    }
)  # fmt: skip
_PATH_EVENTS = frozenset(
    {
        "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
        "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.mkfifo", "os.mknod",
    }
)  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_AF_UNIX = 1  # socket.AF_UNIX on Linux; importing socket would slow every start
_OTHER_PROC = re.compile(r"^/proc/(\d+)(?:/|$)")


def _record(record):
    with contextlib.suppress(OSError, ValueError, TypeError):
        os.write(CHANNEL_FD, (json.dumps(record) + "\n").encode())


def _violation(what, args):
    _record({"event": "violation", "what": what, "args": repr(args)[:200]})
    with contextlib.suppress(OSError):
        os.write(2, ("\nforkrl-sandbox: violation: " + what + "\n").encode())
    os._exit(EXIT_VIOLATION)


def _make_audit_hook(root, own_pid):
    def outside(path):
        if isinstance(path, int) or path is None:
            return False
        resolved = os.path.realpath(os.fsdecode(path))
        return resolved != root and not resolved.startswith(root + os.sep)

    def other_process(path):
        if isinstance(path, int) or path is None:
            return False
        match = _OTHER_PROC.match(os.path.abspath(os.fsdecode(path)))
        return match is not None and int(match.group(1)) != own_pid

    def hook(event, args):
        if event in _BLOCKED_EVENTS:
            _violation(event, args)
        elif event == "open":
            path, flags = args[0], args[2]
            if isinstance(flags, int) and flags & _WRITE_FLAGS and outside(path):
                _violation("write outside the working directory", args)
            if other_process(path):
                _violation("read of another process's /proc entry", args)
        elif event == "socket.__new__" and len(args) > 1 and args[1] != _AF_UNIX:
            _violation(event, args)
        elif event in _PATH_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and outside(path):
                    _violation(event + " outside the working directory", args)

    return hook


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    raise TypeError("return value of type " + type(value).__name__ + " is not JSON-serialisable")


def _call_tests(namespace, fn_name, cases):
    target = namespace.get(fn_name)
    if not callable(target) or isinstance(target, type):
        solution = namespace.get("Solution")
        target = getattr(solution(), fn_name, None) if isinstance(solution, type) else None
    if not callable(target):
        _record({"event": "missing_function", "name": fn_name})
        os._exit(EXIT_MISSING_FUNCTION)
    for index, args in enumerate(cases):
        try:
            value = target(*args)
            line = json.dumps({"i": index, "ok": True, "value": value}, default=_jsonable)
        except MemoryError:
            raise
        except Exception as error:
            line = json.dumps({"i": index, "ok": False, "error": (type(error).__name__ + ": " + str(error))[:300]})
        os.write(CHANNEL_FD, (line + "\n").encode())


def main():
    mode = sys.argv[1]
    fn_name = sys.argv[2] if len(sys.argv) > 2 else ""
    audit = len(sys.argv) <= 3 or sys.argv[3] == "audit"
    root = os.path.realpath(os.getcwd())
    with open("solution.py", "rb") as handle:
        source = handle.read()
    try:
        code = compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as error:
        _record({"event": "compile_error", "error": (type(error).__name__ + ": " + str(error))[:300]})
        sys.stderr.write(type(error).__name__ + ": " + str(error) + "\n")
        os._exit(EXIT_COMPILE)
    cases = json.loads(sys.stdin.read()) if mode == "call" else None
    if audit:
        sys.addaudithook(_make_audit_hook(root, os.getpid()))
    sys.argv = ["solution.py"]
    namespace = {"__name__": "__main__" if mode == "stdio" else "solution", "__file__": "solution.py"}
    try:
        exec(code, namespace)
        if mode == "call":
            _call_tests(namespace, fn_name, cases)
    except MemoryError:
        _record({"event": "memory_error"})
        os._exit(EXIT_MEMORY)
    except OSError as error:
        if error.errno == errno.EFBIG:
            _record({"event": "file_size_limit"})
            os._exit(EXIT_FILE_SIZE)
        raise


if __name__ == "__main__":
    main()
