"""Static policy: our AST allowlist for agent code, run before RestrictedPython.

The module body may hold only a docstring, imports of allowed modules, function definitions and
UPPERCASE constants; function bodies may use only the node types in `_ALLOWED_NODES`, names that
are defined (builtins allowlist, module-level names, parameters, locals), attribute names from the
allowlist, and Exception-family classes in `except`/`raise`. Decisions worth stating:

- lambda is allowed: it is an anonymous function under the same checks as a def, and forbidding
  it only pushes agents to nested defs for `sorted(key=...)`;
- the walrus `:=` is allowed: it binds a local, nothing more (`if (m := P.search(s)):` is idiomatic);
- generator expressions are allowed, generator functions (yield) are not: a suspended frame
  outliving the call is state we do not want, and `gi_frame` walks start there;
- `counts[k] += 1` is refused here with a rewrite hint, since RestrictedPython refuses it anyway;
- imports may appear inside functions too (same allowlist; they only bind a local name).

Every finding is a `Diagnostic` with a stable code, the line, and what to do instead.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator

from primitives.diagnostics import Diagnostic
from sandbox.runtime.allowlist import (
    ATTRIBUTE_HINTS,
    ATTRIBUTES,
    BUILTIN_EXCEPTIONS,
    BUILTIN_NAMES,
    CONSTANT_CALLS,
    DENIED_ATTRIBUTES,
    ENTRY_ARG,
    ENTRYPOINTS,
    FORBIDDEN_NAME_HINTS,
    MODULE_EXCEPTIONS,
    MODULES,
    PACKAGES,
    module_members,
)
from sandbox.runtime.loader import CONSTANT_NAME

_MODULE_LIST = ", ".join(MODULES)
_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Module, ast.FunctionDef, ast.Return, ast.Delete, ast.Assign, ast.AugAssign, ast.AnnAssign,
    ast.For, ast.While, ast.If, ast.Raise, ast.Try, ast.Assert, ast.Import, ast.ImportFrom, ast.Expr,
    ast.Pass, ast.Break, ast.Continue, ast.BoolOp, ast.NamedExpr, ast.BinOp, ast.UnaryOp, ast.Lambda,
    ast.IfExp, ast.Dict, ast.Set, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
    ast.Compare, ast.Call, ast.FormattedValue, ast.JoinedStr, ast.Constant, ast.Attribute,
    ast.Subscript, ast.Starred, ast.Name, ast.List, ast.Tuple, ast.Slice, ast.expr_context, ast.boolop,
    ast.operator, ast.unaryop, ast.cmpop, ast.comprehension, ast.ExceptHandler, ast.arguments, ast.arg,
    ast.keyword, ast.alias,
)
_NODE_MESSAGES: dict[type[ast.AST], tuple[str, str]] = {
    ast.ClassDef: ("classes are not allowed", "use functions and dicts"),
    ast.AsyncFunctionDef: ("async functions are not allowed", "use a plain def"),
    ast.Await: ("await is not allowed", "use plain function calls"),
    ast.AsyncFor: ("async for is not allowed", "use a plain for loop"),
    ast.AsyncWith: ("async with is not allowed", "remove the with block"),
    ast.Yield: ("yield (generator functions) is not allowed", "build and return a list instead"),
    ast.YieldFrom: ("yield from is not allowed", "build and return a list instead"),
    ast.Global: ("global is not allowed", "state does not survive between events; use local variables"),
    ast.Nonlocal: ("nonlocal is not allowed", "return values from helper functions instead"),
    ast.With: ("with is not allowed", "there are no files or resources to manage; remove the with block"),
    ast.Match: ("match statements are not allowed", "use if/elif chains"),
    ast.TryStar: ("except* is not allowed", "use a plain try/except"),
}
_EXCEPTION_NAMES = frozenset(BUILTIN_EXCEPTIONS)
_PRINT_KEYWORDS = frozenset({"sep", "end"})


def _d(code: str, message: str, node: ast.AST | None, hint: str | None = None) -> Diagnostic:
    line = getattr(node, "lineno", None)
    col = getattr(node, "col_offset", None)
    return Diagnostic(code, message, line, None if col is None else col + 1, hint)


def _bound_names(body: Iterable[ast.AST]) -> set[str]:
    """Names bound in a function body (not descending into nested functions' bodies)."""
    names: set[str] = set()
    stack = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            stack.extend(node.decorator_list)
            if not isinstance(node, ast.ClassDef):
                stack.extend(d for d in (*node.args.defaults, *node.args.kw_defaults) if d is not None)
            continue
        elif isinstance(node, ast.Lambda):
            stack.extend(node.args.defaults)
            continue
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names.add(alias.asname or alias.name.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names


def _params(args: ast.arguments) -> Iterator[ast.arg]:
    yield from args.posonlyargs
    yield from args.args
    if args.vararg:
        yield args.vararg
    yield from args.kwonlyargs
    if args.kwarg:
        yield args.kwarg


def _immutable_literal(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.Tuple):
        return all(_immutable_literal(e) for e in node.elts)
    return False


class _Checker(ast.NodeVisitor):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.found: list[Diagnostic] = []
        self.module_names: set[str] = set()
        self.defined: set[str] = set()
        self.constants: set[str] = set()
        self.functions: dict[str, ast.FunctionDef] = {}
        # name -> allowed module path ('re', 'urllib.parse') for names bound to a module namespace
        self.module_bindings: dict[str, str] = {}
        # name -> (module, member) for names bound by `from m import member`
        self.member_bindings: dict[str, tuple[str, str]] = {}
        self.scopes: list[set[str]] = []  # enclosing function scopes, innermost last
        self.except_names: list[set[str]] = []

    def report(self, code: str, message: str, node: ast.AST | None, hint: str | None = None) -> None:
        self.found.append(_d(code, message, node, hint))

    # -- module level -------------------------------------------------------------------------

    def check_module(self, tree: ast.Module) -> None:
        # Every module-level name is known before any body is checked (functions may refer to
        # helpers and constants defined further down); constants may refer only to earlier ones.
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.Import | ast.ImportFrom):
                self.module_names.update(self._names_of(stmt))
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                self.module_names.update(t.id for t in targets if isinstance(t, ast.Name))
        for index, stmt in enumerate(tree.body):
            self._module_statement(index, stmt)
        for fn in tree.body:
            if isinstance(fn, ast.FunctionDef):
                self.visit(fn)
        self._entrypoints()

    @staticmethod
    def _names_of(stmt: ast.FunctionDef | ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(stmt, ast.FunctionDef):
            return [stmt.name]
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
            return []
        return [a.asname or a.name.split(".")[0] for a in stmt.names if a.name != "*"]

    def _define(self, name: str, node: ast.AST) -> None:
        if name in self.defined:
            self.report("duplicate-definition", f"'{name}' is defined more than once at module level", node,
                        "give each function and constant a distinct name")
        self.defined.add(name)

    def _module_statement(self, index: int, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and index == 0 \
                and isinstance(stmt.value.value, str):
            return  # docstring
        if isinstance(stmt, ast.FunctionDef):
            self._define(stmt.name, stmt)
            self.functions.setdefault(stmt.name, stmt)
        elif isinstance(stmt, ast.Import | ast.ImportFrom):
            self.visit(stmt)
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if len(targets) != 1 or not isinstance(targets[0], ast.Name):
                self.report("bad-constant", "module-level assignments must bind one UPPERCASE name", stmt,
                            "write one constant per line: NAME = <literal>")
                return
            name = targets[0].id
            if not CONSTANT_NAME.match(name):
                self.report("bad-constant", f"module-level name '{name}' must be an UPPERCASE constant",
                            stmt, f"rename it {name.upper()} if it is a constant; state does not survive "
                                  "between events, so keep working values inside the function")
                return
            if stmt.value is None:
                self.report("bad-constant", f"constant '{name}' has no value", stmt, "assign a literal")
                return
            self._check_binding(name, targets[0])
            self._constant_value(name, stmt.value)
            self.visit(stmt.value)
            self._define(name, stmt)
            self.constants.add(name)
        elif type(stmt) in _NODE_MESSAGES:
            self.visit(stmt)
        else:
            self.report("node-not-allowed", f"{type(stmt).__name__} statements are not allowed at module "
                        "level", stmt, "the module may contain only imports, def and UPPERCASE constants; "
                        "put logic inside the entrypoint function")

    def _constant_value(self, name: str, node: ast.expr) -> None:
        bad = self._non_constant(node)
        if bad is not None:
            self.report("bad-constant", f"constant '{name}' must be built from literals; "
                        f"'{ast.unparse(bad)[:60]}' is not allowed here", bad,
                        "use literals, other constants, arithmetic, re.compile('...'), "
                        "ipaddress.ip_network('...') or frozenset(...); constants are frozen (lists become "
                        "tuples, dicts read-only)")

    def _non_constant(self, node: ast.expr) -> ast.expr | None:
        """The first sub-expression that is not allowed in a module-level constant, or None."""
        if isinstance(node, ast.Constant):
            return None
        if isinstance(node, ast.UnaryOp):
            return self._non_constant(node.operand)
        if isinstance(node, ast.BinOp):
            return self._non_constant(node.left) or self._non_constant(node.right)
        if isinstance(node, ast.BoolOp):
            return next((b for v in node.values if (b := self._non_constant(v)) is not None), None)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return next((b for e in node.elts if (b := self._non_constant(e)) is not None), None)
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if k is None:
                    return v
                bad = self._non_constant(k) or self._non_constant(v)
                if bad is not None:
                    return bad
            return None
        if isinstance(node, ast.Name):
            ok = node.id in self.constants or node.id in self.member_bindings
            return None if ok else node
        if isinstance(node, ast.Attribute):
            return None if self._rooted_at_module(node) else node
        if isinstance(node, ast.Call):
            if self._call_target(node.func) not in CONSTANT_CALLS:
                return node
            args = [*node.args, *(k.value for k in node.keywords)]
            if any(isinstance(a, ast.Starred) for a in node.args) \
                    or any(k.arg is None for k in node.keywords):
                return node
            return next((b for a in args if (b := self._non_constant(a)) is not None), None)
        return node

    def _rooted_at_module(self, node: ast.expr) -> bool:
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and (node.id in self.module_bindings
                                               or node.id in self.member_bindings)

    def _call_target(self, func: ast.expr) -> tuple[str, str] | None:
        if isinstance(func, ast.Name):
            if func.id in self.member_bindings:
                return self.member_bindings[func.id]
            if func.id in BUILTIN_NAMES and func.id not in self.module_names:
                return ("builtins", func.id)
            return None
        if isinstance(func, ast.Attribute):
            module = self._module_of(func.value)
            if module is not None:
                return (module, func.attr)
        return None

    def _entrypoints(self) -> None:
        entry, extras = ENTRYPOINTS[self.kind]
        if entry not in self.functions:
            self.report("missing-entrypoint", f"a {self.kind} step must define {entry}({ENTRY_ARG[entry]})",
                        None, f"add a top-level 'def {entry}({ENTRY_ARG[entry]}):' that is called once per "
                              f"{ENTRY_ARG[entry]}")
        for name in (entry, *extras):
            fn = self.functions.get(name)
            if fn is None:
                continue
            a = fn.args
            if len(a.posonlyargs) + len(a.args) != 1 or a.vararg or a.kwarg or a.kwonlyargs:
                self.report("bad-signature", f"{name}() must take exactly one positional parameter",
                            fn, f"write 'def {name}({ENTRY_ARG[entry]}):'")

    def entrypoints(self) -> tuple[str, ...]:
        entry, extras = ENTRYPOINTS[self.kind]
        return tuple(n for n in (entry, *extras) if n in self.functions)

    # -- names and scopes ---------------------------------------------------------------------

    def _is_local(self, name: str) -> bool:
        return any(name in scope for scope in self.scopes)

    def _module_of(self, node: ast.expr) -> str | None:
        """The allowed module an expression denotes (`re`, `urllib.parse`), if it denotes one."""
        if isinstance(node, ast.Name):
            if self._is_local(node.id):
                return None
            return self.module_bindings.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = self._module_of(node.value)
            if parent is not None and node.attr in PACKAGES.get(parent, ()):
                return f"{parent}.{node.attr}"
        return None

    def _check_binding(self, name: str, node: ast.AST) -> None:
        if name.startswith("_") and name != "_":
            self.report("name-not-allowed", f"name '{name}' is not allowed: names starting with '_' are "
                        "reserved", node, f"rename it to '{name.lstrip('_') or 'value'}'")
        elif name in ("print", "printed"):
            self.report("name-not-allowed", f"'{name}' cannot be rebound", node, "choose another name")

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if not isinstance(node.ctx, ast.Load):
            self._check_binding(name, node)
            return
        if self._is_local(name) or name in self.module_names:
            return
        if name in BUILTIN_NAMES:
            return
        hint = FORBIDDEN_NAME_HINTS.get(name)
        if hint is not None or name.startswith("_"):
            self.report("name-not-allowed", f"'{name}' is not available in the sandbox", node,
                        hint or "names starting with '_' are reserved")
        else:
            self.report("undefined-name", f"name '{name}' is not defined", node,
                        "define it, import it from an allowed module, or read it from the event")

    # -- statements ---------------------------------------------------------------------------

    def generic_visit(self, node: ast.AST) -> None:
        if type(node) in _NODE_MESSAGES:
            message, hint = _NODE_MESSAGES[type(node)]
            self.report("node-not-allowed", message, node, hint)
            return
        if not isinstance(node, _ALLOWED_NODES):
            self.report("node-not-allowed", f"{type(node).__name__} is not allowed", node,
                        "see the guide for the allowed statements")
            return
        super().generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.Lambda, body: list[ast.stmt] | list[ast.expr]) -> None:
        args = node.args
        for default in (*args.defaults, *(d for d in args.kw_defaults if d is not None)):
            if not _immutable_literal(default):
                self.report("mutable-default", "parameter defaults must be immutable literals (None, "
                            "numbers, str, tuples of those)", default,
                            "default to None and build the value inside the function: a mutable default "
                            "would keep state from one event to the next")
            self.visit(default)
        scope = {a.arg for a in _params(args)}
        for a in _params(args):
            self._check_binding(a.arg, a)
        scope |= _bound_names(body)
        self.scopes.append(scope)
        self.except_names.append(set())
        for stmt in body:
            self.visit(stmt)
        self.scopes.pop()
        self.except_names.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_binding(node.name, node)
        if node.decorator_list:
            self.report("node-not-allowed", "decorators are not allowed", node.decorator_list[0],
                        "call helper functions explicitly")
        self._function(node, node.body)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._function(node, [node.body])

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = alias.name
            if name in MODULES:
                bound = alias.asname or name.split(".")[0]
                self.module_bindings[bound] = name if alias.asname else name.split(".")[0]
                if alias.asname:
                    self._check_binding(alias.asname, node)
            elif name in PACKAGES:
                children = ", ".join(f"{name}.{c}" for c in PACKAGES[name])
                self.report("import-not-allowed", f"import '{children}' rather than '{name}'", node,
                            f"write 'import {children}'")
            else:
                self._bad_import(name, node)

    def _bad_import(self, name: str, node: ast.AST) -> None:
        hint = "use the event fields or the allowed modules"
        if name.split(".")[0] == "typing":
            hint = "type annotations are allowed and ignored; remove the typing import"
        self.report("import-not-allowed", f"import of '{name}' is not allowed; use the event fields or the "
                    f"allowed modules: {_MODULE_LIST}", node, hint)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.report("import-not-allowed", "relative imports are not allowed", node,
                        f"import one of the allowed modules: {_MODULE_LIST}")
            return
        if module == "__future__" and all(a.name == "annotations" for a in node.names):
            return
        if module not in MODULES and module not in PACKAGES:
            self._bad_import(module, node)
            return
        members = module_members(module)
        for alias in node.names:
            if alias.name not in members:
                self.report("import-not-allowed", f"'{alias.name}' cannot be imported from '{module}' in the "
                            f"sandbox; available: {', '.join(members)}", node,
                            ATTRIBUTE_HINTS.get(alias.name, f"use one of the members of '{module}' listed"))
                continue
            bound = alias.asname or alias.name
            self._check_binding(bound, node)
            if module in PACKAGES:
                self.module_bindings[bound] = f"{module}.{alias.name}"
            else:
                self.member_bindings[bound] = (module, alias.name)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._store_target(target)
        self.visit(node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._store_target(node.target)
        if node.value is not None:
            self.visit(node.value)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Subscript | ast.Attribute):
            target = ast.unparse(node.target)
            op = ast.unparse(ast.BinOp(ast.Name("x"), node.op, ast.Name("y"))).split()[1]
            self.report("node-not-allowed", f"augmented assignment to an item or attribute ('{target} {op}= "
                        "...') is not allowed", node, f"write '{target} = {target} {op} ...'")
            return
        self._store_target(node.target)
        self.visit(node.value)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._store_target(target)

    def _store_target(self, target: ast.expr) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self._store_target(elt)
            return
        if isinstance(target, ast.Starred):
            self._store_target(target.value)
            return
        self.visit(target)

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.report("except-not-allowed", "bare 'except:' is not allowed", node,
                        "catch Exception or a specific subclass: 'except (KeyError, ValueError):'")
        else:
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            for t in types:
                if not self._exception_class(t):
                    self.report("except-not-allowed", f"'except {ast.unparse(t)}' is not allowed", t,
                                "catch Exception or one of its subclasses "
                                "(ValueError, KeyError, json.JSONDecodeError ...)")
        if node.name:
            self._check_binding(node.name, node)
            if self.except_names:
                self.except_names[-1].add(node.name)
        for stmt in node.body:
            self.visit(stmt)

    def _exception_class(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            if node.id in self.member_bindings:
                return self.member_bindings[node.id] in MODULE_EXCEPTIONS
            return node.id in _EXCEPTION_NAMES and not self._is_local(node.id) \
                and node.id not in self.module_names
        if isinstance(node, ast.Attribute):
            module = self._module_of(node.value)
            return module is not None and (module, node.attr) in MODULE_EXCEPTIONS
        return False

    def visit_Raise(self, node: ast.Raise) -> None:
        exc = node.exc
        if exc is not None:
            target = exc.func if isinstance(exc, ast.Call) else exc
            reraise = isinstance(exc, ast.Name) and any(exc.id in s for s in self.except_names)
            if reraise or self._exception_class(target):
                self.visit(exc)
            else:
                self.report("raise-not-allowed", f"'raise {ast.unparse(target)[:60]}' is not allowed", node,
                            "raise Exception or one of its subclasses, e.g. raise ValueError('why')")
                if isinstance(exc, ast.Call):
                    for arg in (*exc.args, *(k.value for k in exc.keywords)):
                        self.visit(arg)
        if node.cause is not None:
            self.visit(node.cause)

    def visit_comprehension(self, node: ast.comprehension) -> None:
        if node.is_async:
            self.report("node-not-allowed", "async comprehensions are not allowed", node.target,
                        "use a plain comprehension")
        self.generic_visit(node)

    # -- expressions --------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        module = self._module_of(node.value)
        if not isinstance(node.ctx, ast.Load):
            self.report("attribute-assignment", f"assigning or deleting attributes ('{ast.unparse(node)}') "
                        "is not allowed", node, "store values in a dict: data['key'] = value")
        elif attr.startswith("_"):
            self.report("attribute-not-allowed",
                        f"attribute '{attr}' is not allowed: names starting with '_' are private", node,
                        "use the public API of the value")
        elif module is not None and attr not in module_members(module):
            self.report("attribute-not-allowed", f"module '{module}' has no member '{attr}' in the sandbox; "
                        f"available: {', '.join(module_members(module))}", node,
                        ATTRIBUTE_HINTS.get(attr, "use one of the listed members"))
        elif attr in DENIED_ATTRIBUTES or attr not in ATTRIBUTES:
            self.report("attribute-not-allowed", f"attribute '{attr}' is not allowed", node,
                        ATTRIBUTE_HINTS.get(attr, "see the guide for the allowed methods of each type"))
        self.visit(node.value)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if (isinstance(value, str) and "__" in value) or (isinstance(value, bytes) and b"__" in value):
            self.report("dunder-string", "string constants may not contain '__'", node,
                        "double underscores name Python internals; write the text without them")

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "print" and not self._is_local("print"):
            for kw in node.keywords:
                if kw.arg not in _PRINT_KEYWORDS:
                    self.report("node-not-allowed", f"print() accepts only sep= and end= here, not "
                                f"{kw.arg or '**'}=", kw, "print() output is collected by the sandbox")
        self.generic_visit(node)


def check_policy(tree: ast.Module, kind: str) -> tuple[list[Diagnostic], tuple[str, ...]]:
    """Apply the policy to a parsed snippet: (diagnostics, entrypoints found)."""
    checker = _Checker(kind)
    checker.check_module(tree)
    return checker.found, checker.entrypoints()
