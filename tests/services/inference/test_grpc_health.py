"""gRPC server reflection and the standard grpc.health.v1 service.

A client that knows nothing of our protos (grpcurl, a load balancer's health probe) must be able
to list the services, build the messages from reflection and call one, and read SERVING only
while the service takes work.
"""

from __future__ import annotations

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from .conftest import LiveServer

INFERENCE = "proving_ground.inference.v1.Inference"
ALICE_GRPC = (("authorization", "Bearer dev-alice-key"),)
ADMIN = {"Authorization": "Bearer dev-admin-key"}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def channel(live_server: LiveServer):
    with grpc.insecure_channel(live_server.grpc_target) as ch:
        yield ch


def test_reflection_lists_services_and_a_client_built_from_it_calls_one(channel: grpc.Channel) -> None:
    db = ProtoReflectionDescriptorDatabase(channel)
    services = set(db.get_services())
    assert {INFERENCE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    pool = descriptor_pool.DescriptorPool(db)
    svc = pool.FindServiceByName(INFERENCE)
    assert {"Generate", "Complete", "Embed", "Score", "ListModels"} <= set(svc.methods_by_name)
    method = svc.methods_by_name["ListModels"]
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{INFERENCE}/ListModels",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    reply = call(request_cls(), metadata=ALICE_GRPC, timeout=30)
    assert reply.ListFields(), "an empty ListModels reply"


def test_health_serving_when_ready_not_serving_while_draining(
    live_server: LiveServer, channel: grpc.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", INFERENCE):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    watch = health.Watch(health_pb2.HealthCheckRequest(service=INFERENCE), timeout=30)
    try:
        assert next(watch).status == SERVING
        with httpx.Client(base_url=live_server.url, timeout=30) as c:
            assert c.post("/v1/admin/drain", headers=ADMIN).status_code == 200
            try:
                assert next(watch).status == NOT_SERVING  # pushed to the watcher, no new call
                got = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert got.status == NOT_SERVING
            finally:
                c.post("/v1/admin/drain", params={"enabled": False}, headers=ADMIN)
        assert next(watch).status == SERVING
    finally:
        watch.cancel()
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == SERVING
