"""The realized mix as a table and as the ``mix`` section of meta.json."""

from __future__ import annotations

from .plan import Plan


def mix_section(plan: Plan) -> dict[str, dict]:
    """Per source: target tokens, realized tokens and documents, unique documents, epochs, share,
    and the documents and tokens dedup removed (the root's drop lists and, with ``dedup: true``,
    texts an earlier source gave)."""
    total = sum(r.tokens for r in plan.sources) or 1
    return {r.name: {"target_tokens": r.target, "tokens": r.tokens, "documents": r.documents,
                     "unique_documents": r.unique, "available_tokens": r.available,
                     "epochs": round(r.epochs, 6), "share": round(r.tokens / total, 6),
                     "duplicate_documents": r.duplicate_documents, "duplicate_tokens": r.duplicate_tokens}
            for r in plan.sources}


def format_table(plan: Plan) -> str:
    """One line per source and a total line, before any validation carve; a ``duplicates``
    column (documents dedup removed) when there are any."""
    dups = any(r.duplicate_documents for r in plan.sources)  # the column only when dedup removed any
    header = ("source", "target", "tokens", "documents", "unique", "epochs", "share")
    rows = [header + (("duplicates",) if dups else ())]
    for name, r in mix_section(plan).items():
        rows.append((name, f"{r['target_tokens']:,}", f"{r['tokens']:,}", f"{r['documents']:,}",
                     f"{r['unique_documents']:,}", f"{r['epochs']:.3f}", f"{r['share']:.4f}")
                    + ((f"{r['duplicate_documents']:,}",) if dups else ()))
    rows.append(("total", f"{sum(r.target for r in plan.sources):,}", f"{sum(r.tokens for r in plan.sources):,}",
                 f"{sum(r.documents for r in plan.sources):,}", f"{sum(r.unique for r in plan.sources):,}", "", "1")
                + ((f"{sum(r.duplicate_documents for r in plan.sources):,}",) if dups else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    for split, ids in plan.splits.items():
        lines.append(f"{split}: {len(ids):,} documents")
    return "\n".join(lines)
