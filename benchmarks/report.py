"""The tail every benchmark shares: finish the Markdown report, write it, show it."""

from __future__ import annotations


def write_report(path: str, lines: list[str], smoke: str | None = None, echo: bool = True) -> str:
    """Write `lines` (plus, for a `--quick` run, a note that its figures only show that the benchmark works) to `path`."""
    if smoke:
        lines = [*lines, "", f"**Smoke run** (`--quick`): {smoke}; the figures only show that the benchmark works."]
    text = "\n".join([*lines, ""]) if lines and lines[-1] != "" else "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)
    if echo:
        print(text)
    return text
