"""Cosmic Ray with the operator set and the scope of ``tests/mutation/*.toml``.

Usage (from a copy of the repository; ``tests/mutation/run.sh`` makes one and calls this)::

    python tests/mutation/cr.py init   TARGET.toml SESSION.sqlite   # mutants in scope, nothing run
    python tests/mutation/cr.py exec   TARGET.toml SESSION.sqlite   # run the test command per mutant
    python tests/mutation/cr.py report SESSION.sqlite               # score and surviving mutants
    python tests/mutation/cr.py survivors SESSION.sqlite            # forget the survivors' results

The operators are the single-point slips a person makes in numerical code: ``+ - * /`` swapped,
a comparison turned into another, a sign or a ``not`` dropped, ``and``/``or``, ``True``/``False``
and ``break``/``continue`` exchanged, an integer off by one and a float constant moved 1000x
either way (``NumberSlip`` below: a tolerance or threshold that drifts by orders of magnitude).  ``[cosmic-ray.scope] functions`` in a target's config restricts
the mutants to those functions (and the methods of those classes) of the module; without it the
whole module is mutated.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import parso
from cosmic_ray import plugins
from cosmic_ray.ast import is_number
from cosmic_ray.operators.operator import Example, Operator

#: Cosmic Ray's operators that are kept (regular expressions on ``core/NAME``)
KEEP = [
    r"core/ReplaceBinaryOperator_(Add_Sub|Sub_Add|Mul_Div|Div_Mul)$",  # a sign, an inverse
    r"core/ReplaceComparisonOperator_(Lt_LtE|LtE_Lt|Gt_GtE|GtE_Gt)$",  # strict or not
    r"core/ReplaceComparisonOperator_(Lt_Gt|Gt_Lt|LtE_GtE|GtE_LtE|Eq_NotEq|NotEq_Eq)$",  # reversed
    r"core/ReplaceUnaryOperator_(Delete_USub|Delete_Not)$",
    r"core/Replace(TrueWithFalse|FalseWithTrue|AndWithOr|OrWithAnd|BreakWithContinue|ContinueWithBreak)$",
]


class NumberSlip(Operator):
    """A numeric literal that slipped: an integer off by one (``+1``, ``-1``), a float moved
    1000x (``* 1000``, ``/ 1000``; a tolerance or threshold constant out by orders of magnitude)."""

    def mutation_positions(self, node):
        if is_number(node) and not node.value.endswith(("j", "J")):
            value = eval(node.value)  # noqa: S307
            if isinstance(value, int) or value != 0:
                for _ in range(2):
                    yield (node.start_pos, node.end_pos)

    def mutate(self, node, index):
        value = eval(node.value)  # noqa: S307
        if isinstance(value, int):
            value = value + (1, -1)[index]
        else:
            value = value * (1e3, 1e-3)[index]
        return parso.python.tree.Number(" " + repr(value), node.start_pos)

    @classmethod
    def examples(cls):
        return (Example("x = 2", "x = 3"), Example("x = 0.5", "x = 0.0005", occurrence=1))


def _install_operators():
    core = plugins.OPERATOR_PROVIDERS["core"]
    kept = {name: core[name] for name in core if any(re.match(k, f"core/{name}") for k in KEEP)}
    plugins.OPERATOR_PROVIDERS.clear()
    plugins.OPERATOR_PROVIDERS["core"] = kept
    plugins.OPERATOR_PROVIDERS["gcrf"] = {"NumberSlip": NumberSlip}


def _scope_lines(module: Path, names):
    """Line numbers of the named top-level functions and classes of ``module`` (None: all)."""
    if not names:
        return None
    tree = ast.parse(module.read_text())
    lines = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            lines.update(range(node.lineno, node.end_lineno + 1))
    missing = set(names) - {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    if missing:
        raise SystemExit(f"{module}: no top-level function or class {sorted(missing)}")
    return lines


def _decorator_lines(module: Path):
    """Lines of decorator expressions (``@numba.njit(cache=True, nogil=True, ...)``): their
    options change how a kernel is compiled, not what it computes, and with the JIT off (as the
    mutation run has it) they do nothing; mutants there are skipped."""
    lines = set()
    for node in ast.walk(ast.parse(module.read_text())):
        for dec in getattr(node, "decorator_list", []):
            lines.update(range(dec.lineno, dec.end_lineno + 1))
    return lines


def _apply_scope(config_path, session):
    """Mark mutants outside ``[cosmic-ray.scope] functions`` (and on decorator lines) as skipped;
    return their count."""
    from cosmic_ray.config import load_config
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    config = load_config(config_path)
    names = config.sub("scope").get("functions", [])
    lines = _scope_lines(Path(config["module-path"]), names)
    decorators = _decorator_lines(Path(config["module-path"]))
    skipped = 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            rows = [m.start_pos[0] for m in item.mutations]
            if any(r in decorators for r in rows) or (lines is not None and not all(r in lines for r in rows)):
                db.set_result(item.job_id, WorkResult(output="outside the scope",
                                                      worker_outcome=WorkerOutcome.SKIPPED))
                skipped += 1
    return skipped


def _report(session):
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    killed, survived, other = 0, [], 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            if result.worker_outcome == WorkerOutcome.NORMAL and result.test_outcome == TestOutcome.SURVIVED:
                survived.append((item, result))
            elif result.worker_outcome in (WorkerOutcome.NORMAL, WorkerOutcome.EXCEPTION, WorkerOutcome.ABNORMAL):
                killed += 1
            else:
                other += 1
        pending = db.num_work_items - db.num_results
    total = killed + len(survived)
    score = 100.0 * killed / total if total else float("nan")
    print(f"{session}: {total} mutants run, {killed} killed, {len(survived)} survived "
          f"(score {score:.1f}%), {pending} not run, {other} incompetent")
    for item, result in survived:
        m = item.mutations[0]
        print(f"  SURVIVED {m.module_path}:{m.start_pos[0]} {m.operator_name} #{m.occurrence} [{item.job_id}]")
        for line in (result.diff or "").splitlines():
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---")):
                print(f"      {line}")


def _forget_survivors(session):
    """Drop the results of the surviving mutants, so that ``exec`` runs them (only them) again."""
    import sqlite3

    with sqlite3.connect(session) as db:
        count = db.execute("DELETE FROM work_results WHERE worker_outcome = 'NORMAL' "
                           "AND test_outcome = 'SURVIVED'").rowcount
    print(f"{session}: {count} surviving mutants to run again")


def main(argv):
    command = argv[0]
    _install_operators()
    if command == "report":
        _report(argv[1])
        return 0
    if command == "survivors":
        _forget_survivors(argv[1])
        return 0
    from cosmic_ray.cli import cli

    if command == "init":
        config, session = argv[1], argv[2]
        try:
            cli.main(["init", config, session, "--force"], standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
        print(f"{session}: {_apply_scope(config, session)} mutants outside the scope skipped")
        return 0
    if command == "exec":
        cli.main(["exec", argv[1], argv[2]], standalone_mode=False)
        return 0
    raise SystemExit(f"unknown command {command!r}; use init, exec or report")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
