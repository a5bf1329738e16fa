"""Passes over IR programs that every compiled backend may apply (``Program -> decision``).

Each module is one pass with its rule written down; backends consume the decisions.
"""
