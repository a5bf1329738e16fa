"""Generate a target's mutants without running any test (run inside .mutation/TARGET).

    tools/mutation.sh TARGET --generate-only

``mutmut run`` first runs the whole test subset once under tracing to map tests to functions,
then each mutant against the tests mapped to its function: on a shared two-core machine that
mapping alone takes longer than checking most mutants with a few chosen tests.  This writes
the mutants (``mutants/``, with their names in the ``.meta`` files) exactly as ``mutmut run``
does and stops; ``recheck.py`` then runs chosen tests against chosen mutants.
"""
from mutmut.__main__ import create_mutants
from mutmut.mutation.trampoline import set_mutant_under_test
from mutmut.utils.file_utils import copy_also_copy_files, copy_src_dir, setup_source_paths

set_mutant_under_test("mutant_generation")
copy_src_dir()
copy_also_copy_files()
setup_source_paths()
print(create_mutants(1))
