"""A minimal OTLP receiver for the tests: decodes what Leash exports with
the official OpenTelemetry protobuf definitions (the `opentelemetry-proto`
package) and writes one JSON line per span and per metric data point.

Usage: otlp_receiver.py (http|grpc) OUT_FILE

Listens on 127.0.0.1 on a free port and prints `listening PORT` once bound.
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


def attrs(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def write(out, lines):
    with LOCK, open(out, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")


def spans(request):
    for rs in request.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "signal": "span",
                    "resource": resource,
                    "scope": ss.scope.name,
                    "name": s.name,
                    "kind": trace_pb2.Span.SpanKind.Name(s.kind),
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "status": {
                        "code": trace_pb2.Status.StatusCode.Name(s.status.code),
                        "message": s.status.message,
                    },
                    "attributes": attrs(s.attributes),
                }


def points(request):
    for rm in request.resource_metrics:
        resource = attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    line = {
                        "signal": "metric",
                        "resource": resource,
                        "name": m.name,
                        "unit": m.unit,
                        "type": kind,
                        "attributes": attrs(p.attributes),
                    }
                    if kind == "histogram":
                        line["count"] = p.count
                        line["sum"] = p.sum
                    else:
                        line["value"] = p.as_double if p.HasField("as_double") else p.as_int
                    yield line


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            write(self.server.out, spans(request))
            answer = trace_service_pb2.ExportTraceServiceResponse()
        elif self.path == "/v1/metrics":
            request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
            write(self.server.out, points(request))
            answer = metrics_service_pb2.ExportMetricsServiceResponse()
        else:
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("x-test-tenant"):
            write(self.server.out, [{"signal": "header", "x-test-tenant": self.headers["x-test-tenant"]}])
        data = answer.SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_grpc(out):
    import grpc
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    def tenant(context):
        for k, v in context.invocation_metadata():
            if k == "x-test-tenant":
                write(out, [{"signal": "header", "x-test-tenant": v}])

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            tenant(context)
            write(out, spans(request))
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request, context):
            tenant(context)
            write(out, points(request))
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()


def main():
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "grpc":
        serve_grpc(out)
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), Http)
    server.out = out
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
