"""Model cards: `paddle-belle card` and the generated cards in model_cards/ (render.py says what a card holds)."""
from __future__ import annotations

from pathlib import Path

from paddle_belle.cards.facts import FACTS
from paddle_belle.cards.render import apply_overrides, render, snippet, subject
from paddle_belle.checkpoint import atomic_path

__all__ = ["build_card", "write_card", "write_model_cards", "stale_model_cards", "snippet", "FACTS"]


def build_card(model: str, facts: str | None = None, card_path=None, **overrides) -> str:
    """The card's markdown for a checkpoint directory or a model name; ``overrides``: title, base, data,
    data_size, description, hyper (a dict). ``card_path``: where it will be written (an old card there is not
    listed among the checkpoint's files)."""
    s = apply_overrides(subject(model, facts), **overrides)
    s.card_path = Path(card_path) if card_path is not None else None
    return render(s)


def write_card(text: str, out, force: bool = False) -> Path:
    """Write the card atomically (a half-written README never appears); an existing file only with ``force``."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"{out.parent}: no such directory")
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return out


def expected_model_cards() -> dict[str, str]:
    """{file name: text} of every card model_cards/ should hold."""
    return {f"{f.title}.md": build_card(f.name) for f in FACTS.values()}


def write_model_cards(directory) -> list[Path]:
    """(Re)write model_cards/: one card per model in cards/facts.py."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return [write_card(text, directory / name, force=True) for name, text in expected_model_cards().items()]


def stale_model_cards(directory) -> list[str]:
    """The cards in ``directory`` that are missing or differ from a fresh generation."""
    directory = Path(directory)
    return [name for name, text in expected_model_cards().items()
            if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text]
