"""Pushing a pulled model folder to the Hugging Face Hub."""

from __future__ import annotations

import re
from pathlib import Path

from automl.errors import PushError
from workers.errors import first_line


def push_folder(folder: Path, repo: str, private: bool) -> str:
    """Upload a pulled model folder to the Hugging Face Hub as model repository `repo` (created
    if missing); the token is HF_TOKEN's (or `hf auth login`'s). Returns the repository's URL."""
    import httpx2
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise PushError(f"--repo {repo!r} is not OWNER/NAME (for example my-org/digits-resnet)")
    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                          commit_message="automl: fine-tuned model")
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise PushError(f"the Hugging Face Hub refused the token for {repo} ({status}): set "
                            "HF_TOKEN to a token with write access to it") from None
        raise PushError(f"the Hugging Face Hub refused the upload to {repo}: "
                        f"{first_line(str(error))}") from None
    except (httpx2.TransportError, OSError) as error:
        raise PushError(f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({error}); "
                        "push from a machine with network access, or set HF_ENDPOINT to your "
                        "Hub mirror") from None
    return str(url)
