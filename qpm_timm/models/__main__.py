"""``python -m qpm_timm.models write-models-table README.md``: the README's Models table, regenerated from the variant
table (:mod:`qpm_timm.models.variants`; a test fails when they drift)."""
import argparse
import sys

from .variants import write_models_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    table = commands.add_parser('write-models-table', help="the README's Models table, from the variant table")
    table.add_argument('readme', metavar='README')
    args = parser.parse_args(argv)
    write_models_table(args.readme)
    return 0


if __name__ == '__main__':
    sys.exit(main())
