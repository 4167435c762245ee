"""The Kubernetes API client every Cairn component that talks to a cluster uses (the
scheduler's launcher, the log proxy's pod source). Needs the `k8s` extra."""

from __future__ import annotations

from typing import cast

from kubernetes import client, config


def api_client_from(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient for a kubeconfig file, else the in-cluster service account, else the
    default kubeconfig (~/.kube/config or $KUBECONFIG)."""
    if kubeconfig:
        return cast(
            client.ApiClient,
            config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context
            ),
        )
    try:
        configuration = client.Configuration()
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
        return client.ApiClient(configuration)
    except config.ConfigException:
        return cast(
            client.ApiClient,
            config.new_client_from_config(context=context),  # type: ignore[no-untyped-call]
        )
