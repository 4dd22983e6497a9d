"""abliterate: remove the refusal direction from the weights of open-weight chat models."""

import logging

# bitsandbytes (imported by peft) warns on every start, on CPUs with AVX512-BF16, that an optional
# kernel package is missing; nothing abliterate runs on a CPU uses that kernel. Set here, before
# anything imports peft, so that the library (benchmarks, notebooks) is as quiet as the CLI.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# ...and, with HF_HUB_OFFLINE=1, the kernels package says it skipped that kernel's trust check.
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)

__version__ = "0.1.0"
