"""``export.py --push_to_hub``: upload an export folder to the Hugging Face Hub with ``huggingface_hub``.

The token is ``--hub_token``, else what huggingface_hub finds (``HF_TOKEN``, the file ``hf auth login`` writes).
Everything that can be known before exporting is checked first, so a push that cannot happen leaves nothing
written: no token, ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or a repository id the Hub refuses. A push that fails on the way (network, permissions) is one line;
the export itself is then complete in its folder, and the message says so.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

TRUE = {"1", "true", "yes", "on"}


class HubError(RuntimeError):
    """A push that was attempted and failed; one line."""


def token_for_push(given: Optional[str]) -> str:
    """The token a push will use, or ValueError (one line) when there is none or the Hub is switched off."""
    offline = [k for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(k, "").lower() in TRUE]
    if offline:  # huggingface_hub reads either as its offline mode
        raise ValueError(f"--push_to_hub: {offline[0]} is set, so nothing can reach the Hub; unset it to push "
                         "(nothing was written)")
    if given:
        return given
    from huggingface_hub import get_token
    token = get_token()
    if not token:
        raise ValueError("--push_to_hub: no Hugging Face token found (pass --hub_token, set HF_TOKEN or run "
                         "`hf auth login`); nothing was written")
    return token


def check_repo_id(repo_id: str) -> None:
    """ValueError (one line) for a name the Hub would refuse, so the export is not written for nothing."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ValueError(f"--push_to_hub: {repo_id!r} is not a Hub repository id ({reason}); pass --hub_model_id "
                         "NAMESPACE/NAME (nothing was written)") from None


def push(folder: Path, repo_id: str, token: str, private: bool = False) -> str:
    """Create the model repository if needed and upload ``folder``; returns the commit's URL."""
    from huggingface_hub import HfApi
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        repo = api.create_repo(repo_id, private=private or None, exist_ok=True)
        info = api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder),
                                 commit_message="Upload model exported by export.py")
    except Exception as exc:  # network, authentication, permissions: the Hub's and the HTTP client's errors
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise HubError(f"--push_to_hub: uploading {folder} to {repo_id} failed ({type(exc).__name__}: {reason}); "
                       f"the export is complete in {folder}") from None
    return str(getattr(info, "commit_url", info))
