"""
The report script, `banel-trl report`: the plot and summary of a BaNEL run from its output folder.

    python -m banel_trl.scripts.report banel-demo --top_k 3
"""

import argparse

from banel_trl.report import export_hits_csv, write_report


DESCRIPTION = (
    "Report on a BaNEL run from its output folder: banel_report.png (NREs, successes, acceptance rate and negative "
    "loss per round) and banel_report.md (the rounds, the successes found, and the failures each region scores "
    "highest and lowest)."
)


def make_parser(
    subparsers: argparse._SubParsersAction | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """
    The parser of the report's arguments.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser to these as the `report` command.
        prog (`str`, *optional*):
            The program name shown in the usage (without `subparsers`).

    Returns:
        `argparse.ArgumentParser`: the parser.
    """
    if subparsers is not None:
        parser = subparsers.add_parser("report", help="Plot and summarise a run", description=DESCRIPTION)
    else:
        parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("output_dir", help="The output_dir of a BaNEL run (it holds banel_ledger.jsonl).")
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="The proposal p_theta; defaults to the base model recorded in the run's folder.",
    )
    parser.add_argument("--num_failures", type=int, default=512, help="Failures scored under every region.")
    parser.add_argument("--top_k", type=int, default=5, help="Failures listed at each end of a region's ranking.")
    parser.add_argument(
        "--export_csv",
        metavar="PATH",
        default=None,
        help="Also write the run's distinct successes (training and evaluation) to this CSV file.",
    )
    parser.add_argument(
        "--no_patterns",
        action="store_true",
        help="Skip the failure patterns (they load the model and score failures).",
    )
    return parser


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """
    Parse and check the report's arguments (exits with a usage error on bad ones, as argparse does).

    Args:
        argv (`list[str]`, *optional*):
            The arguments; defaults to `sys.argv[1:]`.
        prog (`str`, *optional*):
            The program name shown in the usage.

    Returns:
        `argparse.Namespace`: the arguments.
    """
    parser = make_parser(prog=prog)
    args = parser.parse_args(argv)
    if args.num_failures < 1 or args.top_k < 1:
        parser.error("--num_failures and --top_k must be positive.")
    return args


def main(args: argparse.Namespace) -> tuple[str, str]:
    """
    Write `banel_report.md` and `banel_report.png` into the run's folder, and print the report and both paths.

    Returns:
        `tuple[str, str]`: the paths of the report and of the plot.
    """
    report_path, plot_path = write_report(
        args.output_dir,
        model_name_or_path=args.model_name_or_path,
        patterns=not args.no_patterns,
        num_failures=args.num_failures,
        top_k=args.top_k,
    )
    with open(report_path) as file:
        print(file.read())
    print(f"Plot: {plot_path}\nReport: {report_path}")
    if args.export_csv:
        print(f"Successes: {export_hits_csv(args.output_dir, args.export_csv)} rows in {args.export_csv}")
    return report_path, plot_path


if __name__ == "__main__":
    main(parse_args())
