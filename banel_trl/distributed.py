"""Several processes, one run: what only the main process does, and how the others get its result."""

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list


def on_main_process(accelerator: Accelerator, function, *args):
    """
    Run `function(*args)` on the main process only and return its result on every process (the way reward calls and
    ledger writes happen once per run). An error on the main process is raised on every process, so that none waits
    for a result that will not come.
    """
    if accelerator.num_processes == 1:
        return function(*args)
    payload = [None]
    if accelerator.is_main_process:
        try:
            payload = [(True, function(*args))]
        except BaseException as error:
            broadcast_object_list([(False, f"{type(error).__name__}: {error}")], from_process=0)
            raise
    broadcast_object_list(payload, from_process=0)
    succeeded, result = payload[0]
    if not succeeded:
        raise RuntimeError(f"The main process failed: {result}")
    return result
