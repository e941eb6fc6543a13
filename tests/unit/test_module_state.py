"""No module-level mutable state in insider/: a scan of the source that fails the moment some creeps back.

Two services in one process must not see each other, and an embedding program must find its
own process as it left it: state lives in objects that a container, an app or a command
owns. Constants and frozen tables are fine (a dict that nothing writes to is a table). The
scan reads ``insider/`` and reports:

- a ``global`` statement;
- a module-level name bound to a mutable value (a dict, list or set, by literal, comprehension
  or constructor, a ``collections`` container, a ``bytearray``) that is mutated anywhere in the
  package (a mutating method, an item assigned or deleted, an augmented assignment), under its
  own name or imported;
- a module-level lock, event, condition, semaphore or queue (of ``threading``, ``asyncio`` or
  ``queue``), a weak container, or a ``ContextVar`` whose default is mutable: they exist to be
  shared and changed;
- a cache on a function or method (``functools.cache``, ``lru_cache``): one per process;
- an attribute or item written on a module-level import (``logging.raiseExceptions = False``,
  ``os.environ["X"] = ...``, ``setattr(some_module, ...)``): another module's state.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "insider"

MUTABLE_CONSTRUCTORS = frozenset(
    {"dict", "list", "set", "bytearray", "defaultdict", "OrderedDict", "Counter", "deque", "ChainMap"}
)
# Made to be shared and changed: never at module level.
SHARED_STATE_CONSTRUCTORS = frozenset(
    {
        "Lock",
        "RLock",
        "Event",
        "Condition",
        "Semaphore",
        "BoundedSemaphore",
        "Barrier",
        "Queue",
        "SimpleQueue",
        "LifoQueue",
        "PriorityQueue",
        "WeakKeyDictionary",
        "WeakValueDictionary",
        "WeakSet",
    }
)
MUTATING_METHODS = frozenset(
    {
        "append",
        "appendleft",
        "extend",
        "extendleft",
        "insert",
        "remove",
        "pop",
        "popleft",
        "popitem",
        "clear",
        "add",
        "discard",
        "update",
        "setdefault",
        "sort",
        "reverse",
        "rotate",
        "difference_update",
        "intersection_update",
        "symmetric_difference_update",
        "__setitem__",
        "__delitem__",
    }
)
CACHES = frozenset({"cache", "lru_cache"})


def _called(node: ast.expr) -> str | None:
    """The name a call's function goes by: ``dict`` for ``dict()``, ``Lock`` for ``threading.Lock()``."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _mutable(value: ast.expr | None) -> bool:
    if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp):
        return True
    return _called(value) in MUTABLE_CONSTRUCTORS if value is not None else False


def _module_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """The module's own statements, those under a module-level ``if``/``try``/``with`` included."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop(0)
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With):
            for name in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, name, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def _targets(node: ast.stmt) -> list[tuple[str, ast.expr | None]]:
    if isinstance(node, ast.Assign):
        return [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [(node.target.id, node.value)]
    return []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass
class Module:
    name: str
    where: str
    tree: ast.Module
    mutable: set[str] = field(default_factory=set)  # module-level names bound to mutable values
    imported: dict[str, tuple[str, str]] = field(default_factory=dict)  # local name -> (module, name)
    import_names: set[str] = field(default_factory=set)  # names bound by module-level imports


def _read(name: str, where: str, source: str) -> Module:
    module = Module(name, where, ast.parse(source))
    for node in _module_level(module.tree):
        for target, value in _targets(node):
            if _mutable(value):
                module.mutable.add(target)
        if isinstance(node, ast.Import):
            module.import_names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                local = alias.asname or alias.name
                module.import_names.add(local)
                if node.module:
                    module.imported[local] = (node.module, alias.name)
    return module


def _mutated_name(node: ast.AST) -> str | None:
    """The name whose value ``node`` mutates in place, if it does."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING_METHODS:
        target: ast.expr = node.func.value
    elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
        for t in targets:
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                return t.value.id
            if isinstance(node, ast.AugAssign) and isinstance(t, ast.Name):
                return t.id
        return None
    else:
        return None
    return target.id if isinstance(target, ast.Name) else None


def _findings(module: Module, mutable_anywhere: set[tuple[str, str]]) -> Iterator[str]:
    def at(node: ast.AST, what: str) -> str:
        return f"{module.where}:{getattr(node, 'lineno', '?')}: {what}"

    own = {(module.name, name) for name in module.mutable}
    for statement in _module_level(module.tree):
        for bound, value in _targets(statement):
            called = _called(value) if value is not None else None
            if called in SHARED_STATE_CONSTRUCTORS:
                yield at(statement, f"{bound} = {called}(...) at module level: state shared by the whole process")
            if called == "ContextVar" and isinstance(value, ast.Call):
                default = next((k.value for k in value.keywords if k.arg == "default"), None)
                if _mutable(default):
                    yield at(statement, f"ContextVar {bound} with a mutable default: one object for every context")
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Global):
            yield at(node, f"global {', '.join(node.names)}")
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                inner = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = inner.attr if isinstance(inner, ast.Attribute) else getattr(inner, "id", None)
                if name in CACHES:
                    yield at(node, f"@{name} on {node.name}: a cache of the whole process")
        name = _mutated_name(node)
        if name is not None:
            origin = (module.name, name) if name in module.mutable else module.imported.get(name)
            if origin is not None and (origin in own or origin in mutable_anywhere):
                yield at(node, f"{name} (module-level, in {origin[0]}) is mutated")
        # Another module's state: an attribute or item written on a module-level import.
        writes: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.Delete):
            writes = list(node.targets) if isinstance(node, ast.Assign | ast.Delete) else [node.target]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("setattr", "delattr") and node.args:
            writes = [ast.Attribute(value=node.args[0], attr="?", ctx=ast.Store())]
        for written in writes:
            base = written
            while isinstance(base, ast.Attribute | ast.Subscript):
                base = base.value
            if base is not written and isinstance(base, ast.Name) and base.id in module.import_names:
                yield at(node, f"{ast.unparse(written)}: writes to the state of {base.id}, an import")


def scan(sources: dict[str, str]) -> list[str]:
    """What the scan reports in ``sources`` (module name -> source)."""
    modules = [_read(name, name, source) for name, source in sources.items()]
    mutable_anywhere = {(m.name, name) for m in modules for name in m.mutable}
    return [finding for module in modules for finding in _findings(module, mutable_anywhere)]


def test_insider_keeps_no_module_level_state() -> None:
    sources = {_module_name(p): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}
    assert scan(sources) == []


@pytest.mark.parametrize(
    "source",
    [
        "_SEEN: set[str] = set()\ndef f(k):\n    _SEEN.add(k)",
        "_CACHE = {}\ndef f(k, v):\n    _CACHE[k] = v",
        "_CACHE = {}\ndef f(k):\n    del _CACHE[k]",
        "_LINES = []\ndef f(line):\n    _LINES.append(line)",
        "_COUNT = [0]\ndef f():\n    _COUNT[0] += 1",
        "_LIST = list()\ndef f():\n    _LIST.extend([1])",
        "_n = 0\ndef f():\n    global _n\n    _n += 1",
        "import threading\n_lock = threading.Lock()",
        "import asyncio\n_stop = asyncio.Event()",
        "from queue import SimpleQueue\nLINES = SimpleQueue()",
        "import weakref\n_apps = weakref.WeakKeyDictionary()",
        "import contextvars\n_ctx = contextvars.ContextVar('x', default={})",
        "import functools\n@functools.lru_cache(maxsize=10)\ndef f(x):\n    return x",
        "from functools import cache\nclass C:\n    @cache\n    def f(self):\n        return 1",
        "import logging\nlogging.raiseExceptions = False",
        "import os\ndef f():\n    os.environ['X'] = '1'",
        "import webargs.aiohttpparser\ndef f(h):\n    webargs.aiohttpparser.parser.error_callback = h",
        "from insider import handlers\ndef f():\n    setattr(handlers, 'x', 1)",
        "if True:\n    _SEEN = set()\ndef f(k):\n    _SEEN.add(k)",
    ],
)
def test_the_scan_finds_module_state(source: str) -> None:
    assert scan({"insider.example": source}) != []


def test_the_scan_follows_a_mutable_name_into_the_module_that_imports_it() -> None:
    found = scan(
        {
            "insider.a": "SEEN: set[str] = set()",
            "insider.b": "from insider.a import SEEN\ndef f(k):\n    SEEN.add(k)",
        }
    )
    assert found == ["insider.b:3: SEEN (module-level, in insider.a) is mutated"]


@pytest.mark.parametrize(
    "source",
    [
        "TABLE = {'a': 1}\ndef f(k):\n    return TABLE[k]",
        "NAMES = ['a', 'b']\ndef f():\n    return list(NAMES)",
        "KEYS = frozenset({'a'})",
        "from types import MappingProxyType\nLEVELS = MappingProxyType({'info': 20})",
        "import contextvars\n_SENDING = contextvars.ContextVar('sending', default=None)",
        "def f():\n    seen = set()\n    seen.add(1)\n    return seen",
        "class C:\n    def __init__(self):\n        self.lines = []\n    def f(self):\n        self.lines.append(1)",
        "def mark(handler):\n    setattr(handler, '_exempt', True)\n    return handler",
        "import asyncio\nclass C:\n    def __init__(self):\n        self._lock = asyncio.Lock()",
        "import logging\ndef f():\n    logging.getLogger('x').info('hello')",
        "import re\n_PATTERN = re.compile('a')",
    ],
)
def test_the_scan_lets_constants_and_owned_state_through(source: str) -> None:
    assert scan({"insider.example": source}) == []
