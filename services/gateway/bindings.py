"""HTTP bindings read from the google.api.http annotations of the registered services.

No route is written by hand for Cairn's own API: every RPC's HttpRule (and its
additional_bindings) becomes a Binding, which the transcoder serves and the OpenAPI
generator documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from services.gateway.templates import PathTemplate, parse_template

_PATTERNS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Binding:
    method: MethodDescriptor
    http_method: str  # GET, POST, PATCH, PUT, DELETE
    template: PathTemplate
    body: str  # "" (no body), "*" (the whole request) or a top-level field name
    response_body: str  # "" (the whole response) or a response field name

    @property
    def service(self) -> str:
        return str(self.method.containing_service.full_name)

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)


def _rule_bindings(method: MethodDescriptor, rule: http_pb2.HttpRule) -> list[Binding]:
    found = []
    pattern = rule.WhichOneof("pattern")
    if pattern in _PATTERNS:
        found.append(
            Binding(
                method=method,
                http_method=pattern.upper(),
                template=parse_template(getattr(rule, pattern)),
                body=rule.body,
                response_body=rule.response_body,
            )
        )
    elif pattern == "custom":
        found.append(
            Binding(
                method=method,
                http_method=rule.custom.kind.upper(),
                template=parse_template(rule.custom.path),
                body=rule.body,
                response_body=rule.response_body,
            )
        )
    for extra in rule.additional_bindings:
        found.extend(_rule_bindings(method, extra))
    return found


def service_bindings(service: ServiceDescriptor) -> list[Binding]:
    bindings: list[Binding] = []
    for method in service.methods:
        options = method.GetOptions()
        if options.HasExtension(annotations_pb2.http):
            bindings.extend(_rule_bindings(method, options.Extensions[annotations_pb2.http]))
    return bindings


def all_bindings(services: Iterable[ServiceDescriptor]) -> list[Binding]:
    """Every binding, most specific template first (more literal segments win)."""
    bindings = [b for service in services for b in service_bindings(service)]
    return sorted(bindings, key=lambda b: -b.template.literal_count)


def registered_services() -> Sequence[ServiceDescriptor]:
    """The services the gateway fronts. A new service is added here once its stubs exist."""
    from cairn.analytics.v1 import analytics_service_pb2
    from cairn.logproxy.v1 import logproxy_service_pb2
    from cairn.scheduler.v1 import scheduler_service_pb2
    from cairn.tracker.v1 import tracker_service_pb2

    return [
        tracker_service_pb2.DESCRIPTOR.services_by_name["TrackerService"],
        scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
        analytics_service_pb2.DESCRIPTOR.services_by_name["AnalyticsService"],
        logproxy_service_pb2.DESCRIPTOR.services_by_name["LogProxyService"],
    ]
