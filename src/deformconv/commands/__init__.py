"""The subcommands of the ``deformconv`` command line, one module each.

Every module defines ``NAME``, ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; its docstring is the command's description in ``--help``, and
``USES_BACKEND = False`` marks a command that runs no op (the others have the kernel backend
setting checked before they run). ``deformconv.cli`` builds the parser from a list of these
modules. Shared argument helpers live in ``_args`` (standard library
only). Library code (``bench/``, ``demo/``) never imports from here.
"""
