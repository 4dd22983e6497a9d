"""The command line: argument parsing, progress display and menus. No pipeline logic here."""

import logging

# bitsandbytes (imported by peft) warns on every start, on CPUs with AVX512-BF16, that an optional
# kernel package is missing; nothing abliterate runs on a CPU uses that kernel. Set here, before
# any subcommand module imports peft.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
