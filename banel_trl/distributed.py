"""Several processes, one run: what only the main process does, what they share, and how results reach all."""

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object


def on_main_process(accelerator: Accelerator | None, function, *args):
    """
    Run `function(*args)` on the main process only and return its result on every process (the way reward calls and
    ledger writes happen once per run). An error on the main process is raised on every process, so that none waits
    for a result that will not come.
    """
    if accelerator is None or accelerator.num_processes == 1:
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


def gather_to_all(accelerator: Accelerator | None, items: list) -> list:
    """Every process's `items`, concatenated in rank order, on every process (`items` itself with one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return items
    return gather_object(items)


def rank_share(accelerator: Accelerator | None, num_items: int) -> int:
    """How many of `num_items` each process draws when they share the drawing: `ceil(num_items / processes)`."""
    num_processes = 1 if accelerator is None else accelerator.num_processes
    return -(-num_items // num_processes)
