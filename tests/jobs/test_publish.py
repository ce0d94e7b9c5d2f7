"""Publishing a job's best model and pulling it, with a real job on PostgreSQL and real local
Ray: a full artifact store (a tmpfs this module mounts), a file damaged in the store, a file of
the same name uploaded through optuna-dashboard, and a driver that lost its job at publishing.

One job serves the module, in order: it fails to publish on the full store, is resumed once the
store has room, and the later tests use what it published."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.artifacts import get_all_artifact_meta
from optuna_dashboard import get_note
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from automl.cli import app
from automl.errors import UserError
from automl.jobs.heartbeat import HeartbeatLost
from automl.jobs.outcome import JobOutcome
from automl.jobs.process import execute_job
from automl.jobs.publish import shown_path
from automl.search import keys
from automl.search.spec import parse_spec
from automl.service.server import build, start_dashboard
from automl.settings import Settings
from storage.jobs import JobStore
from tests.support import TINY_SPACE, free_port, load_study, proxy_to, write_images

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
SMALL, ROOMY = "256k", "16m"  # the store's size: the model (1.5 MB) does not fit, then does


@dataclass
class Published:
    job_id: str
    settings: Settings
    store: JobStore
    dataset: Path
    failure: Exception | None  # what the run on the full store raised
    after_failure: dict[str, Any]  # what the study and the store held then
    resumed: JobOutcome  # the run once the store had room

    def study(self) -> optuna.Study:
        return load_study(self.settings.storage_url, self.job_id)

    def manifest(self) -> dict[str, dict[str, Any]]:
        files: dict[str, dict[str, Any]] = self.study().user_attrs[keys.PUBLISHED_FILES]
        return files

    def publication(self) -> dict[str, Any]:
        """The study attributes a publication writes."""
        attrs = self.study().user_attrs
        return {k: attrs.get(k) for k in (keys.PUBLISHED_FILES, keys.BEST_TRIAL, keys.TEST_METRICS)}

    def model_blob(self) -> Path:
        """The job's model.safetensors in the store (before any other file of that name)."""
        (model,) = [m for m in get_all_artifact_meta(self.study())
                    if m.filename == "model.safetensors"]
        return Path(self.settings.artifacts_path) / model.artifact_id

    def blobs(self) -> set[str]:
        return {p.name for p in Path(self.settings.artifacts_path).iterdir()}

    def pull(self, out: Path) -> Any:
        return CliRunner().invoke(app, ["pull", self.job_id, "--out", str(out), "--storage",
                                        self.settings.storage_url, "--artifacts",
                                        self.settings.artifacts_path])


def mount_tmpfs(path: Path, size: str, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


@pytest.fixture(scope="module")
def published(pg_module_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    tmp = tmp_path_factory.mktemp("publish")
    dataset = tmp / "datasets" / "colors"
    write_images(dataset / "red", 12, (200, 30, 30), seed=1)
    write_images(dataset / "blue", 12, (30, 30, 200), seed=2)
    artifacts = tmp / "artifacts"
    artifacts.mkdir()
    mount_tmpfs(artifacts, SMALL)
    try:
        settings = Settings(home=tmp / "automl-data", database_url=pg_module_url,
                            artifacts=str(artifacts))
        store = JobStore(settings.storage_url)
        spec = parse_spec({"name": "colors", "dataset": {"source": str(dataset)},
                           "budget": {"n_trials": 2, "max_epochs": 1}, "max_concurrent_trials": 1,
                           "resources": {"cpu": 1},
                           "strategy": {"seed": 0, "warm_start": False, "pruner": "none"},
                           "space": TINY_SPACE})
        job_id = "colors-publish"
        store.submit(job_id, spec.name, spec.model_dump(mode="json"))
        store.claim("runner-1")
        failure = None
        try:
            execute_job(job_id, settings, store)
        except Exception as error:  # what the first test looks at
            failure = error
        study = load_study(settings.storage_url, job_id)
        after_failure = {"records": get_all_artifact_meta(study), "attrs": study.user_attrs,
                         "blobs": sorted(p.name for p in artifacts.iterdir()),
                         "row": store.get(job_id)}
        mount_tmpfs(artifacts, ROOMY, remount=True)  # space freed
        store.requeue(job_id)  # `automl resume`, then a runner's claim
        store.claim("runner-1")
        resumed = execute_job(job_id, settings, store)
        yield Published(job_id, settings, store, dataset, failure, after_failure, resumed)
    finally:
        subprocess.run(["umount", str(artifacts)], check=True)


def test_a_full_artifact_store_publishes_nothing_and_a_resume_publishes_it_whole(
    published: Published, tmp_path: Path
) -> None:
    assert isinstance(published.failure, UserError), published.failure
    failure, row = str(published.failure), published.after_failure["row"]
    store = Path(published.settings.artifacts_path)
    assert row.state == "failed" and row.error == failure and "\n" not in failure
    assert failure.startswith(f"job {published.job_id}: cannot publish the best model to the "
                              f"artifact store {store}: it is full (No space left on device); "
                              "nothing was published: free space there (the model needs 1.")
    assert failure.endswith(f", then resume it with `automl resume {published.job_id}` "
                            f"(POST /jobs/{published.job_id}/resume)")
    assert published.after_failure["records"] == []  # nothing in optuna-dashboard
    assert not {keys.PUBLISHED_FILES, keys.BEST_TRIAL} & set(published.after_failure["attrs"])
    assert published.after_failure["blobs"] == []  # no partial file left in the store

    assert published.resumed.state == "succeeded", published.resumed.error
    manifest = published.manifest()
    assert {"model.safetensors", "config.json", "automl.json", "README.md",
            "confusion_matrix.png", "evaluation.json", "evaluation.html", "reliability.png",
            "robustness.png"} == set(manifest)
    listed = {m.filename: m.artifact_id for m in get_all_artifact_meta(published.study())}
    assert listed == {name: f["artifact_id"] for name, f in manifest.items()}
    assert published.blobs() == set(listed.values())

    pulled = published.pull(tmp_path / "model")
    assert pulled.exit_code == 0, pulled.output
    for name, file in manifest.items():
        data = (tmp_path / "model" / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (file["size"], file["sha256"])
    image = next((published.dataset / "red").glob("*.png"))
    predicted = CliRunner().invoke(app, ["predict", "--checkpoint", str(tmp_path / "model"),
                                         str(image)])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["label"] in ("red", "blue")


def test_the_model_card_names_the_dataset_by_its_folder_not_its_server_path(
    published: Published, tmp_path: Path
) -> None:
    """The card is the dashboard's note and the README.md that `automl push` puts on the Hub."""
    assert published.pull(tmp_path / "model").exit_code == 0
    card = (tmp_path / "model" / "README.md").read_text()
    note = get_note(published.study())
    for text in (card, note):
        assert "- Dataset: colors, split seed 0" in text
        assert str(published.dataset.parent) not in text


def test_a_file_damaged_in_the_store_is_refused_by_pull_until_the_job_is_published_again(
    published: Published, tmp_path: Path
) -> None:
    blob = published.model_blob()
    size = blob.stat().st_size
    with blob.open("r+b") as file:
        file.truncate(45_000)
    pulled = published.pull(tmp_path / "model")
    assert pulled.exit_code == 2 and "Traceback" not in pulled.output
    line = " ".join(pulled.output.split())
    assert (f"job '{published.job_id}': its model.safetensors ({blob.name}) in the "
            f"artifact store {published.settings.artifacts_path} is damaged (45,000 bytes of "
            f"the {size:,} published); restore that file from a backup of the store, or "
            f"publish the job again: `automl run JOB_FILE --job-id {published.job_id}`") in line
    assert not (tmp_path / "model").exists()  # nothing written, not even the good files

    before = published.manifest()
    published.store.resume(published.job_id, "foreground")  # `automl run --job-id`'s claim
    again = execute_job(published.job_id, published.settings, published.store)
    assert again.state == "succeeded", again.error
    manifest = published.manifest()
    assert not {f["artifact_id"] for f in manifest.values()} & {
        f["artifact_id"] for f in before.values()}  # all new: nothing kept from the old one
    listed = {m.filename: m.artifact_id for m in get_all_artifact_meta(published.study())}
    assert listed == {name: f["artifact_id"] for name, f in manifest.items()}  # old ones gone
    assert published.blobs() == set(listed.values())
    assert published.pull(tmp_path / "model").exit_code == 0


def test_a_file_of_the_same_name_uploaded_through_the_dashboard_changes_nothing_pulled(
    published: Published, tmp_path: Path
) -> None:
    """Anyone with the dashboard can add files to a study; pull and the API's checkpoint take
    the job's own."""
    own_model = published.model_blob().read_bytes()
    api, dashboard = build(published.settings, "127.0.0.1", free_port())
    start_dashboard(dashboard)
    try:
        study_id = published.study()._study_id
        junk = b"not the job's model"
        uploaded = httpx.post(
            f"http://127.0.0.1:{dashboard.server_port}/api/artifacts/{study_id}",
            json={"file": "data:application/octet-stream;base64," + base64.b64encode(junk).decode(),
                  "filename": "model.safetensors"}, timeout=30)
        assert uploaded.status_code == 201, uploaded.text
        names = [m.filename for m in get_all_artifact_meta(published.study())]
        assert names.count("model.safetensors") == 2  # the dashboard lists both

        pulled = published.pull(tmp_path / "model")
        assert pulled.exit_code == 0, pulled.output
        assert (tmp_path / "model" / "model.safetensors").read_bytes() == own_model
        with TestClient(api) as client:
            answer = client.get(f"/jobs/{published.job_id}/best/checkpoint")
        assert answer.status_code == 200, answer.text
        with tarfile.open(fileobj=io.BytesIO(answer.content)) as tar:
            assert sorted(tar.getnames()) == sorted(p.name for p in (tmp_path / "model").iterdir())
            served = tar.extractfile("model.safetensors")
            assert served is not None and served.read() == own_model
    finally:
        dashboard.shutdown()
        dashboard.server_close()


def test_a_driver_that_lost_its_job_publishes_nothing_and_leaves_the_job_to_the_new_one(
    published: Published, pg_module_url: str
) -> None:
    """Its heartbeat could not tell it (its own connection is cut) when another driver took
    the job over (`automl run --job-id` elsewhere): the publication's own transaction refuses
    it. Last in the module: the job is left to that other driver."""
    job_id, store = published.job_id, published.store
    records = get_all_artifact_meta(published.study())
    attrs, blobs = published.publication(), published.blobs()
    first = store.resume(job_id, "driver-1")  # this driver's claim: publish the job again
    assert first is not None
    target = make_url(pg_module_url)
    with proxy_to(target.host or "127.0.0.1", target.port or 5432) as proxy:
        cut_off = JobStore(proxy.url_for(pg_module_url))  # its job row's connection

        class TakeOver:
            """The live view's first event comes before Tune starts (the job's history
            replayed), so the take-over lands before anything could be published."""

            def on_event(self, *args: Any, **kwargs: Any) -> None:
                if store.get(job_id).runner == "driver-1":
                    proxy.cut()
                    store.resume(job_id, "driver-2")

        settings = published.settings.model_copy(update={"stale_after": 600.0})
        with pytest.raises(HeartbeatLost, match="its publication was refused"):
            execute_job(job_id, settings, cut_off, events=TakeOver())
    assert get_all_artifact_meta(published.study()) == records
    assert published.publication() == attrs
    assert published.blobs() == blobs  # what it wrote is gone again
    row = store.get(job_id)
    assert (row.state, row.runner, row.attempts) == ("running", "driver-2", first.attempts + 1)


def test_a_publication_shows_image_paths_within_the_dataset_only(tmp_path: Path) -> None:
    images = tmp_path / "photos"
    (images / "cat").mkdir(parents=True)
    manifest = tmp_path / "labels.csv"
    assert shown_path(str(images / "cat" / "a.png"), str(images)) == "cat/a.png"
    assert shown_path(str(tmp_path / "cat" / "b.png"), str(manifest)) == "cat/b.png"
    assert shown_path("/root/.cache/automl/digits/3/x.png", "builtin:digits") == "x.png"
    assert shown_path("/elsewhere/c.png", str(images)) == "c.png"
    assert shown_path(None, str(images)) is None
