"""insider uses aiohttp's public API only: a scan of the source that fails the moment private API creeps back.

What a release of aiohttp 3.x may change without notice: its submodules (``aiohttp.helpers``,
``aiohttp.client_proto``, ...), the underscore attributes of its objects, and the classes it
does not document for subclassing (its connection protocols, its connector). The scan reads
``insider/`` (not the one server module that holds, behind a documented seam, what aiohttp's
server offers no public hook for; that module has a test of its own) and reports:

- an import from an aiohttp submodule (but the access logger's two documented names), or of a
  name outside ``aiohttp.__all__`` (and ``aiohttp.web.__all__`` for ``aiohttp.web``);
- an attribute of ``aiohttp`` or ``web`` outside those lists (``aiohttp.helpers.x``);
- a subclass of an aiohttp class other than those documented for it (``web.View``,
  ``AbstractAccessLogger``, the HTTP exceptions);
- ``x._name`` where aiohttp defines ``_name`` (on its classes, their instances or slots), other
  than ``self``/``cls`` of insider's own classes, and ``getattr``/``setattr``/``hasattr`` with
  such a name.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "insider"
# The server's seam: the one place for what aiohttp's server offers no public hook for.
SERVER_SEAM = PACKAGE / "web" / "aiohttp_seam.py"

PUBLIC = frozenset(aiohttp.__all__) | {"web", "__version__"}
PUBLIC_WEB = frozenset(web.__all__)
# Classes aiohttp documents as meant to be subclassed.
SUBCLASSABLE = frozenset({"View", "AbstractAccessLogger"})
# Names aiohttp documents in submodules of their own: an ``access_log_class`` must subclass
# ``aiohttp.abc.AbstractAccessLogger`` (its Logging page and AppRunner's reference), and the
# default it replaces, ``AccessLogger`` (now in ``aiohttp.web_log``), writes the
# ``access_log_format`` line those pages document.
DOCUMENTED_IN_SUBMODULES = {
    "aiohttp.abc": frozenset({"AbstractAccessLogger"}),
    "aiohttp.web_log": frozenset({"AccessLogger"}),
}


@functools.cache
def aiohttp_private_names() -> frozenset[str]:
    """Every ``_name`` aiohttp defines on its classes and their instances (methods, attributes, slots)."""
    names: set[str] = set()
    for path in Path(aiohttp.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(item.name)
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
                        if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets) and item.value:
                            names.update(
                                e.value
                                for e in ast.walk(item.value)
                                if isinstance(e, ast.Constant) and isinstance(e.value, str)
                            )
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                names.add(node.attr)
    return frozenset(n for n in names if _private(n))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _Scan(ast.NodeVisitor):
    """The uses of aiohttp's private API in one module."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.found: list[str] = []
        self.aiohttp_aliases: set[str] = set()  # names bound to the aiohttp package
        self.web_aliases: set[str] = set()  # names bound to aiohttp.web
        self.imported: set[str] = set()  # names imported from aiohttp or aiohttp.web
        self.classes: list[bool] = []  # for each enclosing class: does it derive from aiohttp?

    def report(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.where}:{getattr(node, 'lineno', '?')}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "aiohttp":
                self.aiohttp_aliases.add(alias.asname or "aiohttp")
            elif alias.name == "aiohttp.web":
                if alias.asname:
                    self.web_aliases.add(alias.asname)
                else:
                    self.aiohttp_aliases.add("aiohttp")
            elif alias.name.startswith("aiohttp."):
                self.report(node, f"import of aiohttp's submodule {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module == "aiohttp":
            for alias in node.names:
                if alias.name not in PUBLIC:
                    self.report(node, f"from aiohttp import {alias.name} (not in aiohttp.__all__)")
                elif alias.name == "web":
                    self.web_aliases.add(alias.asname or "web")
                else:
                    self.imported.add(alias.asname or alias.name)
        elif module == "aiohttp.web":
            for alias in node.names:
                if alias.name not in PUBLIC_WEB:
                    self.report(node, f"from aiohttp.web import {alias.name} (not in aiohttp.web.__all__)")
                self.imported.add(alias.asname or alias.name)
        elif module.startswith("aiohttp."):
            for alias in node.names:
                if alias.name not in DOCUMENTED_IN_SUBMODULES.get(module, ()):
                    self.report(node, f"import of {alias.name} from aiohttp's submodule {module}")
            self.imported.update(alias.asname or alias.name for alias in node.names)

    def _from_aiohttp(self, node: ast.expr) -> str | None:
        """The aiohttp name ``node`` stands for (``aiohttp.X``, ``web.X`` or an imported name), if any."""
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.aiohttp_aliases | self.web_aliases
        ):
            return node.attr
        if isinstance(node, ast.Name) and node.id in self.imported:
            return node.id
        return None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        derived = False
        for base in node.bases:
            name = self._from_aiohttp(base)
            if name is None:
                continue
            derived = True
            if name not in SUBCLASSABLE and not name.startswith("HTTP"):
                self.report(node, f"class {node.name} subclasses aiohttp's {name}")
        self.classes.append(derived)
        self.generic_visit(node)
        self.classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        value = node.value
        if isinstance(value, ast.Name):
            if value.id in self.aiohttp_aliases and node.attr not in PUBLIC:
                self.report(node, f"{value.id}.{node.attr} (not in aiohttp.__all__)")
            elif value.id in self.web_aliases and node.attr not in PUBLIC_WEB:
                self.report(node, f"{value.id}.{node.attr} (not in aiohttp.web.__all__)")
        if node.attr in aiohttp_private_names():
            own = isinstance(value, ast.Name) and value.id in ("self", "cls") and self.classes and not self.classes[-1]
            if not own:
                self.report(node, f"{ast.unparse(node)}: {node.attr} is aiohttp's private attribute")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in aiohttp_private_names()
        ):
            self.report(node, f"{node.func.id}(..., {node.args[1].value!r}): aiohttp's private attribute")
        self.generic_visit(node)


def private_uses(source: str, where: str = "<source>") -> list[str]:
    scan = _Scan(where)
    scan.visit(ast.parse(source))
    return scan.found


def modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != SERVER_SEAM:
            yield path


def test_insider_uses_only_aiohttp_public_api() -> None:
    found = [
        use for path in modules() for use in private_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]

    assert found == []


def test_the_server_seam_exists() -> None:
    # The one exemption must name a real module, or the scan would skip nothing useful.
    assert SERVER_SEAM.is_file()


@pytest.mark.parametrize(
    "source",
    [
        "from aiohttp.client_proto import ResponseHandler",
        "from aiohttp.helpers import get_env_proxy_for_url",
        "from aiohttp import client_proto",
        "import aiohttp.connector",
        "from aiohttp.web_protocol import RequestHandler",
        "import aiohttp\nx = aiohttp.helpers.get_env_proxy_for_url",
        "from aiohttp import web\nx = web.web_protocol",
        "import aiohttp\nclass Conn(aiohttp.TCPConnector):\n    pass",
        "from aiohttp import TCPConnector\nclass Conn(TCPConnector):\n    pass",
        "def f(connector):\n    connector._factory = None",
        "from aiohttp.web_log import KeyMethod",
        "from aiohttp.abc import AbstractStreamWriter",
        "def f(response):\n    return response._payload",
        "def f(session):\n    return session._connector",
        "def f(response):\n    return getattr(response, '_payload')",
        "import aiohttp\nclass Conn(aiohttp.TCPConnector):\n    def f(self):\n        return self._factory",
    ],
)
def test_the_scan_finds_private_api(source: str) -> None:
    assert private_uses(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import aiohttp\nconfig = aiohttp.TraceConfig()\nsession = aiohttp.ClientSession(trace_configs=[config])",
        "from aiohttp import web\nclass Item(web.View):\n    pass",
        "from aiohttp import web\nclass Gone(web.HTTPGone):\n    pass",
        "class Client:\n    def __init__(self, session):\n        self._session = session",
        "from urllib.parse import urlsplit\nparts = urlsplit('http://x')._replace(query='')",
        "import aiohttp_apispec\nfrom aiohttp_apispec import docs",
        "from aiohttp.abc import AbstractAccessLogger\nclass Log(AbstractAccessLogger):\n    pass",
        "from aiohttp.web_log import AccessLogger\nline = AccessLogger(logger, fmt)",
    ],
)
def test_the_scan_lets_public_api_through(source: str) -> None:
    assert private_uses(source) == []
