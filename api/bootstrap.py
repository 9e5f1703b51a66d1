"""Create the first admin and (demo only) one user per role.

Run by ``create_app`` at startup and by hand as ``python -m api.bootstrap`` (the CLI starts it as a
subprocess: nothing imports api). Idempotent.

- ``HEATDESK_ADMIN_PASSWORD`` set → user ``admin`` (whole first company) gets that password.
- ``HEATDESK_DEMO=1`` → demo users with documented passwords ``heatdesk-<role>`` (README / report):
  agent, supervisor, engineer, dispatcher, technician, finance, auditor, admin (if no admin password),
  customer (bound to the first household). Never set HEATDESK_DEMO in production.
"""
from __future__ import annotations

import logging
import os
import sys

import psycopg

from api.auth import STAFF_ROLES, create_user

log = logging.getLogger(__name__)

DEMO_COMPANY = "HD"

DEMO_NAMES = {
    "agent": "客服 李娜", "supervisor": "主管 王强", "engineer": "工程师 赵工", "dispatcher": "调度 孙敏",
    "technician": "维修员 周师傅", "finance": "收费 吴会计", "auditor": "审计 郑审", "admin": "系统管理员",
    "customer": "住户",
}


def demo_password(role: str) -> str:
    return f"heatdesk-{role}"


def _company(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT id FROM company ORDER BY (code = %s) DESC, id LIMIT 1", (DEMO_COMPANY,)).fetchone()
    return row[0] if row else None


def bootstrap_users(conn: psycopg.Connection, *, admin_password: str | None, demo: bool) -> list[str]:
    """Returns the usernames created/updated. Does nothing (with a log line) before any company exists."""
    if not admin_password and not demo:
        return []
    company_id = _company(conn)
    if company_id is None:
        log.warning("no company yet (import the city first): users not bootstrapped")
        return []
    done = []
    if admin_password:
        create_user(conn, username="admin", role="admin", company_id=company_id, password=admin_password,
                    display_name=DEMO_NAMES["admin"])
        done.append("admin")
    if demo:
        first_branch = conn.execute("SELECT id FROM branch WHERE company_id = %s ORDER BY id LIMIT 1",
                                    (company_id,)).fetchone()
        for role in STAFF_ROLES:
            if role == "admin" and admin_password:
                continue
            # Front-line roles are scoped to one branch; the rest see the whole company.
            branches = [first_branch[0]] if role in ("agent", "technician", "dispatcher") and first_branch else None
            create_user(conn, username=role, role=role, company_id=company_id, password=demo_password(role),
                        display_name=DEMO_NAMES[role], branch_ids=branches)
            done.append(role)
        _link_demo_technician(conn, company_id)
        hh = conn.execute(
            """SELECT h.id FROM household h JOIN unit u ON u.id = h.unit_id JOIN building b ON b.id = u.building_id
                 JOIN community c ON c.id = b.community_id JOIN substation s ON s.id = c.substation_id
                 JOIN branch br ON br.id = s.branch_id WHERE br.company_id = %s ORDER BY h.id LIMIT 1""",
            (company_id,)).fetchone()
        if hh:
            create_user(conn, username="customer", role="customer", company_id=company_id,
                        password=demo_password("customer"), display_name=DEMO_NAMES["customer"],
                        household_id=hh[0])
            done.append("customer")
        log.warning("HEATDESK_DEMO=1: demo users with documented passwords exist: %s", ", ".join(done))
    return done


def _link_demo_technician(conn: psycopg.Connection, company_id: int) -> None:
    """Give the demo technician login the company's first technician (ticketing's crew), when there is one."""
    if not conn.execute("SELECT to_regclass('technician') IS NOT NULL").fetchone()[0]:
        return
    conn.execute(
        """UPDATE app_user SET technician_id = (
               SELECT t.id FROM technician t JOIN repair_station rs ON rs.id = t.station_id
                WHERE rs.company_id = %s AND t.active ORDER BY t.id LIMIT 1)
            WHERE username = 'technician' AND technician_id IS NULL""", (company_id,))


def main(argv: list[str] | None = None) -> int:
    from core.config import get_settings

    logging.basicConfig(level=logging.INFO)
    settings = get_settings()
    url = settings.database_url
    if not url:
        from pathlib import Path
        f = Path(settings.data_dir) / "database_url"
        url = f.read_text(encoding="utf-8").strip() if f.exists() else ""
    if not url:
        print("no database: set HEATDESK_DATABASE_URL", file=sys.stderr)
        return 2
    with psycopg.connect(url) as conn:
        done = bootstrap_users(conn, admin_password=os.environ.get("HEATDESK_ADMIN_PASSWORD"),
                               demo=os.environ.get("HEATDESK_DEMO") == "1")
    print("bootstrapped users:", ", ".join(done) or "(none: set HEATDESK_ADMIN_PASSWORD or HEATDESK_DEMO=1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
