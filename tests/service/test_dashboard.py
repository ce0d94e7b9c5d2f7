"""optuna-dashboard as the service serves it: while the database is away it answers 503 with
Retry-After, as the API does, and serves again once the database is back."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import optuna
from sqlalchemy.engine import make_url

from automl.service.dashboard import dashboard_server
from automl.settings import Settings
from storage.optuna_storage import optuna_storage
from tests.support import free_port, proxy_to, wait_for


def test_a_database_outage_is_a_503_with_retry_after(pg_url: str, tmp_path: Path) -> None:
    target = make_url(pg_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        url = proxy.url_for(pg_url)
        studies = optuna_storage(url)
        optuna.create_study(storage=studies, study_name="dashboard-outage")
        port = free_port()
        server = dashboard_server(Settings(home=tmp_path, database_url=url), "127.0.0.1", port,
                                  studies)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        studies_page = f"http://127.0.0.1:{port}/api/studies"
        try:
            assert httpx.get(studies_page, timeout=30).status_code == 200
            proxy.cut()
            for _ in range(3):  # a pooled connection, then fresh ones refused
                away = httpx.get(studies_page, timeout=60)
                assert away.status_code == 503, away.text
                assert away.headers["Retry-After"] == "5"
                assert away.text == "database unavailable, retry shortly\n"
            proxy.restore()
            wait_for(lambda: httpx.get(studies_page, timeout=30).status_code == 200, 60,
                     "the dashboard after the outage")
            assert httpx.get(f"http://127.0.0.1:{port}/api/studies/999999").status_code == 404
        finally:
            server.shutdown()
            server.server_close()
