"""The ``clipalign`` command line: one module per command."""
