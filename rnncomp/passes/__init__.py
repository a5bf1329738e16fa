"""Passes over IR programs that every compiled backend may apply (``Program -> decision``).

Each module is one pass with its rule written down; backends consume the decisions:

prepare.py           the programs native and PTX generate code from (keep set, prune, hoist, stack)
stacking.py          pass "stack" over one program: products sharing an operand, or summed, as one (IR → IR)
stack.py             pass "stack" over a step and its backward; the gradient groups
cotangents_after.py  pass "cotangents after the loop" (the transpose of hoisting)
layout.py            where every value lives (slots, places, stacked members side by side): one builder
"""
