"""Bearer tokens for tests of the bridge's HTTP API, made the way `kiosk-bridge token add` makes them."""

from __future__ import annotations

from pathlib import Path

from cloud_bridge import auth, store


def bearer(db: Path | str, role: str, name: str | None = None) -> dict[str, str]:
    """The Authorization header of a new token with `role` in the bridge store at `db`."""
    conn = store.connect(db)
    try:
        token = auth.add_token(conn, name or f"test {role}", role, now_ms=0)
    finally:
        conn.close()
    return {"Authorization": f"Bearer {token}"}
