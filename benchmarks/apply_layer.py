"""Apply one layer tar to a directory with ocilayer's library API.

run.py times this where the `ocilayer apply` command does not exist yet, so that
the apply rows measure the same code the command will run.

Usage: apply_layer.py LAYER_TAR TARGET
"""

from __future__ import annotations

import sys

from ocilayer.apply import import_layer_from_tar


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: apply_layer.py LAYER_TAR TARGET", file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as layer:
        import_layer_from_tar(layer, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
