"""Re-run chosen tests against chosen mutants of a tools/mutation.sh run.

    python tools/mutation/recheck.py [--sample N] TARGET 'MUTANT_GLOB' TEST [TEST ...]

e.g. ``python tools/mutation/recheck.py autodiff 'rnncomp.autodiff.x__vjp_pad__mutmut_*'
tests/test_vjp_rules.py``.  The tests are copied from the repository as they are now (so a
new test can be shown to kill a mutant of an earlier run); the mutants are those mutmut
generated in .mutation/TARGET/mutants; MUTANT_GLOB may hold several globs separated by spaces.  Each mutant runs in a fork of one process that has
imported and collected the tests but run none (no cache holds an unmutated result), with an
empty compile cache (see cache_plugin.py).  Prints one line per mutant, killed or SURVIVED,
and exits non-zero if any survived.  ``--sample N``: only N of the matching mutants, drawn with a
fixed seed (``random.Random(0)``: the same N every run), where checking them all would not fit.
``--done LOG``: skip the mutants LOG already reports (killed or SURVIVED), so a run too long for
one session goes on where the last one stopped (tools/mutation/groups.sh does this with RESUME=1).
"""
import fnmatch
import json
import os
import random
import re
import resource
import shutil
import signal
import sys
import time
from pathlib import Path

root = Path(__file__).resolve().parents[2]
argv = sys.argv[1:]
sample, done = None, set()
while argv[:1] in (["--sample"], ["--done"]):
    if argv[0] == "--sample":
        sample = int(argv[1])
    elif Path(argv[1]).exists():  # the lines verdict() below writes: "NAME: killed (…)" / "NAME: SURVIVED"
        done = set(re.findall(r"^(\S+): (?:killed|SURVIVED)", Path(argv[1]).read_text(), re.M))
    argv = argv[2:]
target, pattern, tests = argv[0], argv[1], argv[2:]
work = root / ".mutation" / target / "mutants"
names = []
for meta in work.rglob("*.py.meta"):
    names += [n for n in json.loads(meta.read_text())["exit_code_by_key"]
              if any(fnmatch.fnmatchcase(n, p) for p in pattern.split())]
names.sort(key=lambda n: (n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1])))
if not names:
    sys.exit(f"no mutant of {target} matches {pattern}")
if sample is not None and sample < len(names):
    print(f"a sample of {sample} of the {len(names)} mutants matching {pattern}")
    names = sorted(random.Random(0).sample(names, sample), key=names.index)
if done:
    print(f"{len(done & set(names))} of the {len(names)} already checked in an earlier run: skipped")
    names = [n for n in names if n not in done]
for t in tests:
    f = t.split("::")[0]
    if f.endswith(".py"):  # other arguments are pytest's (-k EXPR) and pass through
        shutil.copy(root / f, work / f)
shutil.copy(root / "tools" / "mutation" / "cache_plugin.py", work / "mutation_cache_plugin.py")
os.chdir(work)
sys.path.insert(0, str(work))
os.nice(10)
import pytest  # noqa: E402

args = ["-q", "-x", "-p", "mutation_cache_plugin", "-p", "no:cacheprovider", "-p", "no:xdist", *tests]
pytest.main(["--collect-only", "-qqq", *args])

# A mutant that loops forever or grows without bound (``n >>= 1`` made ``n = 1`` in a loop that
# emits IR) would hang the run or take the machine's memory: each fork gets an address-space
# limit and an alarm (ten times the clean run, at least five minutes); either ends it as killed,
# as a CI run that hangs or dies fails.
MEMORY = 8 << 30


def run(mutant, timeout=0):
    """Exit code of the tests in a fresh fork with ``mutant`` switched on ("" runs the original),
    ended by SIGALRM after ``timeout`` seconds (0: never)."""
    pid = os.fork()
    if pid == 0:
        os.environ["MUTANT_UNDER_TEST"] = mutant
        sys.stdout = sys.stderr = open(os.devnull, "w")
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
        signal.alarm(timeout)  # SIGALRM's default action ends the process; alarm(0) sets none
        os._exit(int(pytest.main(args)))
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def verdict(code, timeout):
    if code == 0:
        return "SURVIVED"
    if code == -signal.SIGALRM:
        return f"killed (timeout, {timeout} s)"
    return f"killed (exit {code})"


# a test that fails without any mutant would "kill" every mutant: the clean run must pass first
t0 = time.monotonic()
if (code := run("")) != 0:
    sys.exit(f"the tests fail without a mutant (exit {code}): run them in {work} and fix or deselect them")
timeout = max(300, int(10 * (time.monotonic() - t0)))
survived = []
for name in names:
    code = run(name, timeout)
    print(f"{name}: {verdict(code, timeout)}", flush=True)
    if code == 0:
        survived.append(name)
print(f"{len(names) - len(survived)} of {len(names)} killed")
sys.exit(1 if survived else 0)
