"""``python -m kiln.cli.docgen``: regenerate the generated docs."""

from __future__ import annotations

from pathlib import Path

from kiln.docgen import render_config_reference

DOCS = Path(__file__).resolve().parents[3] / "docs"


def generated() -> dict[str, str]:
    """Every generated doc, by path relative to docs/."""
    return {"config.md": render_config_reference()}


def main() -> None:
    for name, text in generated().items():
        (DOCS / name).write_text(text, encoding="utf-8")
        print(f"wrote docs/{name}")


if __name__ == "__main__":
    main()
