"""The ``workbench`` command line, one module per area."""
