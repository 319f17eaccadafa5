"""Importing this module imports megatron-core the learner's way (`megatron_import.import_megatron_core`).

For lists of module names to import ahead, such as multiprocessing's forkserver preload (`launch.py`),
which can name modules but cannot call a function.
"""

from forkrl.trainer.learner.megatron_import import import_megatron_core

import_megatron_core()
