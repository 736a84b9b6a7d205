"""The test harness of HumanEval/MBPP scoring: it runs inside the sandbox as the sandbox's code.

Why it exists: a process's exit status says nothing about whether the tests ran. A program that
calls ``sys.exit(0)`` or ``os._exit(0)`` before the tests, installs an ``atexit`` hook or a
``sys.excepthook`` that turns a failed assert into exit 0, or prints "All tests passed" also exits
0 - and training rewards come from these verdicts. So the harness, not the program, says that the
tests finished, through a channel printing cannot reach and with a secret the program never sees
as text.

Protocol (the parent side is :mod:`masr_graph.benchmarks.tasks.code_eval`):

1. The parent makes a fresh random token per run (:data:`TOKEN_HEX_DIGITS` hex digits) and sends
   it as the whole of the process's stdin; the sandbox gives the process a report channel (a
   pipe whose write end is the file descriptor named in :data:`CONFIG_FILE`), captured apart from
   stdout and stderr.
2. Before any program code runs, the harness reads the token into a buffer that it zeroes at
   once, keeping the token only as an integer local of :func:`main` (not a global, attribute or
   closure cell), and puts ``/dev/null`` on stdin. It reads :data:`CONFIG_FILE` and deletes it
   (the expected values must not be readable by the program), compiles the
   tests, imports the modules the trusted code imports and snapshots them, copies the builtins,
   runs the trusted definitions (the HumanEval prompt) in a namespace of their own, and moves
   every object made so far out of the garbage collector's sight (``gc.freeze``).
3. It runs the program as ``__main__`` in a module of its own. ``SystemExit`` or any other
   exception here fails the run.
4. It builds the test namespace: the program's names except those shadowing builtins (the entry
   point excepted), then the trusted definitions (so a program cannot redefine a helper the
   tests rely on, such as HumanEval's ``poly`` or ``encode_cyclic``), with the pristine builtins
   copy and an ``__import__`` that hands the tests the pristine module snapshots. The entry point
   is bound to a wrapper that, after every call, restores the builtins, removes trace and profile
   functions and garbage-collector callbacks, and rejects a result that is not a value of an
   accepted type (builtin scalars and containers, ``deque``, ``OrderedDict``, ``defaultdict``, an
   unmodified ``Counter``, NumPy numbers; recursively, exact types, so no subclass can override
   ``__eq__``): the tests compare results with ``==``, and an object whose ``__eq__`` always
   answers true would pass them all. Every reference solution returns such values.
5. It runs each test chunk in that namespace (the entry point re-bound before each, so a chunk
   cannot leave a replacement for the next). Only if the last chunk completed without exception
   and no result was rejected, it writes the token as hex digits to the report channel and ends
   the process with ``os._exit(0)``: no atexit hook, excepthook, finaliser or ``sys.exit`` runs
   after it. Any failure ends with a message whose last line names it, on a private duplicate of
   stderr, and ``os._exit(1)``.

The parent passes a program only if the exit status is 0 *and* the report channel holds exactly
the token.

Threat model. The program runs in the harness's own process, so code that deliberately inspects
the harness can still forge a pass: the token is readable from :func:`main`'s frame through
``sys._getframe``, a traceback's ``tb_frame.f_back`` chain, ``sys._current_frames()`` or a trace
or profile function the program installs (it is handed the harness's frames on the next harness
step), and from the process's memory through ``ctypes`` or ``/proc/self/mem``; the same frames
reach the pristine builtins and snapshots. Also not defended: the snapshots are shallow (a
function of a pure-Python module can have its ``__code__`` replaced), and a program thread that
keeps patching ``collections.Counter``'s helpers races the comparison of a returned Counter.
What is defended, and tested in ``tests/test_code_faking.py``: every way we know of to *claim*
success without such introspection - exiting early (any way), hooks that run at exit or on an
exception, finalisers, printed output, signal handlers, threads and forked children (none knows
the token; anything they add to the report channel breaks the exact match), always-equal
results, patched or shadowed builtins, patched modules the tests import, redefined test helpers,
trace and profile functions, replacing the entry point in the test namespace, and reading the
tests or reference solutions from disk (the configuration file is gone before the program
starts, and the evaluator has the sandbox hide the data directory). ``gc.freeze`` keeps
``gc.get_objects()`` and ``gc.get_referrers()`` from listing the harness's objects. A program
that ignores SIGXCPU or raises its soft CPU limit is still killed at the hard limit, which it
cannot raise.

Standard library only: it runs under ``python -I`` in the sandbox, without masr_graph. Only
:func:`main` runs, and only when this file is the sandbox's main program.
"""

import builtins as _builtins_module

# Every function below is created with this copy as its builtins, so a program that patches the
# builtins module does not change what the harness itself calls.
__builtins__ = dict(vars(_builtins_module))

import ast  # noqa: E402  (imported after the copy, on purpose: see above)
import collections
import gc
import importlib
import json
import sys
import traceback
import types
from os import O_RDONLY, _exit, close, devnull, dup, dup2, readv, unlink, write
from os import open as _open_fd
from sys import setprofile, settrace

CONFIG_FILE = "harness.json"
"""Written by the parent: ``report_fd``, ``program`` (file name), ``entry_point``, ``trusted``
(source or null) and ``tests`` (a list of ``{"name": ..., "source": ...}`` chunks, run in order)."""
TOKEN_HEX_DIGITS = 64

_PRISTINE = dict(__builtins__)
_LIVE_BUILTINS = vars(_builtins_module)
_GC_CALLBACKS = gc.callbacks
_STREAMS = (sys.stdout, sys.stderr)
_TYPE_NAME = type.__dict__["__qualname__"].__get__
_TYPE_MODULE = type.__dict__["__module__"].__get__
_TYPE_FLAGS = type.__dict__["__flags__"].__get__
_TYPE_MRO = type.__dict__["__mro__"].__get__
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: a type written in C, which no program can make
_NUMPY_SCALAR_BASES = {("numpy", "number"), ("numpy", "bool"), ("numpy", "bool_")}

_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray, range)
_SEQUENCES = (list, tuple, set, frozenset, collections.deque)
_MAPPINGS = (dict, collections.OrderedDict, collections.defaultdict, collections.Counter)
_KIND = {id(kind): "scalar" for kind in _SCALARS}
_KIND.update({id(kind): "sequence" for kind in _SEQUENCES})
_KIND.update({id(kind): "mapping" for kind in _MAPPINGS})
# Counter is the one accepted type written in Python (two MBPP reference solutions return one);
# its comparison methods could be replaced, so its class must be as it was at the start.
_COUNTER = collections.Counter
_COUNTER_STATE = {
    name: (value, getattr(value, "__code__", None)) for name, value in vars(_COUNTER).items()
}
_ACCEPTED = (
    "only exact builtin value types (None, bool, numbers, str, bytes, range, containers of them, "
    "deque, OrderedDict, defaultdict, Counter; NumPy numbers) are compared"
)


class _Rejected(BaseException):
    """An entry-point result the tests must not compare. Not an ``Exception``, so a broad
    ``except Exception`` in test code cannot swallow it (and a swallowed one is recorded)."""


def _counter_intact() -> bool:
    current = vars(_COUNTER)
    if len(current) != len(_COUNTER_STATE):
        return False
    for name, (value, code) in _COUNTER_STATE.items():
        if current.get(name) is not value or getattr(value, "__code__", None) is not code:
            return False
    return True


def _numpy_scalar(kind: type) -> bool:
    """A NumPy number or bool (``np.float64`` from ``np.mean`` ...): C types that compare by
    value. Recognised by their C-ness and their bases' names, not through ``sys.modules``, which
    the program controls."""
    if not _TYPE_FLAGS(kind) & _IMMUTABLE_TYPE:
        return False
    return any(
        (_TYPE_MODULE(base), _TYPE_NAME(base)) in _NUMPY_SCALAR_BASES for base in _TYPE_MRO(kind)
    )


def rejection(value: object) -> "str | None":
    """Why the tests may not compare ``value``, or ``None``. Only exact types are looked up
    (by identity: a metaclass could answer ``==`` for a class), and containers are walked with
    the ``dict``/``list`` machinery, so no code of the program runs here."""
    stack, seen = [value], set()
    while stack:
        item = stack.pop()
        kind = type(item)
        role = _KIND.get(id(kind))
        if role == "scalar" or (role is None and _numpy_scalar(kind)):
            continue
        if role is None:
            module = _TYPE_MODULE(kind)  # a class may set any object there: print only a str
            where = f"{module}." if type(module) is str else ""
            return f"the entry point returned a {where}{_TYPE_NAME(kind)} object"
        if id(item) in seen:
            continue
        seen.add(id(item))
        if role == "sequence":
            stack.extend(item)
        else:
            if kind is _COUNTER and not _counter_intact():
                return "the entry point returned a Counter after the program changed Counter"
            stack.extend(dict.keys(item))
            stack.extend(dict.values(item))
    return None


def restore() -> None:
    """Undo what program code may have changed that the harness or the tests depend on."""
    settrace(None)
    setprofile(None)
    del _GC_CALLBACKS[:]
    _LIVE_BUILTINS.clear()
    _LIVE_BUILTINS.update(_PRISTINE)


def checked(
    function: "collections.abc.Callable[..., object]", rejected: "list[str]"
) -> "collections.abc.Callable[..., object]":
    """``function`` (the entry point) behind the result check (module docstring, step 4)."""

    def entry_point(*args: object, **kwargs: object) -> object:
        try:
            result = function(*args, **kwargs)
        finally:
            restore()
        reason = rejection(result)
        if reason is not None:
            rejected.append(reason)
            raise _Rejected(reason)
        return result

    return entry_point


def imported_modules(trees: "list[ast.AST]") -> "list[str]":
    """Absolute module names imported by the trusted code (and their top-level packages)."""
    names = []
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.append(node.module)
    return list(dict.fromkeys(part for name in names for part in (name.split(".")[0], name)))


def snapshots(names: "list[str]") -> "dict[str, types.ModuleType]":
    """A copy of each module's namespace, taken before the program runs."""
    copies = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:
            continue  # the tests' own import fails the same way, with the real message
        copy = types.ModuleType(name)
        vars(copy).update(vars(module))
        copies[name] = copy
    return copies


def pristine_importer(
    copies: "dict[str, types.ModuleType]",
) -> "collections.abc.Callable[..., types.ModuleType]":
    """``__import__`` for trusted code: the snapshots where there are some."""
    real_import = _PRISTINE["__import__"]

    def pristine_import(  # the signature of __import__
        name: str,
        globals: object = None,
        locals: object = None,
        fromlist: object = (),
        level: int = 0,
    ) -> types.ModuleType:
        if level == 0:
            key = name if fromlist else name.partition(".")[0]
            if key in copies:
                return copies[key]
        return real_import(name, globals, locals, fromlist, level)

    return pristine_import


def flush_output() -> None:
    """Flush the original stdout/stderr objects (``os._exit`` would drop what they buffer)."""
    for stream in _STREAMS:
        try:
            stream.flush()
        except BaseException:  # closed or broken by the program: nothing to keep
            pass


def fail(messages: int, text: str) -> None:
    """End the run as a failure whose last stderr line is ``text``."""
    flush_output()
    try:
        write(messages, ("\n" + text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass
    _exit(1)


def describe(exc: BaseException, where: str) -> str:
    """The traceback and a last line naming the exception and where it happened."""
    try:
        # The first frame is the harness's own ``exec`` call.
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next)
        summary = lines[-1].strip()
        return "".join(lines).rstrip() + f"\n{summary} (in {where})"
    except BaseException:  # a program exception whose __str__ fails
        return f"{_TYPE_NAME(type(exc))} (in {where})"


def read_token(messages: int) -> int:
    buffer = bytearray(TOKEN_HEX_DIGITS)
    view, got = memoryview(buffer), 0
    while got < TOKEN_HEX_DIGITS:
        count = readv(0, [view[got:]])
        if count == 0:
            break
        got += count
    view.release()
    try:
        if got != TOKEN_HEX_DIGITS:
            raise ValueError(f"{got} bytes")
        token = int(buffer, 16)
    except ValueError as exc:
        fail(messages, f"masr harness: no token on stdin ({exc}); run it through code_eval")
    buffer[:] = bytes(TOKEN_HEX_DIGITS)
    empty = _open_fd(devnull, O_RDONLY)
    dup2(empty, 0)
    close(empty)
    return token


def main() -> None:
    messages = dup(2)
    token = read_token(messages)
    with open(CONFIG_FILE, encoding="utf-8") as handle:
        config = json.load(handle)
    unlink(CONFIG_FILE)  # the tests' expected values must not be readable by the program
    entry_point, report_fd = config["entry_point"], config["report_fd"]
    program_path = config["program"]
    tests = [
        (chunk["name"], compile(chunk["source"], f"<{chunk['name']}>", "exec", dont_inherit=True))
        for chunk in config["tests"]
    ]
    trusted = config["trusted"]
    trees = [ast.parse(chunk["source"]) for chunk in config["tests"]]
    trees += [ast.parse(trusted)] if trusted is not None else []
    test_builtins = dict(
        _PRISTINE, __import__=pristine_importer(snapshots(imported_modules(trees)))
    )
    definitions = {"__name__": "masr_trusted", "__builtins__": test_builtins}
    if trusted is not None:
        exec(compile(trusted, "<trusted definitions>", "exec", dont_inherit=True), definitions)
    with open(program_path, "rb") as handle:
        source = handle.read()

    program = types.ModuleType("__main__")
    program.__file__ = program_path
    program.__builtins__ = _builtins_module
    sys.modules["__main__"] = program
    sys.argv = [program_path]
    rejected: list[str] = []
    gc.freeze()
    try:
        exec(compile(source, program_path, "exec", dont_inherit=True), vars(program))
    except SystemExit:
        restore()
        fail(messages, "masr harness: the program exited (SystemExit) before the tests ran")
    except BaseException as exc:
        restore()
        fail(messages, describe(exc, "the program's top-level code"))
    restore()

    namespace = {
        name: value
        for name, value in vars(program).items()
        if type(name) is str and (name == entry_point or name not in _PRISTINE)
    }
    namespace.update(
        {k: v for k, v in definitions.items() if not k.startswith("__") and k != entry_point}
    )
    namespace.update({"__name__": "__main__", "__builtins__": test_builtins})
    solution = namespace.get(entry_point)
    wrapper = None if solution is None else checked(solution, rejected)
    gc.freeze()
    for name, code in tests:
        if wrapper is not None:
            namespace[entry_point] = wrapper
        try:
            exec(code, namespace)
        except SystemExit:
            restore()
            fail(messages, f"masr harness: SystemExit raised during the tests (in {name})")
        except _Rejected as exc:
            restore()
            fail(messages, f"masr harness: {exc.args[0]} (in {name}); {_ACCEPTED}")
        except BaseException as exc:
            restore()
            fail(messages, describe(exc, name))
        restore()
    if rejected:
        fail(messages, f"masr harness: {rejected[0]} (the tests caught the rejection); {_ACCEPTED}")
    flush_output()
    try:
        write(report_fd, b"%064x" % token)
    except OSError as exc:
        fail(messages, f"masr harness: the program closed the report channel ({exc})")
    _exit(0)


if __name__ == "__main__":
    main()
