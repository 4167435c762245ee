"""One way to make a Cloud Storage client, for the tracker's gs:// artifact store and the
scheduler's Vertex AI results. Emulators are reached the way the official client supports:
STORAGE_EMULATOR_HOST."""

from __future__ import annotations

import os
from typing import Any

from services.common.errors import ConfigurationError

_EMULATOR_PROJECT = "cairn-emulator"


def storage_client(what: str, project: str | None = None) -> Any:
    """A google.cloud.storage Client; `what` names the user in configuration errors."""
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ConfigurationError(
            f"{what} needs google-cloud-storage: pip install 'cairn[gcp]'"
        ) from exc
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # Emulators accept anyone; this never looks for real credentials on a dev machine.
        return storage.Client(
            project=project or os.environ.get("GOOGLE_CLOUD_PROJECT", _EMULATOR_PROJECT),
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        )
    try:
        return storage.Client(project=project)
    except DefaultCredentialsError as exc:
        raise ConfigurationError(f"{what}: no Google credentials found: {exc}") from exc
