"""``model.summary()``: what each adapter costs, next to the base it rides on."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .adapter import Adapter
from .anatomy import Anatomy
from .anatomy.quantized import parameter_count


@dataclass(frozen=True)
class SummaryRow:
    name: str
    method: str
    status: str  # "active", "merged", "active, merged" or "-"
    parameters: int
    percent_of_base: float
    megabytes: float  # tensor bytes written to adapter.safetensors, in MB (10^6 bytes)


@dataclass(frozen=True)
class Summary:
    """One row per adapter; ``str()`` renders the table."""

    model_type: str
    base_parameters: int
    rows: tuple[SummaryRow, ...]

    @classmethod
    def of(cls, anatomy: Anatomy, adapters: Mapping[str, Adapter], active: Collection[str],
           merged: Collection[str]) -> "Summary":
        """The table for the adapters on ``anatomy``'s base, of which ``active`` are active and ``merged`` merged."""
        base = parameter_count(anatomy.model)  # a packed 4-bit weight's numel() is half its size
        rows = []
        for name, adapter in adapters.items():
            flags = (("active", name in active), ("merged", name in merged))
            status = ", ".join(flag for flag, on in flags if on)
            params = adapter.num_parameters()
            rows.append(SummaryRow(name, adapter.config.method, status or "-", params,
                                   100.0 * params / base if base else 0.0, adapter.num_bytes() / 1e6))
        return cls(anatomy.model_type, base, tuple(rows))

    def __str__(self) -> str:
        header = ("adapter", "method", "status", "trainable params", "% of base", "MB on disk")
        body = [(r.name, r.method, r.status, f"{r.parameters:,}", f"{r.percent_of_base:.3f}", f"{r.megabytes:.2f}")
                for r in self.rows]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [f"base: {self.model_type}, {self.base_parameters:,} parameters (frozen)"]
        for row in [header, *body]:
            lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))))
        if not body:
            lines.append("(no adapters yet: model.add(name, config))")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Summary({self.model_type}, {len(self.rows)} adapter(s))"
