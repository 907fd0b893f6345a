"""
The scripts behind the `banel-trl` commands, as TRL's `trl/scripts`: each module has a `make_parser` and a `main`, and
runs on its own (single process) as `python -m banel_trl.scripts.<name>`.

- `banel`: `banel-trl train`, BaNEL from a YAML config and/or command-line arguments.
- `demo`: `banel-trl demo`, BaNEL on the built-in addition attack.
- `report`: `banel-trl report`, the plot and summary of a run from its output folder.
"""
