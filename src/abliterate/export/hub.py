"""Upload an export to the Hugging Face Hub (token from HF_TOKEN or `huggingface-cli login`)."""

from __future__ import annotations

from pathlib import Path

from abliterate.errors import AbliterateError


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create (or reuse) `repo_id` and upload `folder`; returns the repository URL.

    Runs after the local export is complete: a failed upload leaves the local files intact."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            commit_message="Upload abliterated model (abliterate)",
        )
    except Exception as exc:  # offline, no token, no permission: huggingface_hub raises many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AbliterateError(
            f"upload to {repo_id} failed ({type(exc).__name__}: {reason[:160]}); the export is "
            f"complete in {folder}"
        ) from None
    return f"https://huggingface.co/{repo_id}"
