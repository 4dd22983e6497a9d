"""The command line: argument parsing, progress display and menus. No pipeline logic here.

Subcommand modules import the library inside their handlers, not at module top: every module
here is loaded to build `abliterate --help`, which must not pay for torch and transformers
(seconds on every start). tests/test_bad_input.py checks that --help loads neither."""
