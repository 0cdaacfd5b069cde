"""No test asserts on the machine's speed: no assertion and no wait loop reads the clock.

A timed assertion fails on a slow or loaded machine for no fault of the code; a kill/resume test
whose wait loop gives up at a wall-clock deadline does too. Waits are bounded by the watched
process instead (it ends, or the awaited state appears), and subprocess timeouts only guard hangs.
"""

from __future__ import annotations

import ast
from pathlib import Path

CLOCKS = {"time", "perf_counter", "monotonic", "perf_counter_ns", "monotonic_ns", "time_ns"}


def reads_clock(node: ast.AST) -> bool:
    """Whether an expression calls time.time() / perf_counter() / monotonic() (as time.X or a bare X)."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            if (isinstance(f, ast.Attribute) and f.attr in CLOCKS and isinstance(f.value, ast.Name)
                    and f.value.id == "time") or (isinstance(f, ast.Name) and f.id in CLOCKS - {"time"}):
                return True
    return False


def timed_checks(source: str) -> list[int]:
    """Lines of assertions and while-conditions that read the clock, or compare a name assigned from it."""
    tree = ast.parse(source)
    clocked = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and reads_clock(n.value)
               for t in n.targets if isinstance(t, ast.Name)}
    lines = []
    for n in ast.walk(tree):
        test = n.test if isinstance(n, (ast.Assert, ast.While)) else None
        if test is not None and (reads_clock(test) or any(isinstance(s, ast.Name) and s.id in clocked
                                                          for s in ast.walk(test))):
            lines.append(n.lineno)
    return lines


def test_no_test_asserts_or_waits_on_the_clock():
    here = Path(__file__).parent
    found = {str(p.relative_to(here)): timed_checks(p.read_text()) for p in sorted(here.rglob("*.py"))}
    assert {f: lines for f, lines in found.items() if lines} == {}


def test_the_check_sees_a_timed_assertion_and_a_deadline_loop():
    src = ("import time\nt0 = time.perf_counter()\nassert time.perf_counter() - t0 < 3\n"
           "deadline = time.time() + 5\nwhile done() and time.time() < deadline:\n    pass\n"
           "while proc.poll() is None:\n    time.sleep(0.1)\nassert x == 1\n")
    assert timed_checks(src) == [3, 5]
