"""Stage names as they appear in `decisions.stage` and in the funnel, in the order the stages run."""

from __future__ import annotations

# every curation stage name starts with one of PREFIXES or is one of NAMES; generation steps write decisions under
# their own step names (expand, agreement), which are identifiers without ':' and never one of NAMES
PREFIXES = ("filter:", "dedup:", "select:")
NAMES = ("decontaminate", "select")


def filter_stages(cur) -> list[str]:
    return _numbered("filter", [f.name or f.type for f in cur.filters])


def dedup_stages(cur) -> list[str]:
    return _numbered("dedup", [d.name or d.type for d in cur.dedup])


def stage_names(cur) -> list[str]:
    names = filter_stages(cur)
    if cur.decontaminate is not None:
        names.append("decontaminate")
    names += dedup_stages(cur)
    if cur.select is not None:
        if cur.select.difficulty is not None and cur.select.difficulty.by == "student":
            names.append("select:difficulty")
        names.append("select")
    return names


def _numbered(kind: str, names: list[str]) -> list[str]:
    """`filter:regex`, and `filter:regex:2` for a second unnamed one of the same type."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{kind}:{name}" if seen[name] == 1 else f"{kind}:{name}:{seen[name]}")
    return out
