"""``adain-train`` / ``python -m adain.train``: train the decoder, or ``export`` a checkpoint."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from adain.train.train import export, train

    if argv[:1] == ["export"]:
        export(argv[1:])
    else:
        train(argv)


if __name__ == "__main__":
    main()
