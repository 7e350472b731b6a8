"""Regenerate model_cards/ (one card per BELLE model in paddle_belle/cards/facts.py); --check only reports.

    python tools/make_model_cards.py           # rewrite model_cards/
    python tools/make_model_cards.py --check   # exit 1 if a card is missing or out of date
"""
import argparse
import sys
from pathlib import Path

from paddle_belle.cards import stale_model_cards, write_model_cards

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=ROOT / "model_cards")
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation, write nothing")
    args = parser.parse_args()
    if args.check:
        stale = stale_model_cards(args.dir)
        for name in stale:
            print(f"{args.dir / name}: missing or out of date (run python tools/make_model_cards.py)")
        return 1 if stale else 0
    for path in write_model_cards(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
