"""The row book both device checks keep (gpu_check, mac_check): each check adds one row, and a
failing check becomes a FAIL row instead of hiding the rows after it."""
from __future__ import annotations

import traceback


class RowBook:
    columns: list[str] = []

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check: str, result: str, **cells) -> dict:
        row = {"check": check, "result": result, **cells}
        self.rows.append(row)
        print(" | ".join(str(row.get(c, "")) for c in self.columns), flush=True)
        return row

    def guarded(self, check: str, fn, **cells):
        try:
            return fn()
        except Exception as exc:  # one failing row must not hide the others
            traceback.print_exc()
            return self.add(check, f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}", **cells)
